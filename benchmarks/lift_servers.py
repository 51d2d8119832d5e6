"""`lift serve` replicas as subprocesses for benchmarks: start, wait for /ready, stop (SIGTERM, then SIGKILL).

A replica never outlives the benchmark: stopped on the way out (the benchmark turns SIGTERM into an unwind,
clients.processes.exit_on_sigterm), and sent SIGTERM by the kernel if the benchmark dies any other way."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from clients.processes import die_with_parent

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], log: Path, *, path: str = "/ready",
                     deadline: float) -> None:
    """Poll `url + path` until 200; fail at once if the server exits, or at `deadline` (time.monotonic())."""
    import httpx

    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server {url} exited {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in time; see {log}")
        time.sleep(0.5)


def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all (they drain in parallel), then SIGKILL to the process group of any still there after 60 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@contextlib.contextmanager
def lift_serve(model: Path, *, engine: str, log_dir: Path, replicas: int = 1, env: Mapping[str, str] | None = None,
               bind_cores: bool = False, ready_timeout_s: float = 600) -> Iterator[list[str]]:
    """Start `replicas` servers of `model` (logs in log_dir/replica{i}.log) and yield their base URLs once all
    are ready. bind_cores pins replica i's vLLM workers to core i (VLLM_CPU_OMP_THREADS_BIND) when there are
    enough cores, so replicas on a small CPU do not fight over the same one."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    ncpu = os.cpu_count() or 1
    try:
        for i in range(replicas):
            port = free_port()
            proc_env = {**os.environ, **(env or {})}
            if bind_cores and ncpu >= replicas:
                proc_env["VLLM_CPU_OMP_THREADS_BIND"] = str(i % ncpu)
            with open(log_dir / f"replica{i}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "clients.cli", "serve", "--model", str(model), "--engine", engine,
                     "--host", "127.0.0.1", "--port", str(port)],
                    cwd=REPO, env=proc_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent))  # killed benchmark (even SIGKILL) -> SIGTERM to its servers
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + ready_timeout_s
        for i, (url, proc) in enumerate(zip(urls, procs)):
            wait_until_ready(url, proc, log_dir / f"replica{i}.log", deadline=deadline)
        yield urls
    finally:
        stop_servers(procs)
