"""Video bytes or file -> N sampled RGB frames, refusing bad or oversized input before decoding it all.

The container is probed first (PyAV reads only the header: codec, resolution, frame count, duration), limits
are checked on those numbers, and only then does decord seek to and decode the sampled frames, nothing else.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import InvalidVideo, MediaNotFound, VideoTooLarge
from service.rubric import DEFAULT_NUM_FRAMES

# Demuxers that mean "a still image", not a video (PyAV happily opens a PNG as a 1-frame stream).
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "jpegls_pipe",
                  "ppm_pipe", "pgm_pipe", "pam_pipe", "qoi_pipe", "svg_pipe", "dpx_pipe", "exr_pipe"}
_IMAGE_CODECS = {"png", "bmp", "tiff", "webp", "jpegls", "ppm", "pgm", "qoi"}


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 4096 * 2304  # per frame (width x height); 4K-ish
    max_duration_s: float = 600.0
    max_frames: int = 100_000


@dataclass
class VideoFrames:
    frames: np.ndarray  # (N, H, W, 3) uint8, RGB
    indices: list[int]  # which source frames were sampled
    total_frames: int
    fps: float
    duration_s: float
    codec: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def sample_indices(total_frames: int, num_frames: int) -> list[int]:
    """LiFT's sampling: `np.linspace(0, total - 1, num, dtype=int)` (rounded down).

    A video shorter than `num_frames` comes out with repeated frames (a 1-frame video: the same frame N times).
    What a critic then sees is its family's rule: VILA takes each distinct frame once, as LiFT's loader did
    (`distinct_frames`); Qwen2-VL's video input keeps the repeats (it needs an even frame count).
    """
    if total_frames < 1:
        raise InvalidVideo("video has no frames")
    return np.linspace(0, total_frames - 1, num_frames, dtype=int).tolist()


def distinct_frames(video: VideoFrames) -> VideoFrames:
    """The sampled frames with repeats dropped (first occurrence kept, in order): for a clip shorter than the
    frames asked, the n frames it has. LiFT's loader (VILA-1.5's `opencv_extract_frames`, used by LiFT's
    LiFT-Critic/test/run_critic_13b.py) reads every frame of a video shorter than the frames asked and puts one
    `<image>` per frame read in the prompt."""
    keep = sorted({index: k for k, index in reversed(list(enumerate(video.indices)))}.values())
    if len(keep) == len(video.indices):
        return video
    return VideoFrames(frames=video.frames[keep], indices=[video.indices[k] for k in keep],
                       total_frames=video.total_frames, fps=video.fps, duration_s=video.duration_s,
                       codec=video.codec, extra=dict(video.extra))


@dataclass(frozen=True)
class _Probe:
    width: int
    height: int
    frames: int  # 0 when the container does not declare it
    duration_s: float
    fps: float
    codec: str


def _probe(data: bytes | str) -> _Probe:
    import av

    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else data, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InvalidVideo(f"not a readable video container ({type(exc).__name__})") from None
    with container:
        if container.format.name in _IMAGE_FORMATS:
            raise InvalidVideo(f"this is an image ({container.format.name}), not a video")
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name or ""
        if codec in _IMAGE_CODECS:
            raise InvalidVideo(f"this is an image ({codec}), not a video")
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        return _Probe(width, height, int(stream.frames or 0), duration, fps, codec)


def _check_limits(probe: _Probe, limits: MediaLimits) -> None:
    if probe.width <= 0 or probe.height <= 0:
        raise InvalidVideo("video stream declares no frame size")
    if probe.width * probe.height > limits.max_pixels:
        raise VideoTooLarge(
            f"frame size {probe.width}x{probe.height} is over the limit of {limits.max_pixels} pixels", param="video"
        )
    if probe.duration_s > limits.max_duration_s:
        raise VideoTooLarge(f"duration {probe.duration_s:.1f}s is over the limit of {limits.max_duration_s:.0f}s", param="video")
    declared = probe.frames or int(round(probe.duration_s * probe.fps))
    if declared > limits.max_frames:
        raise VideoTooLarge(f"{declared} frames is over the limit of {limits.max_frames}", param="video")


FrameSampler = Callable[[int, float], list[int]]  # (total frames, video fps) -> the frame indices to keep


def decode_video(
    source: bytes | str | os.PathLike[str],
    num_frames: int = DEFAULT_NUM_FRAMES,
    limits: MediaLimits | None = None,
    *,
    sampler: FrameSampler | None = None,
) -> VideoFrames:
    """Decode `num_frames` frames sampled LiFT's way from a video given as bytes or a file path (or the frames
    `sampler` picks: another critic's rule, service.critics.spec.FrameRule).

    Raises InvalidVideo (not a video, broken, empty, an image), VideoTooLarge (over a limit) or
    MediaNotFound (no such file). Blocking: call it off the event loop.
    """
    limits = limits or MediaLimits()
    if sampler is None and num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise MediaNotFound(f"no video file at {str(path)!r}", param="video")
        size = path.stat().st_size
        data: bytes | str = str(path)
    else:
        size = len(source)
        data = bytes(source)
    if size == 0:
        raise InvalidVideo("the video is empty (0 bytes)", param="video")
    if size > limits.max_bytes:
        raise VideoTooLarge(f"video is {size} bytes, over the limit of {limits.max_bytes}", param="video")

    probe = _probe(data)
    _check_limits(probe, limits)

    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data) if isinstance(data, bytes) else data, ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
        if total > limits.max_frames:
            raise VideoTooLarge(f"{total} frames is over the limit of {limits.max_frames}", param="video")
        fps = float(reader.get_avg_fps() or probe.fps)
        indices = sampler(total, fps) if sampler is not None else sample_indices(total, num_frames)
        frames = reader.get_batch(indices).asnumpy()
    except decord.DECORDError as exc:
        raise InvalidVideo(f"the video could not be decoded: {str(exc).splitlines()[0][:200]}", param="video") from None
    except (RuntimeError, IndexError) as exc:  # decord raises these for truncated streams
        raise InvalidVideo(f"the video could not be decoded ({type(exc).__name__})", param="video") from None
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise InvalidVideo(f"decoder returned frames of unexpected shape {frames.shape}", param="video")
    duration = probe.duration_s or (total / fps if fps else 0.0)
    return VideoFrames(np.ascontiguousarray(frames, dtype=np.uint8), indices, total, fps, duration, probe.codec)


def frames_from_array(frames: np.ndarray, num_frames: int = DEFAULT_NUM_FRAMES, fps: float = 8.0, *,
                      sampler: FrameSampler | None = None) -> VideoFrames:
    """Already-decoded frames (T, H, W, 3) uint8 -> the same sampling as a decoded file."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InvalidVideo(f"frames must have shape (T, H, W, 3), got {arr.shape}")
    if arr.shape[0] < 1:
        raise InvalidVideo("video has no frames")
    indices = sampler(arr.shape[0], fps) if sampler is not None else sample_indices(arr.shape[0], num_frames)
    out = np.ascontiguousarray(arr[indices], dtype=np.uint8)
    return VideoFrames(out, indices, int(arr.shape[0]), fps, arr.shape[0] / fps)
