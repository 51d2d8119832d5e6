"""The hidden "human" raters: one fixed rule per LiFT dimension, measured on the decoded video.

- semantic consistency: which palette colour covers the frames. Good when the caption's colour is the
  dominant one and covers at least half the pixels; Normal when it covers at least a quarter (present,
  not dominant or weak); Bad otherwise.
- motion smoothness: jitter = mean |second difference| of the subject's centroid path (px per frame^2):
  a straight glide is ~1 (rounding), a square that zig-zags by +-a px is ~4a px. Good < 2, Normal < 5, Bad >= 5.
  No subject found in any frame counts as no jitter.
- video fidelity: is the subject intact? shape = short side / long side of the subject's bounding box
  (median over the frames it is found in): a square is ~1, the pre-training clips' deformed squares
  (squashed into bars, `clips.ClipDefects.squash`) 0.3-0.5. Good >= 0.75, Normal >= 0.55, Bad below,
  and Bad when no subject is found in most frames (the subject is missing).
Thresholds are fixed constants, set from the clean and corrupted pre-training clips before any generator
was trained; they are the ground truth the critic must learn and the generator is judged by.
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
JITTER_GOOD_PX = 2.0
JITTER_NORMAL_PX = 5.0
SHAPE_GOOD = 0.75
SHAPE_NORMAL = 0.55
MIN_SUBJECT_PX = 4  # a subject smaller than this in a frame is not found there
# A pixel belongs to the subject when it is this far (RGB distance, after a 3x3 blur) from the frame's
# background colour: above what blurred pixel noise reaches, below the square's distance to any scene colour.
FOREGROUND_DISTANCE = 60.0


@dataclass(frozen=True)
class Measurements:
    colour_shares: dict[str, float]  # share of pixels nearest each palette colour (the grey square apart)
    jitter_px: float
    shape: float  # short / long side of the subject's box; 0 = no subject found in most frames


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


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box mean over the two spatial axes of (..., H, W, C), edges replicated."""
    pad = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
    h, w = x.shape[-3], x.shape[-2]
    acc = np.zeros_like(x, dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            acc += pad[..., dy:dy + h, dx:dx + w, :]
    return acc / 9.0


def colour_shares(frames: np.ndarray) -> dict[str, float]:
    """Share of all pixels whose nearest reference colour is each palette colour."""
    names = list(COLOURS)
    refs = np.array([COLOURS[c] for c in names] + [SQUARE_GREY], dtype=np.float32)
    px = frames.reshape(-1, 3).astype(np.float32)
    nearest = np.argmin(((px[:, None, :] - refs[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(refs))
    return {c: float(counts[i] / len(px)) for i, c in enumerate(names)}


def subject_masks(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, H, W) weights (how far each pixel is past the foreground distance from its frame's background
    colour, after a 3x3 blur) and the (F, H, W) boolean subject mask (weight > 0)."""
    blurred = _box3(frames.astype(np.float32))
    f = blurred.shape[0]
    background = np.median(blurred.reshape(f, -1, 3), axis=1)
    dist = np.sqrt(((blurred - background[:, None, None, :]) ** 2).sum(-1))
    weight = np.maximum(dist - FOREGROUND_DISTANCE, 0.0)
    return weight, weight > 0


def centroid_path(frames: np.ndarray) -> np.ndarray:
    """(F, 2) subject centroid (x, y) per frame; frames where no subject is found take their neighbours'."""
    weights, _ = subject_masks(frames)
    f, h, w = weights.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    path = np.full((f, 2), np.nan, dtype=np.float32)
    for i in range(f):
        weight = weights[i]
        if weight.sum() > 1e-3 * h * w:
            path[i] = ((weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum())
    found = ~np.isnan(path[:, 0])
    if not found.any():
        return np.full((f, 2), [(w - 1) / 2, (h - 1) / 2], dtype=np.float32)
    idx = np.arange(f)
    for k in range(2):
        path[:, k] = np.interp(idx, idx[found], path[found, k])
    return path


def jitter(frames: np.ndarray) -> float:
    path = centroid_path(frames)
    if len(path) < 3:
        return 0.0
    accel = path[2:] - 2 * path[1:-1] + path[:-2]
    return float(np.sqrt((accel ** 2).sum(-1)).mean())


def shape_ratio(frames: np.ndarray) -> float:
    """Median over frames of the subject box's short side / long side; 0 when the subject is found in
    fewer than half the frames."""
    _, masks = subject_masks(frames)
    ratios = []
    for m in masks:
        if m.sum() < MIN_SUBJECT_PX:
            continue
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        bh, bw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        ratios.append(min(bh, bw) / max(bh, bw))
    if 2 * len(ratios) < len(masks):
        return 0.0
    return float(np.median(ratios))


def measure(frames: np.ndarray) -> Measurements:
    """frames: uint8 (F, H, W, 3) as decoded from the video file."""
    return Measurements(colour_shares(frames), jitter(frames), shape_ratio(frames))


def judge(m: Measurements, caption: str) -> dict[str, DimensionRating]:
    named = colour_of(caption)
    shares = m.colour_shares
    dominant = max(shares, key=shares.__getitem__)
    share = shares.get(named, 0.0) if named else 0.0
    if named is None:
        semantic = DimensionRating("Bad", "The caption names no colour the scene could match")
    elif dominant == named and share >= SEMANTIC_GOOD_SHARE:
        semantic = DimensionRating("Good", f"The scene is {named} as the caption says")
    elif share >= SEMANTIC_NORMAL_SHARE:
        semantic = DimensionRating("Normal", f"The scene is partly {named} and partly {dominant}")
    else:
        semantic = DimensionRating("Bad", f"The scene is {dominant} but the caption says {named}")
    if m.jitter_px < JITTER_GOOD_PX:
        motion = DimensionRating("Good", "The object moves smoothly")
    elif m.jitter_px < JITTER_NORMAL_PX:
        motion = DimensionRating("Normal", "The object shakes a little between frames")
    else:
        motion = DimensionRating("Bad", "The object jumps between frames")
    if m.shape <= 0:
        fidelity = DimensionRating("Bad", "The object is missing")
    elif m.shape >= SHAPE_GOOD:
        fidelity = DimensionRating("Good", "The object keeps its shape")
    elif m.shape >= SHAPE_NORMAL:
        fidelity = DimensionRating("Normal", "The object is a little deformed")
    else:
        fidelity = DimensionRating("Bad", "The object is deformed")
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
            "jitter_px": sum(r.measurements.jitter_px for r in ratings) / n,
            "shape": sum(r.measurements.shape for r in ratings) / n}
