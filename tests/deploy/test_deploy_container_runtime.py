"""What the container does at run time, without a container engine: the image's entrypoint starts the real
`lift serve --demo` (transformers engine: light, and the one vLLM engine of a test session stays the shared
one), the Dockerfile's own HEALTHCHECK command passes against it, /ready turns 200, a real score lands in
/metrics under exactly the names the dashboards, alerts and autoscaler query, and SIGTERM drains to exit 0."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck_command() -> list[str]:
    """The exec-form CMD of the Dockerfile's HEALTHCHECK, as Docker would run it."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.M)
    assert m, "HEALTHCHECK with an exec-form CMD"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")  # the image's HOME: the demo critic is built under ~/.cache
    port = _free_port()
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFT_")} | {
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
        "LIFT_DEMO": "1", "LIFT_ENGINE": "transformers", "LIFT_HOST": "127.0.0.1", "LIFT_PORT": str(port),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited {proc.returncode}: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"not ready in 240 s: {log.read_text()[-3000:]}")
        yield proc, base, env, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_dockerfile_healthcheck_passes_against_the_running_service(demo_server) -> None:
    proc, base, env, _ = demo_server
    check = subprocess.run(_healthcheck_command(), env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 200


@pytest.mark.slow
def test_metrics_after_a_real_score_carry_the_dashboard_names(demo_server, check_promql, promtool, tmp_path: Path) -> None:
    from service.synthetic_videos import moving_square, write_video

    _, base, _, _ = demo_server
    video = write_video(tmp_path / "clip.mp4", moving_square(num_frames=12))
    body = {"prompt": "a red square slides to the right", "video": {"base64": base64.b64encode(video.read_bytes()).decode()}}
    resp = httpx.post(f"{base}/v1/score", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    dims = resp.json()["dimensions"]

    text = httpx.get(f"{base}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            samples.setdefault(name, []).append(line)
    # Every series the dashboards query for a scored video is live, with the labels the queries use.
    for name in ("lift_requests_total", "lift_request_duration_seconds_bucket", "lift_dimension_score_bucket",
                 "lift_reward_bucket", "lift_queued_requests", "lift_inflight_requests", "lift_engine_ready"):
        assert name in samples, f"{name} missing from /metrics"
        check_promql(name, "/metrics")
    assert any('route="/v1/score"' in l and 'status="200"' in l for l in samples["lift_requests_total"])
    for dim in dims:
        assert any(f'dimension="{dim}"' in l for l in samples["lift_dimension_score_bucket"]), dim
    assert any(l.split()[-1] in ("1.0", "1") for l in samples["lift_engine_ready"])
    # Prometheus can ingest it: promtool parses and lints the exposition, with no finding.
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _image_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_check", REPO / "deploy" / "image_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_image_check_s_http_checks_hold_against_the_real_service(demo_server, sample_videos) -> None:
    """`make image-check` talks to the container with its own stdlib HTTP code: its multipart upload, JSON
    request and contract checks are held here to the real service (and the checks do reject a wrong answer)."""
    mod = _image_check_module()
    _, base, _, _ = demo_server
    data = sample_videos["real_bikes"].read_bytes()
    form, ctype = mod.multipart({"prompt": "people riding bikes"}, {"video": ("bikes.mp4", data, "video/mp4")})
    status, body = mod.http("POST", f"{base}/v1/score", form, {"Content-Type": ctype})
    first = mod.check_score(status, body, "multipart")
    payload = json.dumps({"prompt": "people riding bikes", "video": {"base64": base64.b64encode(data).decode()}})
    second = mod.check_score(*mod.http("POST", f"{base}/v1/score", payload.encode(), {"Content-Type": "application/json"}), "JSON")
    assert first["reward"] == second["reward"]
    wrong = json.loads(body)
    wrong["reward"] += 0.1
    with pytest.raises(mod.CheckFailed, match="not the mean"):
        mod.check_score(200, json.dumps(wrong).encode(), "tampered")
    status, body = mod.http("POST", f"{base}/v1/score", b"{}", {"Content-Type": "application/json"})
    assert 400 <= status < 500 and "error" in json.loads(body)
    with pytest.raises(mod.CheckFailed, match="HTTP"):
        mod.check_score(status, body, "bad request")


@pytest.mark.slow
def test_sigterm_drains_and_exits_zero(demo_server) -> None:
    # Last in this module: Kubernetes and `docker stop` send SIGTERM to PID 1, which `exec` made the server.
    proc, base, _, log = demo_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health", timeout=2)
