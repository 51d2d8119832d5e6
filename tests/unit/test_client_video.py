"""What the client accepts as a video, and frame arrays encoded to an mp4 that a real decoder reads back."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from clients.video import ServerPath, encode_frames, prepare_video
from service.errors import InvalidRequest, InvalidVideo, MediaNotFound


def test_kinds(tmp_path: Path) -> None:
    f = tmp_path / "a.mp4"
    f.write_bytes(b"abc")
    assert prepare_video(f).data == b"abc" and prepare_video(f).filename == "a.mp4"
    assert prepare_video(str(f)).kind == "bytes"
    assert prepare_video(f"file://{f}").data == b"abc"
    assert prepare_video(b"xyz").json_source() == {"base64": base64.b64encode(b"xyz").decode()}
    assert prepare_video("HTTPS://h/v.mp4").json_source() == {"url": "HTTPS://h/v.mp4"}
    assert prepare_video(ServerPath("d/v.mp4")).json_source() == {"path": "d/v.mp4"}
    with pytest.raises(MediaNotFound, match="not found"):
        prepare_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaNotFound, match="directory"):
        prepare_video(tmp_path)
    with pytest.raises(InvalidVideo):
        prepare_video(b"")
    with pytest.raises(InvalidRequest):
        prepare_video(3.5)


@pytest.mark.parametrize("backend", ["imageio", "av"])
def test_arrays_encode_to_decodable_mp4(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    if backend == "av":  # force the fallback path
        import clients.video as cv

        def no_imageio(arr, fps):  # noqa: ANN001, ANN202
            raise ImportError("imageio_ffmpeg")

        monkeypatch.setattr(cv, "_encode_imageio", no_imageio)
    rng = np.random.default_rng(0)
    frames = np.zeros((6, 33, 47, 3), dtype=np.float32)  # odd sides, floats in [0, 1]
    frames[:, :, :, 0] = 1.0
    frames[3:, :, :, 2] = rng.uniform(0.4, 0.6, size=(3, 33, 47))
    data = prepare_video(frames).data
    assert data is not None and data[4:8] == b"ftyp"
    import io

    with av.open(io.BytesIO(data)) as c:
        decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    assert len(decoded) == 6
    assert decoded[0].shape == (34, 48, 3)  # padded to even sides, not resized
    assert decoded[0][..., 0].mean() > 230 and decoded[0][..., 2].mean() < 25


def test_bad_array_shapes() -> None:
    with pytest.raises(InvalidVideo, match=r"\(T, H, W, 3\)"):
        encode_frames(np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(InvalidVideo):
        encode_frames(np.zeros((0, 8, 8, 3), dtype=np.uint8))
