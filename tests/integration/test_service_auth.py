"""Bearer auth over a real socket: on for /v1/* when keys are configured, probes stay open, keys never logged."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.vllm

KEYS = "first-key-9f8e7d,second-key-1a2b3c"
REQ = {"prompt": "a red square", "video": {"path": "h264_mp4.mp4"}}


def test_auth_on(serve_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), serve_app(api_keys=KEYS) as url, httpx.Client(base_url=url, timeout=120) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic first-key-9f8e7d"},
                        {"Authorization": "Bearer first-key-9f8e7"}, {"Authorization": "Bearer"}):
            for method, path, kw in (("POST", "/v1/score", {"json": REQ}), ("POST", "/v1/score/batch", {"json": {"items": [REQ]}}),
                                     ("GET", "/v1/models", {})):
                r = c.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (headers, path, r.text)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
        for key in KEYS.split(","):
            r = c.post("/v1/score", json=REQ, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        assert c.get("/v1/models", headers={"Authorization": "Bearer second-key-1a2b3c"}).status_code == 200
        # probes and metrics stay open by default
        for path in ("/health", "/ready", "/metrics"):
            assert c.get(path).status_code == 200, path
        metrics = c.get("/metrics").text
        assert 'lift_rejected_requests_total{reason="unauthorized"}' in metrics
        assert 'lift_requests_total{route="/v1/score",status="401"} 5.0' in metrics
    logged = caplog.text + "".join(str(getattr(r, "fields", "")) for r in caplog.records)
    for key in KEYS.split(","):
        assert key not in logged


def test_auth_can_cover_probes(serve_app: Any) -> None:
    with serve_app(api_keys="k-123", auth_ops_routes=True) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/ready").status_code == 401
        assert httpx.get(f"{url}/ready", headers={"Authorization": "Bearer k-123"}).status_code == 200


def test_auth_off_by_default(live_server: str) -> None:
    assert httpx.get(f"{live_server}/v1/models").status_code == 200
    r = httpx.post(f"{live_server}/v1/score", json=REQ, timeout=120)
    assert r.status_code == 200, r.text
