"""Frames as input (issue 19): .npy layouts, PNG/JPEG lists, limits checked on headers, no pickle."""

from __future__ import annotations

import io

import numpy as np
import pytest

from service.errors import InvalidVideo, VideoTooLarge
from service.frames import (
    is_npy,
    read_npy_header,
    video_from_images,
    videos_from_array,
    videos_from_npy,
)
from service.media import MediaLimits, sample_indices


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _png(frame: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=fmt)
    return buf.getvalue()


def _video(t: int = 16, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_single_video_is_sampled_like_a_file() -> None:
    v = _video()
    [out] = videos_from_npy(_npy(v), num_frames=8, fps=16)
    idx = sample_indices(16, 8)
    assert out.indices == idx and out.total_frames == 16 and out.fps == 16.0 and out.duration_s == 1.0
    np.testing.assert_array_equal(out.frames, v[idx])


@pytest.mark.parametrize("layout", ["BTHWC", "BCTHW"])
def test_batch_layouts_give_the_same_frames(layout: str) -> None:
    batch = np.stack([_video(seed=s) for s in range(3)])  # B,T,H,W,3
    arr = batch if layout == "BTHWC" else np.ascontiguousarray(batch.transpose(0, 4, 1, 2, 3))
    outs = videos_from_npy(_npy(arr), num_frames=8, batch=True)
    assert len(outs) == 3
    for b, out in enumerate(outs):
        np.testing.assert_array_equal(out.frames, batch[b][sample_indices(16, 8)])
        assert out.frames.flags.c_contiguous and out.frames.shape == (8, 24, 32, 3)


def test_short_video_repeats_frames_and_one_frame_is_repeated() -> None:
    [out] = videos_from_array(_video(t=1), num_frames=8)
    assert out.indices == [0] * 8


def test_pickle_and_object_arrays_are_refused_before_loading() -> None:
    obj = np.array([{"a": 1}, None], dtype=object)
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    with pytest.raises(InvalidVideo, match="pickle"):
        videos_from_npy(buf.getvalue())
    with pytest.raises(InvalidVideo, match="npy"):
        videos_from_npy(b"\x80\x04\x95 pickle bytes")


def test_header_lies_and_truncation_are_invalid() -> None:
    data = _npy(_video())
    with pytest.raises(InvalidVideo, match="truncated"):
        videos_from_npy(data[:-100])
    with pytest.raises(InvalidVideo, match="truncated"):
        videos_from_npy(data + b"\0")
    with pytest.raises(InvalidVideo):
        videos_from_npy(data[:12])
    bad = data.replace(b"'descr': '|u1'", b"'descr': 'XX'")
    with pytest.raises(InvalidVideo):
        videos_from_npy(bad)


def test_limits_are_checked_on_the_header_before_the_body() -> None:
    # A header declaring 100000 frames of 4096x4096 with a tiny body: refused as too large, not read.
    header = _npy(np.zeros((1, 1, 1, 3), np.uint8))
    fake = header.replace(b"(1, 1, 1, 3)", b"(9, 4096, 4096, 3)")
    with pytest.raises(VideoTooLarge, match="pixels"):
        videos_from_npy(fake, limits=MediaLimits(max_pixels=1024 * 1024))
    with pytest.raises(VideoTooLarge, match="frames"):
        videos_from_npy(_npy(_video(t=20)), limits=MediaLimits(max_frames=10))
    with pytest.raises(VideoTooLarge, match="over the limit of 2s"):
        videos_from_npy(_npy(_video(t=20)), fps=4, limits=MediaLimits(max_duration_s=2))
    with pytest.raises(VideoTooLarge, match="bytes"):
        videos_from_npy(_npy(_video()), max_bytes=1000)


def test_wrong_dtype_and_shape_say_what_is_expected() -> None:
    with pytest.raises(InvalidVideo, match="uint8"):
        videos_from_npy(_npy(_video().astype(np.float32)))
    with pytest.raises(InvalidVideo, match=r"\(T, H, W, 3\)"):
        videos_from_npy(_npy(np.zeros((4, 8, 8), np.uint8)))
    with pytest.raises(InvalidVideo, match=r"\(T, H, W, 3\)"):
        videos_from_npy(_npy(np.zeros((2, 4, 8, 8, 3), np.uint8)), batch=False)
    with pytest.raises(InvalidVideo, match="fps"):
        videos_from_npy(_npy(_video()), fps=0)


def test_header_parser_reads_shape_without_the_body() -> None:
    data = _npy(_video(t=5))
    h = read_npy_header(data)
    assert h.shape == (5, 24, 32, 3) and h.dtype == np.uint8 and is_npy(data)
    assert h.offset + h.nbytes == len(data)


def test_png_and_jpeg_lists_decode_only_sampled_frames() -> None:
    v = _video(t=12)
    pngs = [_png(f) for f in v]
    out = video_from_images(pngs, num_frames=4, fps=12)
    idx = sample_indices(12, 4)
    np.testing.assert_array_equal(out.frames, v[idx])
    assert out.total_frames == 12 and out.duration_s == 1.0
    # a broken frame that is NOT sampled is still caught by the header pass
    broken = list(pngs)
    broken[1] = b"not an image"
    with pytest.raises(InvalidVideo) as exc:
        video_from_images(broken, num_frames=4)
    assert exc.value.param == "video.frames.1"
    jpgs = [_png(f, "JPEG") for f in v]
    assert video_from_images(jpgs, num_frames=4).frames.shape == (4, 24, 32, 3)


def test_image_lists_refuse_mixed_sizes_other_formats_and_truncation() -> None:
    v = _video(t=4)
    other = _png(_video(t=1, h=10, w=10)[0])
    with pytest.raises(InvalidVideo, match="frame 0 is 32x24"):
        video_from_images([_png(v[0]), other])
    with pytest.raises(InvalidVideo, match="PNG or JPEG"):
        video_from_images([_png(v[0], "BMP")])
    truncated = _png(v[0])[:60]
    with pytest.raises(InvalidVideo):
        video_from_images([truncated], num_frames=2)
    with pytest.raises(InvalidVideo, match="empty"):
        video_from_images([])
    with pytest.raises(VideoTooLarge):
        video_from_images([_png(f) for f in v], limits=MediaLimits(max_frames=3))
