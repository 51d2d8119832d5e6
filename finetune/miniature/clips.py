"""Synthetic captioned clips for pre-training the tiny generator: what it learns to draw.

A clip is a scene of one colour with a grey square gliding across it, captioned "a <colour> <subject>",
under a light that may be wrong. Like web video, the data is imperfect on purpose, so the pre-trained
generator's samples differ in exactly what the hidden rules judge (`finetune.miniature.rules`):
- the scene is the caption's colour only `p_match` of the time (otherwise another palette colour);
- the light fades (`p_fade`: from 1 + `light_fade` of its level at the first frame to 1 - that at the last,
  evenly), a break in continuity (LiFT's motion dimension: the clip is not steady from frame to frame);
- the picture is underexposed (`p_dark`: every pixel scaled by `exposure`, 0.35-0.55), an image-quality
  defect (LiFT's fidelity dimension).
All three defects are properties of whole frames on purpose. Defects of the square itself were tried first
and dropped, with measurements: after 3,000 transformer steps (2 or 4 layers, 64-128 wide, squares of 10 or
14 px, latents of 4 or 8 channels) the tiny generator still drew the square as a shapeless blob that moved
from place to place between frames, so every sample's centroid jitter was Bad (7-10 px) and its shape never a
bar: the rules could not tell its samples apart and no reward could prefer one. Light defects other than a
fade were dropped for the same reason, measured on 60 samples after 1,200 steps: a light flickering every
other frame (the VAE kept 78 % of its labels, the generator drew none), a light switched at a random frame
(the VAE spread it over 2-3 frames, the generator drew a steady light), a fade in either direction (the
generator averaged the two into a steady light: drift 0.04 median). A fade one way is drawn, partly: drift
0.05-0.16 (10th-90th percentile) against the data's 0 or 0.24-0.5, so its samples differ in motion.
Each defect is independent of the others and of the caption. Reward-weighted fine-tuning should move the
generator's samples towards the caption-matching, steady, well-exposed mode.
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


def recolour(text: str, colour: str) -> str:
    """The caption with the palette colour it names replaced by `colour`."""
    named = colour_of(text)
    if named is None:
        raise ValueError(f"caption {text!r} names no palette colour")
    return " ".join(colour if w == named else w for w in text.split(" "))


@dataclass(frozen=True)
class ClipDefects:
    """How likely each imperfection is in the pre-training data, and how strong it is when present."""

    p_match: float = 0.6  # scene colour = caption colour
    p_fade: float = 0.4
    light_fade: tuple[float, float] = (0.12, 0.25)  # +- share of the light at the first / last frame, uniform
    p_dark: float = 0.4
    exposure: tuple[float, float] = (0.35, 0.55)  # light level of an underexposed clip, uniform range


@dataclass(frozen=True)
class ClipSpec:
    caption: str
    scene_colour: str
    light_fade: float = 0.0  # 0 = a steady light
    exposure: float = 1.0  # 1 = well exposed


def sample_spec(rng: np.random.Generator, subjects: Sequence[str], defects: ClipDefects = ClipDefects()) -> ClipSpec:
    colours = list(COLOURS)
    named = colours[int(rng.integers(len(colours)))]
    subject = subjects[int(rng.integers(len(subjects)))]
    if rng.random() < defects.p_match:
        scene = named
    else:
        others = [c for c in colours if c != named]
        scene = others[int(rng.integers(len(others)))]
    fade = float(rng.uniform(*defects.light_fade)) if rng.random() < defects.p_fade else 0.0
    exposure = float(rng.uniform(*defects.exposure)) if rng.random() < defects.p_dark else 1.0
    return ClipSpec(caption(named, subject), scene, fade, exposure)


def light(spec: ClipSpec, num_frames: int) -> np.ndarray:
    """(num_frames,) light level of each frame: the exposure, times 1 + light_fade at the first frame going
    evenly to 1 - light_fade at the last (the mean stays the exposure)."""
    t = np.arange(num_frames) / max(1, num_frames - 1)
    return spec.exposure * (1.0 + spec.light_fade * (1.0 - 2.0 * t))


def render(spec: ClipSpec, rng: np.random.Generator, *, size: int = 32, num_frames: int = 9,
           side: int | None = None) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: the scene colour and a grey square on a straight path, every frame
    lit at `light(...)`."""
    side = side or max(4, size // 3)
    hi = np.array([size - side, size - side], dtype=np.float64)
    start, end = rng.uniform(0.0, 1.0, 2) * hi, rng.uniform(0.0, 1.0, 2) * hi
    levels = light(spec, num_frames)
    frames = np.empty((num_frames, size, size, 3), dtype=np.float32)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        x, y = np.clip(np.round(start + (end - start) * t), 0, hi).astype(int)
        frames[i] = COLOURS[spec.scene_colour]
        frames[i, y:y + side, x:x + side] = SQUARE_GREY
        frames[i] *= levels[i]
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def batch(rng: np.random.Generator, n: int, subjects: Sequence[str], defects: ClipDefects = ClipDefects(), *,
          size: int = 32, num_frames: int = 9) -> tuple[list[ClipSpec], np.ndarray]:
    """n fresh clips: their specs and uint8 frames (n, F, H, W, 3)."""
    specs = [sample_spec(rng, subjects, defects) for _ in range(n)]
    return specs, np.stack([render(s, rng, size=size, num_frames=num_frames) for s in specs])
