"""mp4 in and out for fine-tuning (PyAV): write generated frames, read videos back as model input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.errors import InvalidVideo, MediaNotFound


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """uint8 (F, H, W, 3) -> H.264 mp4, written to a temporary name and renamed (no half files)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.mp4")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    n, h, w, _ = frames.shape
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Near-lossless: what the critic and the trainer see should be what the model made.
        stream.options = {"crf": "10", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def read_frames(path: str | Path) -> np.ndarray:
    """All frames as uint8 (F, H, W, 3)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaNotFound(f"video not found: {path}", param=str(path))
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:  # type: ignore[attr-defined]
        raise InvalidVideo(f"cannot decode {path}: {exc}", param=str(path)) from exc
    if not frames:
        raise InvalidVideo(f"no frames in {path}", param=str(path))
    return np.stack(frames)


def load_clip(path: str | Path, num_frames: int, height: int, width: int):
    """A video as model input: float tensor [C, F, H, W] in [-1, 1].

    Frames are taken evenly spaced over the clip (diffusers' CogVideoX example strides the same way),
    then resized to cover (height, width) and centre-cropped.
    """
    import torch
    import torch.nn.functional as F

    frames = read_frames(path)
    if len(frames) < num_frames:
        raise InvalidVideo(f"{path} has {len(frames)} frames, training needs {num_frames}", param=str(path))
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [F, C, h, w]
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - height) // 2, (nw - width) // 2
        x = x[..., top:top + height, left:left + width]
    return x.permute(1, 0, 2, 3).contiguous()  # [C, F, H, W]
