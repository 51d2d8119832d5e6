"""Frames a trainer already holds -> the same sampled `VideoFrames` a decoded file gives.

Two encodings, both without pickle and with every size checked before anything is decoded:
- `.npy` (numpy's own format, read with `allow_pickle=False`): uint8 `(T, H, W, 3)` for one video, or a batch
  `(B, T, H, W, 3)` / `(B, 3, T, H, W)`. The header (shape, dtype) is parsed first; limits (pixels per frame,
  frame count, duration at the given fps, bytes) are checked on it; the body must be exactly as long as the
  header says. Only the sampled frames are copied out.
- a list of PNG / JPEG images, one per frame: every image's header is read (format, size, all frames the same
  size), and only the sampled frames are decoded.

Sampling is LiFT's `linspace(0, T-1, N)` (`service.media.sample_indices`), the same as for files, and a broken
input is `InvalidVideo` / `VideoTooLarge` with a `param` naming the field (and the frame, for image lists).
"""

from __future__ import annotations

import ast
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidVideo, VideoTooLarge
from service.media import FrameSampler, MediaLimits, VideoFrames, sample_indices
from service.rubric import DEFAULT_NUM_FRAMES

NPY_MAGIC = b"\x93NUMPY"
DEFAULT_FPS = 8.0
MAX_FPS = 240.0
_MAX_HEADER_BYTES = 64 * 1024  # numpy writes a few hundred bytes; anything longer is not an honest header
_IMAGE_FORMATS = {"PNG", "JPEG"}


