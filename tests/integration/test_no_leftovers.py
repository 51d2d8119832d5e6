"""Nothing left behind: whoever owns a vLLM engine takes it along when it dies, SIGKILL included.

Each case starts the real thing (a `lift serve` replica, `lift score --model`, a Python process holding a
`Critic`, a benchmark), kills it as an OOM killer or a node agent would, and checks that every engine process it
had is gone within 15 s (service/engines/lifeline.py). The session's leak check (tests/conftest.py) watches too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.engines.lifeline import engine_processes, is_descendant, leftover_engine_processes
from tests.integration.conftest import REPO, SERVER_ENV, free_port, wait_ready

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
GONE_WITHIN_S = 15.0
LIFT = [sys.executable, "-m", "clients.cli"]


def engines_under(pid: int) -> set[int]:
    return {p.pid for p in engine_processes() if is_descendant(p.pid, pid)}


def wait_for_engines(pid: int, proc: subprocess.Popen, timeout_s: float = 240.0, count: int = 2) -> set[int]:
    """The engine processes (EngineCore + Worker) that `pid` started, once they are all there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode} before its engine started"
        if len(found := engines_under(pid)) >= count:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"no engine processes under pid {pid} after {timeout_s:.0f}s")


def assert_gone(pids: set[int], within_s: float = GONE_WITHIN_S) -> float:
    """Seconds until none of `pids` is alive; fails if some still are after `within_s`."""
    t0 = time.monotonic()
    alive = set(pids)
    while alive and time.monotonic() - t0 < within_s:
        time.sleep(0.2)
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and _not_zombie(pid)}
    assert not alive, f"engine processes {sorted(alive)} still alive {within_s:.0f}s after their owner died"
    return time.monotonic() - t0


