"""Which number a trainer gets from a `ScoreResponse`: `LIFT_ADAPTER_REWARD`.

- `reward` (LiFT Eq. 2, the default) or `expected_reward` (probability-weighted, smooth);
- a dimension name of the deployment's critic, e.g. `motion_smoothness`: that dimension's `expected_score`
  (its `score` where the critic's answer has no probabilities; `motion_smoothness.score` for its label score);
- a weighted sum of any of those: `motion_smoothness=0.5,video_fidelity=0.5`;
- in a deployment of several critics, any of those prefixed by a critic's name, for that critic's answer:
  `videoscore2.text_alignment=1.0,lift.expected_reward=0.5` (unprefixed names are the first critic's); every
  critic a selection names is asked, the video decoded once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def _canonical(critic: str, term: str) -> str:
    from service.critics import CRITIC_NAMES, load_spec

    alias = load_spec(critic).reward_alias if critic in CRITIC_NAMES else None
    return "reward" if alias is not None and term == alias else term


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
    # term -> the critic whose answer it reads (None: the response's own), for a deployment of several critics
    critic_of: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, spec: str, dimensions: Sequence[str] = DIMENSIONS,
              critics: Mapping[str, Sequence[str]] | None = None) -> "RewardSelection":
        """`spec` against the names of a critic with `dimensions` (LiFT-Critic's unless given); with `critics`
        ({name: its dimensions}, several in one deployment), a term may start with a critic's name."""
        text = (spec or "").strip()
        if not text:
            raise InvalidRequest("the reward selection is empty", param="adapter_reward")
        terms: list[tuple[str, float]] = []
        owners: list[tuple[str, str | None]] = []  # only the terms that name a critic
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
            head, _, rest = name.partition(".")
            if critics and head in critics and rest:
                rest = _canonical(head, rest)  # the critic's own name for its reward (videoalign.overall)
                _check_term(rest, critics[head])
                name = f"{head}.{rest}"
                owners.append((name, head))
            else:
                _check_term(name, dimensions)
            terms.append((name, w))
        if not terms:
            raise InvalidRequest("the reward selection is empty", param="adapter_reward")
        return cls(tuple(terms), tuple(owners))

    def critics_asked(self, default: str) -> list[str] | None:
        """The critics a response must carry for this selection (the default first); None: the default alone."""
        named = [c for _, c in self.critic_of if c is not None]
        if not named:
            return None
        return list(dict.fromkeys([default, *named]))

    def value(self, response: ScoreResponse) -> float:
        owners = dict(self.critic_of)
        total = 0.0
        for name, w in self.terms:
            critic = owners.get(name)
            if critic is None:
                total += w * _term_value(response, name)
                continue
            answer = (response.by_critic or {}).get(critic)
            if answer is None:
                if response.model != critic:
                    raise InvalidRequest(f"the reward names the {critic} critic, which did not answer",
                                         param="adapter_reward")
                answer = response
            total += w * _term_value(answer, name.partition(".")[2])
        return float(total)

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
