"""Critic answers -> per-dimension scores -> reward (LiFT Eq. 2) and expected reward."""

from __future__ import annotations

from collections.abc import Mapping

from service.protocol import DimensionScore, LabelProbabilities
from service.rubric import DIMENSION_NAMES, LABEL_SCORES, LABELS


def expected_score(probabilities: Mapping[str, float]) -> float:
    return float(sum(probabilities[label] * LABEL_SCORES[label] for label in LABELS))


def dimension_score(label: str, probabilities: Mapping[str, float], rationale: str | None) -> DimensionScore:
    return DimensionScore(
        label=label,
        score=LABEL_SCORES[label],
        expected_score=expected_score(probabilities),
        probabilities=LabelProbabilities(**{k: float(probabilities[k]) for k in LABELS}),
        rationale=rationale,
    )


def reward(dimensions: Mapping[str, DimensionScore]) -> tuple[float, float]:
    """(reward, expected_reward): means over the three dimensions."""
    missing = set(DIMENSION_NAMES) - set(dimensions)
    if missing:
        raise ValueError(f"missing dimensions: {sorted(missing)}")
    n = len(DIMENSION_NAMES)
    r = sum(dimensions[d].score for d in DIMENSION_NAMES) / n
    er = sum(dimensions[d].expected_score for d in DIMENSION_NAMES) / n
    return float(r), float(er)
