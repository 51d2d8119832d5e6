"""Rated videos made by a rule a critic can learn: for showing that training teaches something.

Each clip is a coloured scene with a grey square moving across it; three independent coin flips set
the three human labels:
- semantic consistency: Good when the colour named in the caption is the scene's dominant colour,
  Bad when the caption names another colour;
- motion smoothness: Good when the square glides in small steps, Bad when it jumps to a random place
  every frame (a frame-jittered clip);
- video fidelity: Good for clean frames, Bad for frames corrupted by strong pixel noise.
So chance is 50 % per dimension. The maker writes real H.264 mp4 files and both data formats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.critic.data import RatedExample, write_jsonl, write_lift

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 215),
}
SUBJECTS = ("car", "person", "ball", "dog")
REASONS = {
    ("semantic_consistency", "Good"): "The colour matches the caption",
    ("semantic_consistency", "Bad"): "The colour does not match the caption",
    ("motion_smoothness", "Good"): "The motion is smooth",
    ("motion_smoothness", "Bad"): "The object jumps between frames",
    ("video_fidelity", "Good"): "The frames are clean",
    ("video_fidelity", "Bad"): "The frames are full of noise",
}


@dataclass(frozen=True)
class ClipSpec:
    name: str
    scene_colour: str
    caption_colour: str
    subject: str
    jitter: bool
    noisy: bool

    @property
    def caption(self) -> str:
        return f"a {self.caption_colour} {self.subject} in a {self.caption_colour} scene"

    def labels(self) -> dict[str, str]:
        return {
            "semantic_consistency": "Good" if self.caption_colour == self.scene_colour else "Bad",
            "motion_smoothness": "Bad" if self.jitter else "Good",
            "video_fidelity": "Bad" if self.noisy else "Good",
        }


def render_clip(spec: ClipSpec, *, size: int = 112, num_frames: int = 16, seed: int = 0) -> np.ndarray:
    """(num_frames, size, size, 3) uint8 frames following the spec."""
    rng = np.random.default_rng(seed)
    side = size // 4
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    base = np.array(COLOURS[spec.scene_colour], dtype=np.float32)
    # smooth: a straight line from one random corner region to another
    x0, y0 = rng.integers(0, size - side, 2)
    x1, y1 = rng.integers(0, size - side, 2)
    for i in range(num_frames):
        if spec.jitter:
            x, y = rng.integers(0, size - side, 2)
        else:
            t = i / max(1, num_frames - 1)
            x, y = int(round(x0 + (x1 - x0) * t)), int(round(y0 + (y1 - y0) * t))
        img = np.empty((size, size, 3), dtype=np.float32)
        img[:] = base
        img[y:y + side, x:x + side] = (150.0, 150.0, 150.0)
        if spec.noisy:
            img += rng.normal(0.0, 70.0, img.shape).astype(np.float32)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Real H.264 (yuv420p) mp4 at high quality so the noise survives compression."""
    import imageio_ffmpeg

    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
        output_params=["-crf", "12", "-preset", "veryfast"], ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def make_specs(n: int, seed: int = 0, prefix: str = "clip") -> list[ClipSpec]:
    """n clips with balanced, independent labels (each dimension about half Good, half Bad)."""
    rnd = random.Random(seed)
    colours = list(COLOURS)
    specs = []
    # cycle through the 8 label combinations so even small sets are balanced
    combos = [(m, j, f) for m in (True, False) for j in (True, False) for f in (True, False)]
    rnd.shuffle(combos)
    for i in range(n):
        match, jitter, noisy = combos[i % len(combos)]
        if i % len(combos) == len(combos) - 1:
            rnd.shuffle(combos)
        scene = rnd.choice(colours)
        caption_colour = scene if match else rnd.choice([c for c in colours if c != scene])
        specs.append(ClipSpec(name=f"{prefix}{i:04d}", scene_colour=scene, caption_colour=caption_colour,
                              subject=rnd.choice(SUBJECTS), jitter=jitter, noisy=noisy))
    return specs


def make_rated_videos(out_dir: Path | str, n_videos: int, *, seed: int = 0, size: int = 112,
                      num_frames: int = 16, prefix: str = "clip") -> list[RatedExample]:
    """Write n_videos mp4s under out_dir/videos and return their 3 * n_videos rated examples."""
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    examples: list[RatedExample] = []
    for k, spec in enumerate(make_specs(n_videos, seed=seed, prefix=prefix)):
        path = vdir / f"{spec.name}.mp4"
        write_mp4(path, render_clip(spec, size=size, num_frames=num_frames, seed=seed * 100_003 + k))
        for dim, label in spec.labels().items():
            examples.append(RatedExample(video=path, caption=spec.caption, dimension=dim, label=label,
                                         reason=REASONS[(dim, label)]))
    return examples


def make_rated_dataset(out_dir: Path | str, n_videos: int, *, seed: int = 0, size: int = 112,
                       num_frames: int = 16, prefix: str = "clip") -> dict[str, Path]:
    """Videos plus the same ratings in both formats (`rated.json` LiFT, `rated.jsonl`), paths relative
    to `out_dir/videos` as LiFT's files are relative to their video folder."""
    out = Path(out_dir)
    examples = make_rated_videos(out, n_videos, seed=seed, size=size, num_frames=num_frames, prefix=prefix)
    vdir = out / "videos"
    return {
        "videos": vdir,
        "lift": write_lift(out / "rated.json", examples, relative_to=vdir),
        "jsonl": write_jsonl(out / "rated.jsonl", examples, relative_to=vdir),
    }


def make_learnable_base(out_dir: Path | str, *, seed: int = 0, frame_pixels: int = 112 * 112,
                        head_scale: float = 8.0) -> Path:
    """The tiny random Qwen2-VL critic, adjusted so a few CPU minutes of LoRA training can show learning.

    Two changes, both in the checkpoint (so train and serve still see the same thing):
    - frames resized to `frame_pixels` (112x112: 64 video tokens instead of 256), for CPU speed;
    - the output head scaled by `head_scale`. A random head with init std 0.02 behind RMSNorm caps
      every logit near 0.02 * hidden_size = 2.6, so no LoRA on the layers below it can make the
      critic confident; a pretrained LM head is not that flat.
    """
    import json

    import torch
    from transformers import AutoModelForImageTextToText

    from service.tiny_critics import build_tiny_critic

    out = build_tiny_critic(out_dir, family="qwen2_vl", seed=seed)
    proc_path = out / "processor_config.json"
    proc = json.loads(proc_path.read_text())
    for key in ("image_processor", "video_processor"):
        if key in proc:
            proc[key]["size"] = {"shortest_edge": frame_pixels, "longest_edge": frame_pixels}
    proc_path.write_text(json.dumps(proc, indent=2))
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(out)
    return out
