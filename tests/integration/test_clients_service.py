"""The client against the real service (FastAPI over a real socket, the session's vLLM engine on the tiny
critic, real video files): every video kind, batch, typed errors from real failures, auth, reward_fn."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clients import AsyncRewardClient, RewardClient, ServerPath, reward_fn
from service.errors import (
    ForbiddenMediaSource,
    InvalidVideo,
    LiftError,
    MediaNotFound,
    Unauthorized,
    VideoTooLarge,
)
from service.protocol import ScoreResponse

pytestmark = pytest.mark.vllm
FAST = {"max_reason_tokens": 4}  # the rationale is not what these tests check; keep the CPU free


def _check(resp: ScoreResponse, frames: int = 8) -> None:
    assert set(resp.dimensions) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
    assert resp.num_frames == frames
    assert resp.reward == pytest.approx(sum(d.score for d in resp.dimensions.values()) / 3)
    assert 0.05 <= resp.reward <= 0.9


def test_every_video_kind_scores(live_server: str, sample_videos: dict[str, Path]) -> None:
    mp4 = sample_videos["h264_mp4"]
    with RewardClient(live_server) as c:
        by_path = c.score(mp4, "a red square moving right", options=FAST)
        by_bytes = c.score(mp4.read_bytes(), "a red square moving right", options=FAST)
        on_server = c.score(ServerPath("h264_mp4.mp4"), "a red square moving right", options=FAST)
        webm = c.score(str(sample_videos["vp9_webm"]), "a red square", options={**FAST, "num_frames": 4})
        assert c.ready() and c.health()
        assert c.models().data[0].num_frames == 8
    for r in (by_path, by_bytes, on_server):
        _check(r)
    _check(webm, frames=4)
    # Same video, same prompt, greedy: the same labels however the video travelled.
    assert by_path.dimensions == by_bytes.dimensions == on_server.dimensions


def test_real_failures_are_typed(live_server: str, tmp_path: Path) -> None:
    with RewardClient(live_server) as c:
        with pytest.raises(InvalidVideo) as info:
            c.score(b"definitely not a video" * 50, "x")
        assert info.value.status_code == 422
        with pytest.raises(MediaNotFound):
            c.score(ServerPath("no_such_clip.mp4"), "x")
        with pytest.raises(ForbiddenMediaSource):
            c.score(ServerPath("escape.mp4"), "x")  # a symlink out of the media root
        with pytest.raises(ForbiddenMediaSource):
            c.score("http://127.0.0.1:9/v.mp4", "x")  # private address, refused by the server
        with pytest.raises(VideoTooLarge) as big:
            c.score(b"\x00" * (3 * 1024 * 1024), "x")  # the live server's limit is 2 MiB
        assert big.value.status_code == 413


def test_batch_keeps_order_and_isolates_a_bad_item(live_server: str, sample_videos: dict[str, Path]) -> None:
    good = sample_videos["h264_mp4"]
    with RewardClient(live_server) as c:
        out = c.score_batch([good, b"garbage" * 20, sample_videos["mpeg4_avi"]], ["a", "b", "c"],
                            options=FAST, return_exceptions=True)
    assert isinstance(out[0], ScoreResponse) and isinstance(out[2], ScoreResponse)
    assert isinstance(out[1], InvalidVideo)


def test_auth(serve_app: Callable[..., contextlib.AbstractContextManager[str]], sample_videos: dict[str, Path]) -> None:
    with serve_app(api_keys="k1,k2") as url:
        with RewardClient(url) as c, pytest.raises(Unauthorized):
            c.score(sample_videos["h264_mp4"], "x", options=FAST)
        with RewardClient(url, api_key="k2") as c:
            _check(c.score(sample_videos["h264_mp4"], "x", options=FAST))


async def test_async_client_and_reward_fn_with_arrays(live_server: str, sample_videos: dict[str, Path]) -> None:
    async with AsyncRewardClient([live_server, live_server]) as c:
        import asyncio

        rs = await asyncio.gather(*(c.score(sample_videos["h264_mp4"], f"prompt {i}", options=FAST) for i in range(4)))
    for r in rs:
        _check(r)
    from service.synthetic_videos import moving_square

    frames = moving_square(num_frames=9, height=48, width=64, colour="blue")
    with reward_fn(live_server, reward="expected_reward", options=FAST) as fn:
        r = fn([frames, sample_videos["h264_mp4"]], ["a blue square", "a red square"])
    assert len(r) == 2 and all(isinstance(x, float) and 0.05 <= x <= 0.9 for x in r)
    with reward_fn(live_server, options=FAST, allow_failures=True) as fn:
        r2 = fn([np.zeros((2, 8, 8, 3), np.uint8) + 255, b"junk" * 30], ["a", "b"])
    assert r2[1] is None and isinstance(fn.last_errors[1], LiftError)

