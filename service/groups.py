"""Per-group statistics of a batch's scores: where GRPO gets a signal and where it gets none.

GRPO trainers normalise each prompt's samples by their group's mean and std themselves; we serve raw scores
and, per group, the mean, the population std and whether the group has zero spread (every scored sample the
same value: the advantage is 0 for all of them). With three discrete labels that is common, which is why the
probability-weighted `expected_*` scores exist. Failed items are left out, never counted as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from service.protocol import DimensionGroupStats, GroupStats, ScoreResponse, SpreadStats
from service.rubric import DIMENSION_NAMES

# Values within this of each other are "equal": GRPO divides by (std + eps), eps 1e-4 in TRL, so a spread below
# this gives advantages of ~1e-2 or less; it also absorbs a batch's float noise on the same video.
ZERO_SPREAD_TOL = 1e-6


def spread(values: Sequence[float]) -> SpreadStats:
    if not values:
        return SpreadStats(mean=None, std=None, zero_spread=None)
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return SpreadStats(mean=mean, std=std, zero_spread=max(values) - min(values) <= ZERO_SPREAD_TOL)


def stat_keys(dimensions: Sequence[str] = DIMENSION_NAMES) -> tuple[str, ...]:
    """The numbers a group is summarised on, as the metrics label them (`key`), for a critic's dimensions."""
    return ("reward", "expected_reward", *(f"{d}.{part}" for d in dimensions for part in ("score", "expected_score")))


def group_stats(results: Sequence[ScoreResponse | None]) -> GroupStats:
    """One group's items, each its response or None where it failed."""
    ok = [r for r in results if r is not None]
    dimensions = list(dict.fromkeys(d for r in ok for d in r.dimensions))  # the critic's, in its order
    return GroupStats(
        n=len(results), scored=len(ok), failed=len(results) - len(ok),
        reward=spread([r.reward for r in ok]),
        expected_reward=spread(_known(r.expected_reward for r in ok)),
        dimensions={d: DimensionGroupStats(
            score=spread([r.dimensions[d].score for r in ok if d in r.dimensions]),
            expected_score=spread(_known(r.dimensions[d].expected_score for r in ok if d in r.dimensions)),
        ) for d in dimensions},
    )


def _known(values: Iterable[float | None]) -> list[float]:
    """A critic without probabilities has no expected scores: their statistics are null, not over zeros."""
    return [v for v in values if v is not None]


def batch_groups(items: Iterable[tuple[str | None, ScoreResponse | None]]) -> dict[str, GroupStats]:
    """(group id or None, response or None if failed) per item, in order -> statistics per group id."""
    members: dict[str, list[ScoreResponse | None]] = {}
    for group, result in items:
        if group is not None:
            members.setdefault(group, []).append(result)
    return {g: group_stats(rs) for g, rs in members.items()}


def spreads_by_key(stats: GroupStats) -> dict[str, SpreadStats]:
    """The group's statistics flat: reward, expected_reward, and `<dimension>.score` / `.expected_score`."""
    out = {"reward": stats.reward, "expected_reward": stats.expected_reward}
    for d, ds in stats.dimensions.items():
        out[f"{d}.score"] = ds.score
        out[f"{d}.expected_score"] = ds.expected_score
    return out
