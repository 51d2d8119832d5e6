"""The hidden "human" raters: one fixed rule per LiFT dimension, measured on the decoded video.

- semantic consistency: which palette colour covers the frames (by hue: each pixel's colour divided by its
  brightest channel, so a dark or relit scene keeps its colour). Good when the caption's colour is the
  dominant one and covers at least half the pixels; Normal when it covers at least a quarter; Bad otherwise.
- motion smoothness (continuity from frame to frame): light drift = the brightest frame's light level minus
  the darkest's, over the mean level (a frame's level: the median of its pixels' brightest channel). A
  steady light reads under 0.01 from the mp4, the pre-training clips' fades (+-12-25 %) 0.22-0.5.
  Good < 0.1, Normal < 0.2, Bad above.
- video fidelity (is the picture usable?): exposure = mean frame level over the level of the dominant
  palette colour fully lit. Good >= 0.8, Normal >= 0.6, Bad below (the underexposed clips are 0.35-0.55).
Thresholds are fixed constants between the clean and the corrupted pre-training clips' readings (motion's
Good bound placed after seeing a pre-trained generator's drift spread, 0.05-0.16 in 60 samples, so both
labels occur); they are the ground truth the critic must learn and the generator is judged by.
Each rating has LiFT's label and a short reason; `write_ratings` writes LiFT's release format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.miniature.clips import COLOURS, SQUARE_GREY, colour_of
from service.rubric import DIMENSION_NAMES, LABEL_SCORES, LABELS

SEMANTIC_GOOD_SHARE = 0.5
SEMANTIC_NORMAL_SHARE = 0.25
DRIFT_GOOD = 0.1
DRIFT_NORMAL = 0.2
EXPOSURE_GOOD = 0.8
EXPOSURE_NORMAL = 0.6


@dataclass(frozen=True)
class Measurements:
    colour_shares: dict[str, float]  # share of pixels whose hue is nearest each palette colour (grey apart)
    light_drift: float  # (brightest - darkest frame's light level) / mean level
    exposure: float  # mean light level / the dominant colour's level fully lit


@dataclass(frozen=True)
class DimensionRating:
    label: str
    reason: str

    @property
    def score(self) -> float:
        return LABEL_SCORES[self.label]


@dataclass(frozen=True)
class Rating:
    """The rules' judgement of one video: a label and reason per dimension, and what was measured."""

    video: Path
    caption: str
    dimensions: dict[str, DimensionRating]
    measurements: Measurements

    @property
    def reward(self) -> float:
        """LiFT Eq. 2 on the rules' labels: the mean label score."""
        return sum(d.score for d in self.dimensions.values()) / len(self.dimensions)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Colours divided by their brightest channel: the same hue at any light level."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb / np.maximum(rgb.max(-1, keepdims=True), 1.0)


