"""Synthetic captioned clips for pre-training the tiny generator: what it learns to draw.

A clip is a scene of one colour with a grey square gliding across it, captioned "a <colour> <subject>".
Like web video, the data is imperfect on purpose, so the pre-trained generator's samples differ in exactly
what the hidden rules judge (`finetune.miniature.rules`):
- the scene is the caption's colour only `p_match` of the time (otherwise another palette colour);
- the square sometimes shakes (`p_jitter`: it zig-zags sideways by +-`jitter_px` around its path, every
  frame the other way);
- the square is sometimes deformed (`p_deform`: squashed into a flat bar of the same area, lying or
  standing, `squash` = 1 - its short side / long side), LiFT's fidelity defect ("deformed ... or other
  unrealistic elements").
Both defects are low-dimensional on purpose (a shake amplitude, a squash), and the kind of thing the tiny
VAE redraws in the few hundred steps a CPU run gives it (the square's position and shape). Grain was tried
first and dropped: pixel-fine or 4-px block grain, static or flickering, and a per-frame brightness flicker
were all still averaged away by the VAE after 200-400 steps (measured: the fidelity rule's noise on
reconstructions of grainy clips 1-2, as on clean ones, against 17-37 on the clips), so the generator could
never have drawn them.
Each defect is independent of the others and of the caption. Reward-weighted fine-tuning should move the
generator's samples towards the clean, smooth, caption-matching mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The critic benchmark's palette (finetune.critic.synthetic), words the tiny generator's T5 vocabulary knows.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 215),
}
SQUARE_GREY = (150, 150, 150)
# Subjects the generator is fine-tuned on, and subjects kept for judging (held-out prompts).
TRAIN_SUBJECTS: tuple[str, ...] = ("car", "dog", "bird")
HELDOUT_SUBJECTS: tuple[str, ...] = ("cat", "monkey")


def caption(colour: str, subject: str) -> str:
    return f"a {colour} {subject}"


def prompts(subjects: Sequence[str]) -> list[str]:
    """Every colour x subject caption, colour-major."""
    return [caption(c, s) for c in COLOURS for s in subjects]


def colour_of(text: str) -> str | None:
    """The palette colour a caption names (the first one), or None."""
    for word in text.lower().replace(",", " ").split():
        if word in COLOURS:
            return word
    return None


@dataclass(frozen=True)
class ClipDefects:
    """How likely each imperfection is in the pre-training data, and how strong it is when present."""

    p_match: float = 0.6  # scene colour = caption colour
    p_jitter: float = 0.4
    jitter_px: tuple[float, float] = (2.0, 5.0)  # zig-zag amplitude of the square, uniform range
    p_deform: float = 0.4
    squash: tuple[float, float] = (0.5, 0.7)  # 1 - short/long side of the deformed square, uniform range


@dataclass(frozen=True)
class ClipSpec:
    caption: str
    scene_colour: str
    jitter_px: float  # 0 = a straight glide
    squash: float  # 0 = a square


def sample_spec(rng: np.random.Generator, subjects: Sequence[str], defects: ClipDefects = ClipDefects()) -> ClipSpec:
    colours = list(COLOURS)
    named = colours[int(rng.integers(len(colours)))]
    subject = subjects[int(rng.integers(len(subjects)))]
    if rng.random() < defects.p_match:
        scene = named
    else:
        others = [c for c in colours if c != named]
        scene = others[int(rng.integers(len(others)))]
    jitter = float(rng.uniform(*defects.jitter_px)) if rng.random() < defects.p_jitter else 0.0
    squash = float(rng.uniform(*defects.squash)) if rng.random() < defects.p_deform else 0.0
    return ClipSpec(caption(named, subject), scene, jitter, squash)


def subject_size(side: int, squash: float, standing: bool) -> tuple[int, int]:
    """(width, height) px of the subject: a `side` square, or a bar of the same area and sides in the
    ratio 1 - squash."""
    if squash <= 0:
        return side, side
    r = math.sqrt(1.0 - squash)
    long, short = max(1, round(side / r)), max(1, round(side * r))
    return (short, long) if standing else (long, short)


def render(spec: ClipSpec, rng: np.random.Generator, *, size: int = 32, num_frames: int = 9,
           side: int | None = None) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: the scene colour and a grey square (a bar when deformed) on a
    straight path, zig-zagging +-`jitter_px` across it when shaken."""
    side = side or max(4, size // 3)
    w, h = subject_size(side, spec.squash, bool(rng.random() < 0.5))
    hi = np.array([size - w, size - h], dtype=np.float64)
    start, end = rng.uniform(0.0, 1.0, 2) * hi, rng.uniform(0.0, 1.0, 2) * hi
    direction = end - start
    norm = float(np.linalg.norm(direction))
    # the shake is across the path (perpendicular), so it never reads as faster motion along it
    across = np.array([-direction[1], direction[0]]) / norm if norm > 1e-6 else np.array([1.0, 0.0])
    phase = 1.0 if rng.random() < 0.5 else -1.0
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        pos = start + direction * t
        if spec.jitter_px > 0:
            pos = pos + across * spec.jitter_px * phase * (1.0 if i % 2 == 0 else -1.0)
        x, y = np.clip(np.round(pos), 0, hi).astype(int)
        frames[i] = COLOURS[spec.scene_colour]
        frames[i, y:y + h, x:x + w] = SQUARE_GREY
    return frames


def batch(rng: np.random.Generator, n: int, subjects: Sequence[str], defects: ClipDefects = ClipDefects(), *,
          size: int = 32, num_frames: int = 9) -> tuple[list[ClipSpec], np.ndarray]:
    """n fresh clips: their specs and uint8 frames (n, F, H, W, 3)."""
    specs = [sample_spec(rng, subjects, defects) for _ in range(n)]
    return specs, np.stack([render(s, rng, size=size, num_frames=num_frames) for s in specs])
