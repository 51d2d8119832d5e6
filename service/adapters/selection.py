"""Which number a trainer gets from a `ScoreResponse`: `LIFT_ADAPTER_REWARD`.

- `reward` (LiFT Eq. 2, the default) or `expected_reward` (probability-weighted, smooth);
- a dimension name of the deployment's critic, e.g. `motion_smoothness`: that dimension's `expected_score`
  (its `score` where the critic's answer has no probabilities; `motion_smoothness.score` for its label score);
- a weighted sum of any of those: `motion_smoothness=0.5,video_fidelity=0.5`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from service.errors import InvalidRequest
from service.protocol import DimensionName, ScoreResponse

DIMENSIONS: tuple[str, ...] = get_args(DimensionName)  # LiFT-Critic's, the default critic
TOP_LEVEL = ("reward", "expected_reward")


def _smooth(expected: float | None, fallback: float) -> float:
    return float(fallback if expected is None else expected)


def _term_value(response: ScoreResponse, term: str) -> float:
    if term in TOP_LEVEL:
        return _smooth(response.expected_reward, response.reward) if term == "expected_reward" else response.reward
    dim, _, part = term.partition(".")
    d = response.dimensions[dim]
    return float(d.score) if part == "score" else _smooth(d.expected_score, d.score)


def reward_names(dimensions: Sequence[str] = DIMENSIONS) -> list[str]:
    """Every name a selection may use for a critic with these dimensions."""
    return [*TOP_LEVEL, *dimensions, *(f"{d}.score" for d in dimensions)]


def _check_term(term: str, dimensions: Sequence[str]) -> None:
    dim, _, part = term.partition(".")
    ok = term in TOP_LEVEL or (dim in dimensions and part in ("", "score", "expected_score"))
    if not ok:
        known = reward_names(dimensions)
        raise InvalidRequest(f"unknown reward {term!r}; one of {known}, or a weighted sum 'a=0.5,b=0.5'",
                             param="adapter_reward")


@dataclass(frozen=True)
class RewardSelection:
    terms: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, spec: str, dimensions: Sequence[str] = DIMENSIONS) -> "RewardSelection":
        """`spec` against the names of a critic with `dimensions` (LiFT-Critic's unless given)."""
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
            _check_term(name, dimensions)
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
    out: dict[str, float] = {"reward": float(response.reward),
                             "expected_reward": _smooth(response.expected_reward, response.reward)}
    for dim, d in response.dimensions.items():
        out[dim] = _smooth(d.expected_score, d.score)
        out[f"{dim}.score"] = float(d.score)
    return out
