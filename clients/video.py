"""What a caller may pass as a video, and how each kind travels to the service.

- a local file (str or PathLike): its bytes are uploaded (multipart, or base64 in JSON)
- `bytes`: uploaded as they are
- an http(s) URL (str): sent as `video.url`, the server downloads it
- `ServerPath("clips/a.mp4")`: a file on the server under its LIFT_MEDIA_ROOT, sent as `video.path`
- a numpy uint8 array (T, H, W, 3): encoded to mp4 here (imageio-ffmpeg or PyAV, imported lazily)

numpy is never imported unless the caller hands us an array (the caller already has it then).
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from service.errors import InvalidRequest, InvalidVideo, MediaNotFound


class ServerPath(str):
    """A path on the scoring server (under its media root), not on this machine."""

    __slots__ = ()


VideoInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, ServerPath, Any]


@dataclass(frozen=True)
class PreparedVideo:
    kind: Literal["bytes", "url", "path"]
    data: bytes | None = None
    ref: str | None = None  # URL or server path
    filename: str = "video.mp4"

    def json_source(self) -> dict[str, str]:
        """The `video` object of a JSON score request."""
        if self.kind == "bytes":
            assert self.data is not None
            return {"base64": base64.b64encode(self.data).decode("ascii")}
        assert self.ref is not None
        return {self.kind: self.ref}


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "shape") and hasattr(value, "dtype")


def read_local(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise MediaNotFound(f"video file not found: {p}", param="video") from None
    except IsADirectoryError:
        raise MediaNotFound(f"video path is a directory, not a file: {p}", param="video") from None
    except PermissionError:
        raise MediaNotFound(f"video file not readable (permission denied): {p}", param="video") from None


def prepare_video(video: VideoInput) -> PreparedVideo:
    """Classify `video` and load what must be uploaded. Reads files; may encode arrays (slow)."""
    if isinstance(video, ServerPath):
        return PreparedVideo("path", ref=str(video))
    if isinstance(video, (bytes, bytearray, memoryview)):
        data = bytes(video)
        if not data:
            raise InvalidVideo("video bytes are empty", param="video")
        return PreparedVideo("bytes", data=data)
    if isinstance(video, str) and is_url(video):
        return PreparedVideo("url", ref=video)
    if isinstance(video, str) and video.startswith("file://"):
        video = video[len("file://") :]
    if isinstance(video, (str, os.PathLike)):
        if isinstance(video, str) and not video:
            raise InvalidRequest("video path is empty", param="video")
        return PreparedVideo("bytes", data=read_local(video), filename=Path(video).name or "video.mp4")
    if _is_array(video):
        return PreparedVideo("bytes", data=encode_frames(video))
    raise InvalidRequest(
        f"unsupported video type {type(video).__name__}: give a path, bytes, an http(s) URL, "
        "ServerPath or a uint8 array (T,H,W,3)",
        param="video",
    )


def encode_frames(frames: Any, fps: int = 8) -> bytes:
    """(T, H, W, 3) frames -> H.264 mp4 bytes. uint8, or float in [0, 1]."""
    import numpy as np  # the caller handed us an array, so numpy is there

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise InvalidVideo(f"frames must be (T, H, W, 3), got shape {tuple(arr.shape)}", param="video")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    # yuv420p needs even sides: pad by repeating the edge rather than resizing (keeps pixels exact).
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    arr = np.ascontiguousarray(arr)
    try:
        return _encode_imageio(arr, fps)
    except ImportError:
        pass
    try:
        return _encode_av(arr, fps)
    except ImportError:
        raise InvalidRequest(
            "encoding frame arrays needs imageio-ffmpeg or av (pip install imageio-ffmpeg); "
            "or pass a path or mp4 bytes instead",
            param="video",
        ) from None


def _encode_imageio(arr: Any, fps: int) -> bytes:
    import imageio_ffmpeg

    t, h, w, _ = arr.shape
    with tempfile.TemporaryDirectory(prefix="lift-enc-") as tmp:
        out = os.path.join(tmp, "v.mp4")
        writer = imageio_ffmpeg.write_frames(
            out, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
            ffmpeg_log_level="error", output_params=["-crf", "18"],
        )
        writer.send(None)
        for frame in arr:
            writer.send(frame)
        writer.close()
        return Path(out).read_bytes()


def _encode_av(arr: Any, fps: int) -> bytes:
    import io

    import av

    t, h, w, _ = arr.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