def colour_shares(frames: np.ndarray) -> dict[str, float]:
    """Share of all pixels whose hue is nearest each palette colour's (grey, the subject's, counted apart)."""
    names = list(COLOURS)
    refs = _hue([COLOURS[c] for c in names] + [SQUARE_GREY])
    px = _hue(frames.reshape(-1, 3))
    nearest = np.argmin(((px[:, None, :] - refs[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(refs))
    return {c: float(counts[i] / len(px)) for i, c in enumerate(names)}


def dominant_colour(shares: dict[str, float]) -> str:
    return max(shares, key=shares.__getitem__)


def frame_levels(frames: np.ndarray) -> np.ndarray:
    """(F,) light level of each frame: the median over its pixels of the brightest channel (the scene's, as
    the scene covers most of the frame)."""
    return np.median(frames.max(-1).reshape(frames.shape[0], -1).astype(np.float32), axis=1)


def light_drift(levels: np.ndarray) -> float:
    """How far the light moves during the clip: the range of `frame_levels`, over their mean."""
    if len(levels) < 2:
        return 0.0
    return float((levels.max() - levels.min()) / max(float(levels.mean()), 1.0))


def exposure(levels: np.ndarray, shares: dict[str, float]) -> float:
    """The mean of `frame_levels` over the dominant palette colour's level fully lit."""
    return float(levels.mean() / max(COLOURS[dominant_colour(shares)]))


def measure(frames: np.ndarray) -> Measurements:
    """frames: uint8 (F, H, W, 3) as decoded from the video file."""
    shares, levels = colour_shares(frames), frame_levels(frames)
    return Measurements(shares, light_drift(levels), exposure(levels, shares))


def judge(m: Measurements, caption: str) -> dict[str, DimensionRating]:
    named = colour_of(caption)
    shares = m.colour_shares
    dominant = dominant_colour(shares)
    share = shares.get(named, 0.0) if named else 0.0
    if named is None:
        semantic = DimensionRating("Bad", "The caption names no colour the scene could match")
    elif dominant == named and share >= SEMANTIC_GOOD_SHARE:
        semantic = DimensionRating("Good", f"The scene is {named} as the caption says")
    elif share >= SEMANTIC_NORMAL_SHARE:
        semantic = DimensionRating("Normal", f"The scene is partly {named} and partly {dominant}")
    else:
        semantic = DimensionRating("Bad", f"The scene is {dominant} but the caption says {named}")
    if m.light_drift < DRIFT_GOOD:
        motion = DimensionRating("Good", "The light is steady through the clip")
    elif m.light_drift < DRIFT_NORMAL:
        motion = DimensionRating("Normal", "The light drifts a little during the clip")
    else:
        motion = DimensionRating("Bad", "The light fades during the clip")
    if m.exposure >= EXPOSURE_GOOD:
        fidelity = DimensionRating("Good", "The picture is well exposed")
    elif m.exposure >= EXPOSURE_NORMAL:
        fidelity = DimensionRating("Normal", "The picture is a little dark")
    else:
        fidelity = DimensionRating("Bad", "The picture is too dark")
    return {"semantic_consistency": semantic, "motion_smoothness": motion, "video_fidelity": fidelity}


def rate_frames(frames: np.ndarray, caption: str, video: Path | str = "") -> Rating:
    m = measure(frames)
    return Rating(Path(video), caption, judge(m, caption), m)


def rate_video(video: Path | str, caption: str) -> Rating:
    """Rate a video file as the service would see it: decoded from disk."""
    from finetune.video_io import read_frames

    return rate_frames(read_frames(video), caption, video)


def rate_manifest(manifest: Path | str) -> list[Rating]:
    """Rate every video of a generation manifest (`lift finetune generate` / the loop's rounds)."""
    from finetune.data import read_jsonl

    return [rate_video(r["video"], r["prompt"]) for r in read_jsonl(manifest)]


def to_examples(ratings: Iterable[Rating]):
    """Ratings as the critic trainer's `RatedExample`s, one per (video, dimension)."""
    from finetune.critic.data import RatedExample

    return [RatedExample(video=r.video, caption=r.caption, dimension=d, label=dr.label, reason=dr.reason)
            for r in ratings for d, dr in r.dimensions.items()]


def balanced(examples: Sequence, seed: int = 0, max_repeat: int = 4) -> list:
    """The examples with every (dimension, label) present repeated up to the most frequent one of its
    dimension, at most `max_repeat` times its own size (whole copies first, then a seeded random
    remainder): a critic trained on a skewed set otherwise learns the majority label, and a label seen a
    handful of times is not worth a hundred copies. Order shuffled, seeded."""
    import random

    rnd = random.Random(seed)
    groups: dict[tuple[str, str], list] = {}
    for ex in examples:
        groups.setdefault((ex.dimension, ex.label), []).append(ex)
    top = {d: max(len(g) for (dd, _), g in groups.items() if dd == d) for d, _ in groups}
    out: list = []
    for (d, _), g in groups.items():
        reps, rest = divmod(min(top[d], max_repeat * len(g)), len(g))
        out += g * reps + rnd.sample(g, rest)
    rnd.shuffle(out)
    return out


def counterfactual(rating: Rating) -> Rating:
    """The same video rated against another caption: the scene's own colour if its caption names another,
    else the next palette colour. Both kinds are in a training set with counterfactuals, so a critic can only
    be right about semantic consistency by reading the caption: without them the tiny critic learnt which
    scenes its generator usually got right, and the fine-tuned generator drew those scenes for any caption
    (measured: 27 of 108 samples rated semantically Good by the critic and Bad by the rule after 3 rounds)."""
    from finetune.miniature.clips import recolour

    named = colour_of(rating.caption)
    shares = rating.measurements.colour_shares
    dominant = dominant_colour(shares)
    palette = list(COLOURS)
    other = dominant if dominant != named else palette[(palette.index(dominant) + 1) % len(palette)]
    caption = recolour(rating.caption, other)
    return Rating(rating.video, caption, judge(rating.measurements, caption), rating.measurements)


def write_ratings(ratings: Sequence[Rating], path: Path | str, *, relative_to: Path | None = None,
                  balance: bool = False, seed: int = 0) -> Path:
    """LiFT's release format (a JSON list of {"video", "conversations"}), one entry per video and dimension;
    `lift critic train/eval` read it with the same reader as LiFT's own files. JSONL when path ends .jsonl.
    balance=True oversamples the rarer labels of each dimension (`balanced`), for a training set."""
    from finetune.critic.data import write_jsonl, write_lift

    path = Path(path)
    writer = write_jsonl if path.suffix == ".jsonl" else write_lift
    examples = to_examples(ratings)
    return writer(path, balanced(examples, seed) if balance else examples, relative_to=relative_to)


@dataclass(frozen=True)
class DimensionSummary:
    n: int
    good_rate: float
    mean_score: float  # mean LiFT score (Good 0.9, Normal 0.2, Bad 0.05) of the rules' labels
    counts: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "good_rate": self.good_rate, "mean_score": self.mean_score, "counts": self.counts}


def summarize(ratings: Sequence[Rating]) -> dict[str, DimensionSummary]:
    out: dict[str, DimensionSummary] = {}
    for d in DIMENSION_NAMES:
        labels = [r.dimensions[d].label for r in ratings]
        n = len(labels)
        counts = {lbl: labels.count(lbl) for lbl in LABELS}
        out[d] = DimensionSummary(n, counts["Good"] / n if n else math.nan,
                                  sum(LABEL_SCORES[lbl] for lbl in labels) / n if n else math.nan, counts)
    return out


def mean_measurements(ratings: Sequence[Rating]) -> Mapping[str, float]:
    """Averages of the raw measurements, for evidence beside the labels."""
    n = max(1, len(ratings))
    named = [r.measurements.colour_shares.get(colour_of(r.caption) or "", 0.0) for r in ratings]
    return {"named_colour_share": sum(named) / n,
            "light_drift": sum(r.measurements.light_drift for r in ratings) / n,
            "exposure": sum(r.measurements.exposure for r in ratings) / n}
