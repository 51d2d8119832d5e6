"""Admission under a burst (429 + Retry-After, never 5xx, bounded queue), per-request timeouts (504),
and the Prometheus metrics moving with traffic. Real sockets, real vLLM engine."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.vllm


def metric(text: str, name: str, labels: str = "") -> float:
    """Value of one sample in Prometheus text format (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_overload_answers_429_with_retry_after_and_no_5xx(serve_app: Any, sample_videos: dict[str, Path]) -> None:
    # Uploads make each request hold memory: the bound on admitted requests is what keeps a burst bounded.
    video = sample_videos["real_bikes"].read_bytes()
    b64 = base64.b64encode(video).decode()
    max_inflight, max_queue = 2, 3
    with serve_app(max_inflight=max_inflight, max_queue=max_queue) as url:
        peaks = {"inflight": 0.0, "queued": 0.0}
        stop = threading.Event()

        def watch() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    text = c.get(f"{url}/metrics").text
                    peaks["inflight"] = max(peaks["inflight"], metric(text, "lift_inflight_requests"))
                    peaks["queued"] = max(peaks["queued"], metric(text, "lift_queued_requests"))
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()

        def one(i: int) -> httpx.Response:
            with httpx.Client(timeout=120) as c:
                if i % 2:
                    return c.post(f"{url}/v1/score", files={"video": ("b.mp4", video)}, data={"prompt": "bikes"})
                return c.post(f"{url}/v1/score", json={"prompt": "bikes", "video": {"base64": b64}})

        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(one, range(32)))
        stop.set()
        watcher.join()
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0 and statuses[200] >= max_inflight, statuses
        for r in responses:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "overloaded"
                assert int(r.headers["retry-after"]) >= 1
        assert peaks["inflight"] <= max_inflight and peaks["queued"] <= max_queue, peaks
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "lift_rejected_requests_total", 'reason="overloaded"') == statuses[429]
        assert metric(text, "lift_requests_total", 'route="/v1/score",status="429"') == statuses[429]
        assert metric(text, "lift_inflight_requests") == 0 and metric(text, "lift_queued_requests") == 0
        assert httpx.get(f"{url}/ready").status_code == 200


def test_request_timeout_is_504_and_engine_survives(serve_app: Any, live_server: str) -> None:
    with serve_app(request_timeout_s=0.02) as url:
        r = httpx.post(f"{url}/v1/score", json={"prompt": "x", "video": {"path": "real_bikes.mp4"}}, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        r = httpx.post(f"{url}/v1/score/batch", json={"items": [{"prompt": "x", "video": {"path": "real_bikes.mp4"}}] * 2}, timeout=60)
        assert r.status_code == 200 and all(it["error"]["code"] == "timeout" for it in r.json()["results"])
    # the cancelled engine requests did not hurt the shared engine
    r = httpx.post(f"{live_server}/v1/score", json={"prompt": "x", "video": {"path": "real_bikes.mp4"}}, timeout=120)
    assert r.status_code == 200, r.text


def test_metrics_move_after_requests(serve_app: Any) -> None:
    with serve_app() as url, httpx.Client(base_url=url, timeout=120) as c:
        before = c.get("/metrics").text
        assert metric(before, "lift_engine_ready") == 1
        assert c.post("/v1/score", json={"prompt": "a", "video": {"path": "h264_mp4.mp4"}}).status_code == 200
        assert c.post("/v1/score", json={"prompt": "a", "video": {"path": "../x.mp4"}}).status_code == 403
        batch = c.post("/v1/score/batch", json={"items": [{"prompt": "a", "video": {"path": "vp9_webm.webm"}},
                                                          {"prompt": "a", "video": {"path": "missing.mp4"}}]})
        assert batch.status_code == 200
        after = c.get("/metrics").text
        resp: Any = lambda name, labels="": metric(after, name, labels) - metric(before, name, labels)  # noqa: E731
        assert resp("lift_requests_total", 'route="/v1/score",status="200"') == 1
        assert resp("lift_requests_total", 'route="/v1/score",status="403"') == 1
        assert resp("lift_requests_total", 'route="/v1/score/batch",status="200"') == 1
        assert resp("lift_request_duration_seconds_count", 'route="/v1/score"') == 2
        assert resp("lift_rejected_requests_total", 'reason="forbidden_media_source"') == 1
        assert resp("lift_rejected_requests_total", 'reason="video_not_found"') == 1
        assert resp("lift_reward_count") == 2  # one single + one good batch item
        assert resp("lift_decode_duration_seconds_count") == 2
        assert resp("lift_engine_duration_seconds_count") == 2
        for dim in ("semantic_consistency", "motion_smoothness", "video_fidelity"):
            assert resp("lift_dimension_score_count", f'dimension="{dim}"') == 2
        assert "lift_parse_failures_total" in after
        # every metric of the contract is exposed
        for name in ("lift_requests_total", "lift_request_duration_seconds", "lift_decode_duration_seconds",
                     "lift_engine_duration_seconds", "lift_inflight_requests", "lift_queued_requests",
                     "lift_dimension_score", "lift_reward", "lift_parse_failures_total", "lift_engine_ready",
                     "lift_rejected_requests_total"):
            assert f"# TYPE {name} " in after, name
