"""The engine as a user meets it: the product's own memory defaults (no VLLM_*/LIFT_* settings from the
suite), stdout that is JSON only, one-line refusals when memory is short, and a replica whose engine dies
answers 503 and exits non-zero so that its supervisor restarts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import REPO, free_port, spawn_server, stop_server, wait_ready

PROMPT = "a red square moving"


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: offline (no hub here), but none of the suite's engine or service settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LIFT_", "PYTEST"))}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def lift(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or user_env())


@pytest.fixture()
def half_the_ram_held() -> Iterator[int]:
    """Another process holding half of this machine's RAM (touched pages, not just reserved)."""
    size = psutil.virtual_memory().total // 2
    code = ("import sys, numpy as np; a = np.ones(int(sys.argv[1]), dtype=np.uint8); print('held', flush=True); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        yield size
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _score_ok(url: str, video: Path) -> dict:
    with open(video, "rb") as f:
        r = httpx.post(f"{url}/v1/score", files={"video": ("v.mp4", f, "video/mp4")},
                       data={"prompt": PROMPT, "options": json.dumps({"max_reason_tokens": 2})}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.vllm
@pytest.mark.slow
def test_defaults_start_beside_a_process_holding_half_the_ram_and_two_replicas_score(
        half_the_ram_held: int, tiny_critic_dir: Path, sample_videos: dict[str, Path], tmp_path: Path) -> None:
    video = sample_videos["h264_mp4"]
    # lift score --model on the vLLM engine, with the product's defaults: starts, and stdout is the JSON alone
    proc = lift("score", str(video), "--prompt", PROMPT, "--model", str(tiny_critic_dir), "--engine", "vllm",
                "--max-reason-tokens", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # whole: not one log line before or after
    assert set(result["dimensions"]) == {"semantic_consistency", "motion_smoothness", "video_fidelity"}
    assert "WARNING" in proc.stderr or "INFO" in proc.stderr or proc.stderr == ""  # logs, if any, went to stderr

    # two lift serve replicas side by side, both with the defaults, both score
    servers = []
    try:
        for _ in range(2):
            port = free_port()
            log = open(tmp_path / f"serve-{port}.log", "wb")
            p = subprocess.Popen([sys.executable, "-m", "clients.cli", "serve", "--model", str(tiny_critic_dir),
                                  "--engine", "vllm", "--port", str(port)], cwd=REPO, env=user_env(), stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            servers.append((p, f"http://127.0.0.1:{port}", tmp_path / f"serve-{port}.log"))
        for p, url, log_path in servers:
            try:
                wait_ready(url, p, 300)
            except Exception as exc:
                raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from exc
        for p, url, log_path in servers:
            assert _score_ok(url, video)["num_frames"] == 8
            text = log_path.read_text(errors="replace")
            assert "vLLM engine memory: KV cache" in text and "sized for" in text  # the size chosen, logged
    finally:
        for p, _, _ in servers:
            stop_server(p)


def test_transformers_engine_stdout_is_the_json_alone(tiny_critic_dir: Path, sample_videos: dict[str, Path]) -> None:
    proc = lift("score", str(sample_videos["h264_mp4"]), "--prompt", PROMPT, "--model", str(tiny_critic_dir),
                "--engine", "transformers", "--max-reason-tokens", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["num_frames"] == 8


@pytest.mark.vllm
def test_short_memory_is_one_line_for_lift_score_and_lift_serve(tiny_critic_dir: Path,
                                                                sample_videos: dict[str, Path]) -> None:
    env = user_env(LIFT_KV_CACHE_GB="100000")  # more than any host here has
    proc = lift("score", str(sample_videos["h264_mp4"]), "--prompt", PROMPT, "--model", str(tiny_critic_dir),
                "--engine", "vllm", env=env)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lift score: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "engine_start_failed" in lines[0] and "100000.00 GiB" in lines[0] and "free" in lines[0]
    assert "LIFT_KV_CACHE_GB" in lines[0]

    port = free_port()
    serve = subprocess.run([sys.executable, "-m", "clients.cli", "serve", "--model", str(tiny_critic_dir),
                            "--engine", "vllm", "--port", str(port)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert serve.returncode == 1, serve.stderr[-2000:]
    last = serve.stderr.strip().splitlines()[-1]
    assert last.startswith("lift serve: error: the engine failed to start: not enough memory for the KV cache")
    assert "LIFT_KV_CACHE_GB" in last and "Traceback" not in serve.stderr


def _engine_children(pid: int) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline()) + " " + child.name()
        except psutil.Error:
            continue
        if "Worker" in title or "EngineCore" in title:
            out.append(child)
    return out


def _kill_vllm_worker(pid: int) -> None:
    children = _engine_children(pid)
    workers = [c for c in children if "Worker" in " ".join(c.cmdline()) + c.name()] or children
    assert workers, "no vLLM engine child process found"
    workers[-1].send_signal(signal.SIGKILL)


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_worker_gives_503s_health_503_and_a_nonzero_exit(tiny_critic_dir: Path, sample_videos: dict[str, Path],
                                                                tmp_path: Path) -> None:
    video_bytes = sample_videos["real_bikes"].read_bytes()
    with spawn_server(tiny_critic_dir, engine="vllm", env={"LIFT_MAX_INFLIGHT": "16"}, log_dir=tmp_path) as srv:
        results: list[int | str] = []

        def send() -> None:
            try:
                r = httpx.post(f"{srv.url}/v1/score", files={"video": ("b.mp4", video_bytes, "video/mp4")},
                               data={"prompt": "bikes", "options": json.dumps({"num_frames": 16})}, timeout=60)
                if r.status_code == 503:
                    assert r.headers.get("retry-after"), r.headers
                results.append(r.status_code)
            except httpx.TransportError as exc:  # the server went away mid-request: an answer, not a hang
                results.append(type(exc).__name__)

        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        _kill_vllm_worker(srv.proc.pid)
        killed_at = time.monotonic()
        health_503 = False
        while srv.proc.poll() is None and time.monotonic() - killed_at < 20:
            try:
                h = httpx.get(f"{srv.url}/health", timeout=2)
                if h.status_code == 503:
                    health_503 = True
                    assert h.json()["error"]["code"] == "engine_dead"
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        code = srv.proc.wait(timeout=max(1.0, 15 - (time.monotonic() - killed_at)))
        exited_after = time.monotonic() - killed_at
        for t in threads:
            t.join(timeout=70)
        assert all(not t.is_alive() for t in threads), "a request hung past its deadline"
        assert code != 0 and exited_after < 15, (code, exited_after, srv.log()[-3000:])
        assert health_503, srv.log()[-3000:]
        assert len(results) == 16 and all(r in (200, 503) or isinstance(r, str) for r in results), \
            (results, srv.log()[-3000:])
        assert 503 in results, results
        assert "lift serve: error: the engine died" in srv.log()


@pytest.mark.vllm
@pytest.mark.slow
def test_label_over_two_replicas_finishes_when_one_engine_is_killed(tiny_critic_dir: Path, video_factory,
                                                                     tmp_path: Path) -> None:
    videos = [video_factory(f"label_kill_{i}", colour=("red", "green", "blue")[i % 3], seed=i) for i in range(4)]
    manifest = tmp_path / "manifest.jsonl"
    ids = [f"item-{i:03d}" for i in range(40)]
    manifest.write_text("".join(json.dumps({"id": i, "video": str(videos[n % 4]), "prompt": f"a square {n}"}) + "\n"
                                for n, i in enumerate(ids)))
    out = tmp_path / "labels.jsonl"
    with spawn_server(tiny_critic_dir, engine="vllm", log_dir=tmp_path) as a, \
            spawn_server(tiny_critic_dir, engine="vllm", log_dir=tmp_path) as b:
        label = subprocess.Popen([sys.executable, "-m", "clients.cli", "label", str(manifest), "--out", str(out),
                                  "--server", a.url, "--server", b.url, "--concurrency", "8", "--no-progress",
                                  "--max-reason-tokens", "2"], cwd=REPO, env=user_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.2)
        _kill_vllm_worker(b.proc.pid)
        stdout, stderr = label.communicate(timeout=600)
        assert b.proc.wait(timeout=20) != 0  # the killed replica went away on its own
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ids, stderr[-2000:]  # exactly one line per input
    assert label.returncode == 0 and all(line["status"] == "ok" for line in lines), (stdout, stderr[-2000:])
