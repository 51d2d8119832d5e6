"""Synthetic captioned clips for pre-training the tiny generator: what it learns to draw.

A clip is a scene of one colour with a grey square gliding across it, captioned "a <colour> <subject>".
Like web video, the data is imperfect on purpose, so the pre-trained generator's samples differ in exactly
what the hidden rules judge (`finetune.miniature.rules`):
- the scene is the caption's colour only `p_match` of the time (otherwise another palette colour);
- the square sometimes shakes (`p_jitter`: it zig-zags sideways by +-`jitter_px` around its path, every
  frame the other way);
- the frames are sometimes covered in grain (`p_noise`: a pixel-fine checkerboard dither, its sign
  alternating frame to frame, of random strength).
Both defects are low-dimensional on purpose (a shake amplitude, a grain strength): the tiny VAE can then
encode and a convolutional decoder can redraw them, where truly random per-pixel noise would be averaged
away by any decoder trained on a pixel loss, and the generator could not make it at all.
Each defect is independent of the others and of the caption. Reward-weighted fine-tuning should move the
generator's samples towards the clean, smooth, caption-matching mode.
"""

from __future__ import annotations

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
    p_noise: float = 0.4
    noise_std: tuple[float, float] = (15.0, 50.0)  # grain amplitude (0..255 units), uniform range


@dataclass(frozen=True)
class ClipSpec:
    caption: str
    scene_colour: str
    jitter_px: float  # 0 = a straight glide
    noise_std: float  # 0 = clean


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
    noise = float(rng.uniform(*defects.noise_std)) if rng.random() < defects.p_noise else 0.0
    return ClipSpec(caption(named, subject), scene, jitter, noise)


def grain(num_frames: int, size: int) -> np.ndarray:
    """The grain pattern, +-1 per pixel: a checkerboard whose sign flips every frame, (F, H, W, 1)."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(size), np.arange(size), indexing="ij")
    return np.where((t + y + x) % 2 == 0, 1.0, -1.0).astype(np.float32)[..., None]


def render(spec: ClipSpec, rng: np.random.Generator, *, size: int = 32, num_frames: int = 9,
           side: int | None = None) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: the scene colour, a grey square on a straight path (zig-zagging
    +-`jitter_px` across it when shaken), plus grain of strength `noise_std`."""
    side = side or max(4, size // 3)
    lo, hi = 0.0, float(size - side)
    start, end = rng.uniform(lo, hi, 2), rng.uniform(lo, hi, 2)
    direction = end - start
    norm = float(np.linalg.norm(direction))
    # the shake is across the path (perpendicular), so it never reads as faster motion along it
    across = np.array([-direction[1], direction[0]]) / norm if norm > 1e-6 else np.array([1.0, 0.0])
    phase = 1.0 if rng.random() < 0.5 else -1.0
    frames = np.empty((num_frames, size, size, 3), dtype=np.float32)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        pos = start + direction * t
        if spec.jitter_px > 0:
            pos = pos + across * spec.jitter_px * phase * (1.0 if i % 2 == 0 else -1.0)
        x, y = np.clip(np.round(pos), lo, hi).astype(int)
        frames[i] = COLOURS[spec.scene_colour]
        frames[i, y:y + side, x:x + side] = SQUARE_GREY
    if spec.noise_std > 0:
        frames += spec.noise_std * grain(num_frames, size)
    return np.clip(frames, 0, 255).round().astype(np.uint8)


def batch(rng: np.random.Generator, n: int, subjects: Sequence[str], defects: ClipDefects = ClipDefects(), *,
          size: int = 32, num_frames: int = 9) -> tuple[list[ClipSpec], np.ndarray]:
    """n fresh clips: their specs and uint8 frames (n, F, H, W, 3)."""
    specs = [sample_spec(rng, subjects, defects) for _ in range(n)]
    return specs, np.stack([render(s, rng, size=size, num_frames=num_frames) for s in specs])