def _not_zombie(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def start_serve(model_dir: Path, port: int, log: Path, env: dict[str, str] | None = None,
                engine: str = "vllm") -> subprocess.Popen:
    cmd = [*LIFT, "serve", "--model", str(model_dir), "--engine", engine, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **SERVER_ENV, **(env or {})}, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def in_the_engine(url: str) -> float:
    """Scoring calls the replica holds now (in the engine or waiting for a slot), from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(("lift_inflight_requests ", "lift_queued_requests ")))


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_serve_sigkilled_idle_then_under_load_leaves_nothing_and_the_port_serves_again(tiny_critic_dir, tmp_path,
                                                                                        sample_videos):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with reaped(start_serve(tiny_critic_dir, port, tmp_path / "first.log")) as first:
        wait_ready(url, first)
        engines = wait_for_engines(first.pid, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert_gone(engines)

    # a new replica on the same port starts (nothing holds the port or the memory), then dies under load
    with reaped(start_serve(tiny_critic_dir, port, tmp_path / "second.log")) as second:
        wait_ready(url, second)
        engines = wait_for_engines(second.pid, second)
        video = sample_videos["h264_mp4"].read_bytes()
        outcomes: list[str] = []

        def score_until_the_server_dies() -> None:
            # each client keeps one request in flight until the server is gone, so the kill always lands under load
            while True:
                try:
                    r = httpx.post(f"{url}/v1/score", files={"video": ("v.mp4", video, "video/mp4")},
                                   data={"prompt": "a red square"}, timeout=60)
                    outcomes.append(str(r.status_code))
                except httpx.TransportError as exc:  # the server died under the request: what a client sees
                    outcomes.append(type(exc).__name__)
                    return

        threads = [threading.Thread(target=score_until_the_server_dies) for _ in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while not outcomes and time.monotonic() < deadline:  # scoring is under way: a first answer came back
            time.sleep(0.05)
        assert outcomes, "no request was answered before the kill"
        deadline = time.monotonic() + 60
        while (held := in_the_engine(url)) < 6 and time.monotonic() < deadline:  # and the next ones are in the engine
            time.sleep(0.02)
        assert held >= 6, f"only {held:.0f} requests in the replica; the kill would not land under load"
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=10)
        for t in threads:
            t.join(timeout=70)
        assert_gone(engines)
        assert "200" in outcomes, outcomes  # it was scoring before the kill
        failures = [o for o in outcomes if o != "200"]
        # every client's last request failed with the server, and some were in flight (not refused connections)
        assert len(failures) == 12 and any(o != "ConnectError" for o in failures), outcomes


def _run_until(cmd: list[str], marker: str, log: Path, timeout_s: float = 240.0,
               env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` (stderr to `log`) and return once `marker` appears in its stderr."""
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **SERVER_ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=fh, start_new_session=True)
    fh.close()
    deadline = time.monotonic() + timeout_s
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{marker!r} never came (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


# `lift -v` logs vLLM's INFO lines; this one comes when the engine is up, about a second before the command
# starts scoring (which then takes ~3 s on the tiny critic here)
ENGINE_UP = "init engine (profile, create kv cache, warmup model) took"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_lift_score_killed_mid_score_takes_its_engine_along(tiny_critic_dir, sample_videos, tmp_path, how):
    cmd = [*LIFT, "-v", "score", str(sample_videos["h264_mp4"]), "--prompt", "a red square", "--model",
           str(tiny_critic_dir), "--engine", "vllm"]
    with reaped(_run_until(cmd, ENGINE_UP, tmp_path / "score.log")) as proc:
        engines = engines_under(proc.pid)
        assert len(engines) >= 2, engines
        time.sleep(1.5)
        assert proc.poll() is None, "the score finished before the kill: the test did not kill it mid-score"
        proc.send_signal(getattr(signal, how))
        out, _ = proc.communicate(timeout=60)
        assert_gone(engines)
    if how == "SIGTERM":  # stopped in order: its engine shut down, one line, the conventional exit code, no JSON
        assert proc.returncode == 143, (proc.returncode, (tmp_path / "score.log").read_text()[-2000:])
        assert "lift score: terminated" in (tmp_path / "score.log").read_text()
        assert out == b""


CRITIC_HOLDER = """
import asyncio, sys, time
from service.critic import Critic

async def main():
    critic = await Critic.from_pretrained(sys.argv[1], engine="vllm", dtype="float32", max_model_len=2048).start()
    print("critic started", file=sys.stderr, flush=True)
    while True:
        await asyncio.sleep(1)

asyncio.run(main())
"""


def test_python_process_holding_a_critic_sigkilled(tiny_critic_dir, tmp_path):
    cmd = [sys.executable, "-c", CRITIC_HOLDER, str(tiny_critic_dir)]
    with reaped(_run_until(cmd, "critic started", tmp_path / "holder.log")) as proc:
        engines = engines_under(proc.pid)
        assert len(engines) >= 2, engines
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert_gone(engines)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_benchmark_stopped_leaves_no_server_and_no_engine(tmp_path, how):
    """frames_vs_mp4 starts a `lift serve` replica on the tiny critic; stopped as `timeout` stops it (SIGTERM)
    or killed outright, neither the replica nor its engine outlive it."""
    log = tmp_path / "bench.log"
    with open(log, "wb") as fh:
        bench = subprocess.Popen([sys.executable, "benchmarks/frames_vs_mp4.py", "--samples", "256", "--rounds", "50"],
                                 cwd=REPO, env={**os.environ, **SERVER_ENV}, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    with reaped(bench):
        engines = wait_for_engines(bench.pid, bench)
        tree = {int(p) for p in os.listdir("/proc") if p.isdigit() and is_descendant(int(p), bench.pid)}
        bench.send_signal(getattr(signal, how))
        bench.wait(timeout=90)
        assert_gone(engines)
        assert_gone(tree, within_s=90)  # the replica drains (graceful timeout) and exits
    if how == "SIGTERM":
        assert bench.returncode == 143, log.read_text()[-3000:]


def test_serve_start_names_leftover_engines_of_an_earlier_replica(tiny_critic_dir, tmp_path):
    """A replica of an older version (no lifeline: LIFT_ENGINE_LIFELINE=0) is SIGKILLed and leaves its engine;
    the next `lift serve` says so in one line with their pids and memory, and leaves them alone."""
    port = free_port()
    with reaped(start_serve(tiny_critic_dir, port, tmp_path / "old.log", env={"LIFT_ENGINE_LIFELINE": "0"})) as old:
        wait_ready(f"http://127.0.0.1:{port}", old)
        engines = wait_for_engines(old.pid, old)
        old.send_signal(signal.SIGKILL)
        old.wait(timeout=10)
    try:
        time.sleep(2)
        assert engines <= {p.pid for p in leftover_engine_processes()}  # what vLLM alone does: they stay
        port2 = free_port()
        with reaped(start_serve(tiny_critic_dir, port2, tmp_path / "new.log", engine="transformers")) as new:
            wait_ready(f"http://127.0.0.1:{port2}", new)
            lines = [line for line in (tmp_path / "new.log").read_text().splitlines() if "earlier run" in line]
            assert len(lines) == 1, (tmp_path / "new.log").read_text()[-3000:]
            assert lines[0].startswith("lift serve: warning: ")
            for pid in engines:
                assert f"pid {pid} (VLLM-test" in lines[0]  # this session's engine titles (tests/conftest.py)
            assert " GB" in lines[0]
            assert all(Path(f"/proc/{pid}").exists() for pid in engines)  # not killed: not this server's
    finally:
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert_gone(engines)