def is_npy(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[: len(NPY_MAGIC)]) == NPY_MAGIC


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # where the array's bytes start

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_npy_header(data: bytes, *, param: str = "video") -> NpyHeader:
    """Parse an .npy header without touching the body. Object dtypes (pickle) are refused here."""
    if not is_npy(data):
        raise InvalidVideo("not an .npy array (no \\x93NUMPY magic)", param=param)
    if len(data) < 10:
        raise InvalidVideo("the .npy header is truncated", param=param)
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise InvalidVideo("the .npy header is truncated", param=param)
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise InvalidVideo(f"unknown .npy format version {major}", param=param)
    if hlen > _MAX_HEADER_BYTES or start + hlen > len(data):
        raise InvalidVideo("the .npy header is truncated or oversized", param=param)
    try:
        text = data[start : start + hlen].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)  # numpy's own reader does the same: a literal dict, nothing executed
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise InvalidVideo("the .npy header is not a valid header dict", param=param) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise InvalidVideo("the .npy header must hold exactly descr, fortran_order and shape", param=param)
    shape, descr, fortran = header["shape"], header["descr"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidVideo(f"the .npy shape {shape!r} is not a tuple of sizes", param=param)
    if not isinstance(descr, str) or not isinstance(fortran, bool):
        raise InvalidVideo("the .npy dtype must be a plain type (structured and object arrays are refused)", param=param)
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise InvalidVideo(f"the .npy dtype {descr!r} is not understood", param=param) from None
    if dtype.hasobject:
        raise InvalidVideo("object arrays (pickle) are refused; send uint8 frames", param=param)
    return NpyHeader(tuple(shape), dtype, fortran, start + hlen)


def load_npy(data: bytes, header: NpyHeader, *, param: str = "video") -> np.ndarray:
    """The array, after its header was checked: the body must be exactly the declared size."""
    body = len(data) - header.offset
    if body != header.nbytes:
        raise InvalidVideo(f"the .npy body is {body} bytes but its header declares {header.nbytes} "
                           f"({header.shape} {header.dtype}); truncated?", param=param)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidVideo(f"the .npy array could not be read: {exc}", param=param) from None


# ---- layouts ---------------------------------------------------------------------------------------
Layout = str  # "THWC" | "BTHWC" | "BCTHW"


def frame_layout(shape: tuple[int, ...], *, batch: bool | None, param: str = "video") -> Layout:
    """Which of the accepted layouts `shape` is. `batch=None`: either; True/False: only batches / single videos."""
    if len(shape) == 4 and shape[-1] == 3 and batch is not True:
        return "THWC"
    if len(shape) == 5 and batch is not False:
        if shape[-1] == 3:
            return "BTHWC"
        if shape[1] == 3:
            return "BCTHW"
    want = {None: "(T, H, W, 3), (B, T, H, W, 3) or (B, 3, T, H, W)", False: "(T, H, W, 3)",
            True: "(B, T, H, W, 3) or (B, 3, T, H, W)"}[batch]
    raise InvalidVideo(f"frames must have shape {want}, got {shape}", param=param)


def _dims(shape: tuple[int, ...], layout: Layout) -> tuple[int, int, int, int]:
    """(B, T, H, W) of a shape in `layout`."""
    if layout == "THWC":
        return 1, shape[0], shape[1], shape[2]
    if layout == "BTHWC":
        return shape[0], shape[1], shape[2], shape[3]
    return shape[0], shape[2], shape[3], shape[4]


def check_frame_limits(t: int, h: int, w: int, fps: float, limits: MediaLimits, *, param: str = "video") -> None:
    if t < 1:
        raise InvalidVideo("the video has no frames", param=param)
    if h < 1 or w < 1:
        raise InvalidVideo(f"frames of size {w}x{h} hold no pixels", param=param)
    if h * w > limits.max_pixels:
        raise VideoTooLarge(f"frame size {w}x{h} is over the limit of {limits.max_pixels} pixels", param=param)
    if t > limits.max_frames:
        raise VideoTooLarge(f"{t} frames is over the limit of {limits.max_frames}", param=param)
    if t / fps > limits.max_duration_s:
        raise VideoTooLarge(f"{t} frames at {fps:g} fps is {t / fps:.1f}s, over the limit of "
                            f"{limits.max_duration_s:.0f}s", param=param)


def check_fps(fps: float | None, *, param: str = "video.fps") -> float:
    if fps is None:
        return DEFAULT_FPS
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise InvalidVideo(f"fps must be a number, not {fps!r}", param=param) from None
    if not 0 < value <= MAX_FPS or value != value:
        raise InvalidVideo(f"fps must be in (0, {MAX_FPS:g}], got {fps!r}", param=param)
    return value


def _sampled(video: np.ndarray, channels_first: bool, n: int, fps: float,
             sampler: FrameSampler | None = None) -> VideoFrames:
    """One video (T, H, W, 3) or (3, T, H, W) -> its N sampled frames, copied out as (N, H, W, 3) uint8."""
    total = video.shape[1] if channels_first else video.shape[0]
    idx = _indices(total, n, fps, sampler)
    picked = video[:, idx].transpose(1, 2, 3, 0) if channels_first else video[idx]
    return _marked(VideoFrames(np.ascontiguousarray(picked, dtype=np.uint8), idx, total, fps, total / fps,
                               codec="npy"), sampler)


def _indices(total: int, n: int, fps: float, sampler: FrameSampler | None) -> list[int]:
    if total < 1:
        raise InvalidVideo("video has no frames")
    return sampler(total, fps) if sampler is not None else sample_indices(total, n)


def _marked(video: VideoFrames, sampler: FrameSampler | None) -> VideoFrames:
    # frames a critic's own rule picked (service.critics.spec.FrameRule): the critic does not sample them again
    if sampler is not None:
        video.extra["sampled_by"] = getattr(sampler, "rule", "critic")
    return video


def videos_from_array(arr: np.ndarray, *, num_frames: int = DEFAULT_NUM_FRAMES, fps: float | None = None,
                      limits: MediaLimits | None = None, batch: bool | None = None,
                      param: str = "video", fps_param: str = "video.fps",
                      sampler: FrameSampler | None = None) -> list[VideoFrames]:
    """uint8 frames in any accepted layout -> one sampled `VideoFrames` per video (a batch gives B)."""
    limits = limits or MediaLimits()
    fps_value = check_fps(fps, param=fps_param)
    layout = frame_layout(tuple(arr.shape), batch=batch, param=param)
    if arr.dtype != np.uint8:
        raise InvalidVideo(f"frames must be uint8 (0..255), got {arr.dtype}", param=param)
    b, t, h, w = _dims(tuple(arr.shape), layout)
    if b < 1:
        raise InvalidVideo("the batch holds no videos", param=param)
    check_frame_limits(t, h, w, fps_value, limits, param=param)
    if layout == "THWC":
        return [_sampled(arr, False, num_frames, fps_value, sampler)]
    return [_sampled(arr[i], layout == "BCTHW", num_frames, fps_value, sampler) for i in range(b)]


def videos_from_npy(data: bytes, *, num_frames: int = DEFAULT_NUM_FRAMES, fps: float | None = None,
                    limits: MediaLimits | None = None, max_bytes: int | None = None, batch: bool | None = None,
                    param: str = "video", fps_param: str = "video.fps",
                    sampler: FrameSampler | None = None) -> list[VideoFrames]:
    """`.npy` bytes of uint8 frames -> sampled videos. Everything is checked on the header first."""
    limits = limits or MediaLimits()
    cap = max_bytes if max_bytes is not None else limits.max_bytes
    if len(data) > cap:
        raise VideoTooLarge(f".npy frames are {len(data)} bytes, over the limit of {cap}", param=param)
    header = read_npy_header(data, param=param)
    layout = frame_layout(header.shape, batch=batch, param=param)
    if header.dtype != np.uint8:
        raise InvalidVideo(f"frames must be uint8 (0..255), got {header.dtype}", param=param)
    _, t, h, w = _dims(header.shape, layout)
    check_frame_limits(t, h, w, check_fps(fps, param=fps_param), limits, param=param)
    return videos_from_array(load_npy(data, header, param=param), num_frames=num_frames, fps=fps, limits=limits,
                             batch=batch, param=param, fps_param=fps_param, sampler=sampler)


def video_from_images(images: Sequence[bytes], *, num_frames: int = DEFAULT_NUM_FRAMES, fps: float | None = None,
                      limits: MediaLimits | None = None, max_bytes: int | None = None,
                      param: str = "video.frames", fps_param: str = "video.fps",
                      sampler: FrameSampler | None = None) -> VideoFrames:
    """PNG / JPEG images, one per frame -> the sampled video. Headers of all, pixels of the sampled only."""
    from PIL import Image

    limits = limits or MediaLimits()
    fps_value = check_fps(fps, param=fps_param)
    if not images:
        raise InvalidVideo("the frame list is empty", param=param)
    if len(images) > limits.max_frames:
        raise VideoTooLarge(f"{len(images)} frames is over the limit of {limits.max_frames}", param=param)
    total_bytes = sum(len(b) for b in images)
    cap = max_bytes if max_bytes is not None else limits.max_bytes
    if total_bytes > cap:
        raise VideoTooLarge(f"the frames are {total_bytes} bytes, over the limit of {cap}", param=param)
    size: tuple[int, int] | None = None
    for i, data in enumerate(images):
        where = f"{param}.{i}"
        if not data:
            raise InvalidVideo(f"frame {i} is empty (0 bytes)", param=where)
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                fmt, this = im.format, im.size
        except Exception:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, EOFError, bombs) for bad input
            raise InvalidVideo(f"frame {i} is not a PNG or JPEG image", param=where) from None
        if fmt not in _IMAGE_FORMATS:
            raise InvalidVideo(f"frame {i} is {fmt}; frames must be PNG or JPEG", param=where)
        if size is None:
            size = this
            check_frame_limits(len(images), this[1], this[0], fps_value, limits, param=param)
        elif this != size:
            raise InvalidVideo(f"frame {i} is {this[0]}x{this[1]} but frame 0 is {size[0]}x{size[1]}", param=where)
    idx = _indices(len(images), num_frames, fps_value, sampler)
    decoded: dict[int, np.ndarray] = {}
    for i in sorted(set(idx)):
        try:
            with Image.open(io.BytesIO(images[i])) as im:
                decoded[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Exception:  # noqa: BLE001 - a truncated body passes the header check; any decode failure is the input's
            raise InvalidVideo(f"frame {i} could not be decoded (truncated or corrupt)", param=f"{param}.{i}") from None
    frames = np.stack([decoded[i] for i in idx])
    return _marked(VideoFrames(frames, idx, len(images), fps_value, len(images) / fps_value, codec="images"), sampler)


def b64_bytes(text: str, max_bytes: int, *, param: str) -> bytes:
    """Base64 (standard or url-safe, a data: URL tolerated) -> bytes, the size capped before decoding."""
    import base64
    import binascii

    data = text.partition(",")[2] if text.startswith("data:") else text
    if len(data) // 4 * 3 > max_bytes + 3:
        raise VideoTooLarge(f"{param} is over the limit of {max_bytes} bytes", param=param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            raise InvalidVideo(f"{param} is not valid base64", param=param) from None
    if not raw:
        raise InvalidVideo(f"{param} is empty", param=param)
    if len(raw) > max_bytes:
        raise VideoTooLarge(f"{param} is {len(raw)} bytes, over the limit of {max_bytes}", param=param)
    return raw
