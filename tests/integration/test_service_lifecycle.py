"""`lift serve` as a real subprocess: /ready is 503 until the engine is up, SIGTERM drains in-flight
requests and exits 0, a model that cannot load ends the process non-zero."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPO, SERVER_ENV, free_port, wait_ready


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


@pytest.mark.vllm
@pytest.mark.slow
def test_ready_503_until_engine_up_then_sigterm_drains(
    spawn_server: Callable[..., Any], tiny_critic_dir: Path, live_media_root: Path
) -> None:
    with spawn_server(tiny_critic_dir, engine="vllm", env={"LIFT_MEDIA_ROOT": str(live_media_root), "LIFT_MAX_INFLIGHT": "4"},
                      wait=False) as srv:
        # 1) while vLLM loads (tens of seconds): alive, not ready
        seen_503 = False
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                try:
                    ready = c.get(f"{srv.url}/ready")
                except httpx.TransportError:
                    time.sleep(0.2)
                    continue
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503, ready.text
                assert ready.json()["error"]["code"] == "engine_not_ready" and int(ready.headers["retry-after"]) >= 1
                assert c.get(f"{srv.url}/health").status_code == 200
                assert _metric(c.get(f"{srv.url}/metrics").text, "lift_engine_ready") == 0
                r = c.post(f"{srv.url}/v1/score", json={"prompt": "x", "video": {"path": "h264_mp4.mp4"}})
                assert r.status_code == 503 and r.json()["error"]["code"] == "engine_not_ready" and "retry-after" in r.headers
                seen_503 = True
                time.sleep(0.5)
        assert seen_503, "never saw /ready answer 503 before the engine was up"
        wait_ready(srv.url, srv.proc, 240)
        assert _metric(httpx.get(f"{srv.url}/metrics").text, "lift_engine_ready") == 1

        # 2) in-flight requests, then SIGTERM: they all finish with 200, then the process exits 0
        items = [{"prompt": "bikes", "video": {"path": "real_bikes.mp4"}, "options": {"num_frames": 16}}] * 12
        results: list[httpx.Response | BaseException] = []

        sending = threading.Semaphore(0)  # released as each request goes out, so SIGTERM comes after all three

        def send() -> None:
            try:
                with httpx.Client(timeout=300, event_hooks={"request": [lambda _req: sending.release()]}) as client:
                    results.append(client.post(f"{srv.url}/v1/score/batch", json={"items": items}))
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
                results.append(exc)

        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in threads:
            assert sending.acquire(timeout=60), "a batch request was never sent"
        time.sleep(0.5)  # loopback: each request is accepted and read by now
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until work is really in the engine
            text = httpx.get(f"{srv.url}/metrics").text
            if _metric(text, "lift_inflight_requests") >= 1:
                break
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{srv.url}/health", timeout=2)
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 3
        for r in results:
            assert isinstance(r, httpx.Response), r
            assert r.status_code == 200, r.text
            assert all("reward" in item for item in r.json()["results"]), r.text[:500]
        assert srv.proc.wait(timeout=120) == 0, srv.log()[-3000:]
        log = srv.log()
        assert '"msg": "lift serve settings"' in log and '"api_keys": "off"' in log


def test_engine_that_fails_to_load_ends_the_server_nonzero(tmp_path: Path, tiny_critic_dir: Path) -> None:
    # A checkpoint that looks right (config, tokenizer) but has no weights: the server starts, the
    # engine load fails in the background, the process says why and exits 1.
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_critic_dir, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    cmd = [sys.executable, "-m", "clients.cli", "serve", "--model", str(broken), "--engine", "transformers",
           "--port", str(free_port())]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **SERVER_ENV}, capture_output=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert b"the engine failed to start" in proc.stderr


def test_unloadable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    cmd = [sys.executable, "-m", "clients.cli", "serve", "--model", str(tmp_path), "--engine", "transformers"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **SERVER_ENV}, capture_output=True, timeout=180)
    assert proc.returncode == 2 and b"model_load_error" in proc.stderr and b"Traceback" not in proc.stderr


def test_serve_without_model_is_a_clear_error() -> None:
    env = {**os.environ, **SERVER_ENV}
    env.pop("LIFT_MODEL", None)
    proc = subprocess.run([sys.executable, "-m", "clients.cli", "serve"], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"--model" in proc.stderr


@pytest.mark.slow
def test_demo_builds_the_tiny_critic_once_then_serves(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    demo_dir = tmp_path / "cache" / "demo-critic"
    env = {"LIFT_DEMO_DIR": str(demo_dir)}
    with spawn_server(None, engine="transformers", env=env, args=("--demo",)) as srv:
        assert (demo_dir / "config.json").is_file()
        card = httpx.get(f"{srv.url}/v1/models").json()["data"][0]
        assert card["family"] == "qwen2_vl" and card["engine"] == "transformers"
        assert "building the demo critic" in srv.log()
    built = (demo_dir / "config.json").stat().st_mtime
    with spawn_server(None, engine="transformers", env=env, args=("--demo",)) as srv:
        assert "building the demo critic" not in srv.log()  # reused, not rebuilt
    assert (demo_dir / "config.json").stat().st_mtime == built
