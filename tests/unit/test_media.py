"""Media: real files in real codecs decode to LiFT's sampled frames; bad or hostile input gets a typed error."""

import io
import os

import numpy as np
import pytest

from service.errors import InvalidVideo, MediaNotFound, VideoTooLarge
from service.media import MediaLimits, decode_video, frames_from_array, sample_indices
from service.synthetic_videos import moving_square, write_video


def test_sample_indices_follow_lifts_linspace():
    assert sample_indices(49, 8) == np.linspace(0, 48, 8, dtype=int).tolist() == [0, 6, 13, 20, 27, 34, 41, 48]
    assert sample_indices(8, 8) == list(range(8))


def test_short_videos_repeat_frames_to_always_give_n():
    # documented behaviour: a video shorter than N frames repeats frames (1 frame -> that frame N times)
    assert sample_indices(1, 8) == [0] * 8
    assert sample_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("codec", ["h264_mp4", "vp9_webm", "mpeg4_avi", "ffv1_mkv"])
def test_codecs_decode_to_sampled_frames(sample_videos, codec):
    video = decode_video(sample_videos[codec], num_frames=8)
    assert video.frames.shape == (8, 96, 128, 3) and video.frames.dtype == np.uint8
    assert video.total_frames == 16 and video.indices == sample_indices(16, 8)
    # the red square is really there: decoded pixels, not zeros
    assert video.frames[..., 0].max() > 150 and video.frames[..., 2].mean() < 80


def test_bytes_and_path_decode_identically(sample_videos):
    path = sample_videos["h264_mp4"]
    a, b = decode_video(path), decode_video(path.read_bytes())
    assert np.array_equal(a.frames, b.frames)


def test_real_world_footage(sample_videos):
    video = decode_video(sample_videos["real_bikes"], num_frames=8)
    assert video.codec == "h264" and video.frames.shape == (8, 272, 640, 3)
    assert video.total_frames == 250 and video.indices[-1] == 249
    assert video.frames.std() > 20  # real texture


def test_one_frame_video(tmp_path):
    path = write_video(tmp_path / "one", moving_square(num_frames=1))
    video = decode_video(path, num_frames=8)
    assert video.total_frames == 1 and video.num_frames == 8 and video.indices == [0] * 8
    assert all(np.array_equal(video.frames[0], f) for f in video.frames)


def test_truncated_file(sample_videos):
    data = sample_videos["h264_mp4"].read_bytes()
    with pytest.raises(InvalidVideo):
        decode_video(data[: len(data) // 3])


def test_random_bytes():
    with pytest.raises(InvalidVideo):
        decode_video(os.urandom(20000))


def test_zero_bytes(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for source in (b"", empty):
        with pytest.raises(InvalidVideo, match="empty"):
            decode_video(source)


def test_image_is_not_a_video():
    from PIL import Image

    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(moving_square(num_frames=1)[0]).save(buf, format=fmt)
        with pytest.raises(InvalidVideo, match="image"):
            decode_video(buf.getvalue())


def test_huge_declared_resolution_refused_before_decoding(tmp_path):
    # a real 5000x5000 H.264 file: refused from its header, never decoded
    frames = np.zeros((1, 5000, 5000, 3), dtype=np.uint8)
    path = write_video(tmp_path / "huge", frames)
    with pytest.raises(VideoTooLarge, match="5000x5000"):
        decode_video(path)


def test_limits_on_bytes_duration_and_frames(sample_videos):
    path = sample_videos["h264_mp4"]  # 16 frames at 8 fps = 2 s
    with pytest.raises(VideoTooLarge, match="bytes"):
        decode_video(path, limits=MediaLimits(max_bytes=100))
    with pytest.raises(VideoTooLarge, match="duration"):
        decode_video(path, limits=MediaLimits(max_duration_s=1.0))
    with pytest.raises(VideoTooLarge, match="frames"):
        decode_video(path, limits=MediaLimits(max_frames=10))


def test_missing_file(tmp_path):
    with pytest.raises(MediaNotFound):
        decode_video(tmp_path / "nope.mp4")


def test_frames_from_array_samples_the_same_way():
    arr = moving_square(num_frames=20)
    video = frames_from_array(arr, 8)
    assert video.indices == sample_indices(20, 8) and np.array_equal(video.frames[3], arr[video.indices[3]])
    with pytest.raises(InvalidVideo):
        frames_from_array(np.zeros((4, 8, 8)), 8)
