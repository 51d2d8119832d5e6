"""Which number a trainer gets from a `ScoreResponse`: `LIFT_ADAPTER_REWARD`.

- `reward` (LiFT Eq. 2, the default) or `expected_reward` (probability-weighted, smooth);
- a dimension name, e.g. `motion_smoothness`: that dimension's `expected_score`
  (`motion_smoothness.score` for its label score);
- a weighted sum of any of those: `motion_smoothness=0.5,video_fidelity=0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from service.errors import InvalidRequest
from service.protocol import DimensionName, ScoreResponse

DIMENSIONS: tuple[str, ...] = get_args(DimensionName)
TOP_LEVEL = ("reward", "expected_reward")


def _term_value(response: ScoreResponse, term: str) -> float:
    if term in TOP_LEVEL:
        return float(getattr(response, term))
    dim, _, part = term.partition(".")
    d = response.dimensions[dim]  # type: ignore[index]
    return float(d.score if part == "score" else d.expected_score)


def _check_term(term: str) -> None:
    dim, _, part = term.partition(".")
    ok = term in TOP_LEVEL or (dim in DIMENSIONS and part in ("", "score", "expected_score"))
    if not ok:
        known = list(TOP_LEVEL) + list(DIMENSIONS) + [f"{d}.score" for d in DIMENSIONS]
        raise InvalidRequest(f"unknown reward {term!r}; one of {known}, or a weighted sum 'a=0.5,b=0.5'",
                             param="adapter_reward")


@dataclass(frozen=True)
class RewardSelection:
    terms: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, spec: str) -> "RewardSelection":
        text = (spec or "").strip()
        if not text:
            raise InvalidRequest("the reward selection is empty", param="adapter_reward")
        terms: list[tuple[str, float]] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, weight = part.partition("=")
            name = name.strip()
            try:
                w = float(weight) if sep else 1.0
            except ValueError:
                raise InvalidRequest(f"weight of {name!r} is not a number: {weight!r}", param="adapter_reward") from None
            if w != w or w in (float("inf"), float("-inf")):
                raise InvalidRequest(f"weight of {name!r} must be finite", param="adapter_reward")
            _check_term(name)
            terms.append((name, w))
        if not terms:
            raise InvalidRequest("the reward selection is empty", param="adapter_reward")
        return cls(tuple(terms))

    def value(self, response: ScoreResponse) -> float:
        return float(sum(w * _term_value(response, name) for name, w in self.terms))

    def __str__(self) -> str:
        if len(self.terms) == 1 and self.terms[0][1] == 1.0:
            return self.terms[0][0]
        return ",".join(f"{n}={w:g}" for n, w in self.terms)


def all_scores(response: ScoreResponse) -> dict[str, float]:
    """Every number under its own key (Cosmos-RL's `scores`): each dimension's expected score, its label score,
    `reward` and `expected_reward`, so a trainer's `score_key` ("a+b") sums whichever it wants."""
    out: dict[str, float] = {"reward": float(response.reward), "expected_reward": float(response.expected_reward)}
    for dim in DIMENSIONS:
        d = response.dimensions[dim]  # type: ignore[index]
        out[dim] = float(d.expected_score)
        out[f"{dim}.score"] = float(d.score)
    return out
