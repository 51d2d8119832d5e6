"""Servers for HTTP tests: in-process apps on the shared engine, and `lift serve` subprocesses.

- `live_server`: base URL of an app (default test settings) served by uvicorn *inside*
  `critic_runtime.loop`, the event loop where the session's one vLLM Critic lives, on a free port.
- `serve_app`: a context manager factory for more apps on the same engine with other settings
  (auth on, tiny queue, private URLs allowed, ...): `with serve_app(api_keys="k") as url: ...`.
- `spawn_server`: a context manager factory that starts `lift serve` as a subprocess on a free port and
  (by default) waits for /ready: `with spawn_server(model_dir, engine="transformers") as srv: srv.url`.
  It stops the server with SIGTERM on exit (and kills its process group if it does not go).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- in-process apps on the shared engine ---------------------------------------------------------
@contextlib.contextmanager
def serve_in_runtime(runtime: Any, **overrides: Any) -> Iterator[str]:
    """Serve `create_app(settings, runtime.critic)` with uvicorn on the runtime's event loop."""
    from service.app import create_app
    from service.app.server import GracefulServer, uvicorn_config
    from service.app.settings import ServiceSettings

    settings = ServiceSettings(**{"host": "127.0.0.1", **overrides})
    app = create_app(settings, runtime.critic)
    port = free_port()
    server = GracefulServer(uvicorn_config(app, settings, port=port))
    future = asyncio.run_coroutine_threadsafe(server.serve(), runtime.loop)
    deadline = time.monotonic() + 30
    while not server.started:
        if future.done():
            future.result()  # raises the startup error
            raise RuntimeError("server exited during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        future.result(timeout=60)


@pytest.fixture(scope="session")
def live_media_root(tmp_path_factory: pytest.TempPathFactory, sample_videos: dict[str, Path]) -> Path:
    """The test servers' LIFT_MEDIA_ROOT, holding copies of the sample videos (and a symlink escape)."""
    root = tmp_path_factory.mktemp("media_root")
    for name, path in sample_videos.items():
        shutil.copy(path, root / f"{name}{path.suffix}")
    outside = root.parent / "outside_secret.mp4"
    shutil.copy(next(iter(sample_videos.values())), outside)
    (root / "escape.mp4").symlink_to(outside)
    return root


LIVE_DEFAULTS: dict[str, Any] = {"max_video_bytes": 2 * 1024 * 1024, "request_timeout_s": 60.0}


@pytest.fixture(scope="session")
def serve_app(critic_runtime: Any, live_media_root: Path) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """Factory: `with serve_app(**settings) as base_url:` another app on the shared engine."""

    def factory(**overrides: Any) -> contextlib.AbstractContextManager[str]:
        return serve_in_runtime(critic_runtime, **{"media_root": live_media_root, **LIVE_DEFAULTS, **overrides})

    return factory


@pytest.fixture(scope="session")
def live_server(serve_app: Callable[..., contextlib.AbstractContextManager[str]]) -> Iterator[str]:
    """Base URL of the session's default app: auth off, media root on, 2 MiB videos, private URLs off."""
    with serve_app() as url:
        yield url


# ---- `lift serve` subprocesses -------------------------------------------------------------------
@dataclass
class SpawnedServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __str__(self) -> str:
        return self.url


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
            try:
                if client.get(f"{url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: engine children go too
            return proc.wait(timeout=30)
    return int(proc.returncode)


@contextlib.contextmanager
def spawn_server(
    model_dir: str | Path | None,
    engine: str = "transformers",
    env: dict[str, str] | None = None,
    *,
    args: tuple[str, ...] = (),
    wait: bool = True,
    ready_timeout_s: float = 240.0,
    log_dir: Path | None = None,
) -> Iterator[SpawnedServer]:
    """Start `lift serve --model DIR --engine ENGINE` on a free port; yield once /ready is 200.

    `model_dir=None` leaves --model out (for `args=("--demo",)` or LIFT_MODEL in `env`).
    """
    port = free_port()
    log_dir = log_dir or Path(os.environ.get("PYTEST_TMPDIR", "/tmp"))
    log_path = log_dir / f"lift-serve-{port}.log"
    model_args = ["--model", str(model_dir)] if model_dir is not None else []
    cmd = [sys.executable, "-m", "clients.cli", "serve", *model_args, "--engine", engine,
           "--host", "127.0.0.1", "--port", str(port), *args]
    full_env = {**os.environ, **SERVER_ENV, **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = SpawnedServer(f"http://127.0.0.1:{port}", port, proc, log_path)
    try:
        if wait:
            try:
                wait_ready(server.url, proc, ready_timeout_s)
            except Exception as exc:
                raise RuntimeError(f"{exc}\n--- server log ---\n{server.log()[-4000:]}") from exc
        yield server
    finally:
        stop_server(proc)


@pytest.fixture(scope="session", name="spawn_server")
def spawn_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., contextlib.AbstractContextManager[SpawnedServer]]:
    log_dir = tmp_path_factory.mktemp("server_logs")

    def factory(model_dir: str | Path | None, engine: str = "transformers", env: dict[str, str] | None = None, **kw: Any) -> contextlib.AbstractContextManager[SpawnedServer]:
        kw.setdefault("log_dir", log_dir)
        return spawn_server(model_dir, engine, env, **kw)

    return factory
