"""The scoring API over a real socket on the real vLLM CPU engine: both content types, every video
source, batches with good and bad items, the read-only routes, request ids and JSON request logs."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.protocol import BatchScoreResponse, ModelList, ScoreResponse
from service.rubric import DIMENSION_NAMES, LABEL_SCORES

pytestmark = pytest.mark.vllm


def assert_score(body: dict[str, Any], num_frames: int = 8) -> ScoreResponse:
    r = ScoreResponse.model_validate(body)  # exactly the documented shape
    assert set(r.dimensions) == set(DIMENSION_NAMES)
    for dim in r.dimensions.values():
        assert dim.score == LABEL_SCORES[dim.label]
        p = dim.probabilities
        assert abs(p.Good + p.Normal + p.Bad - 1.0) < 1e-3
    assert abs(r.reward - sum(d.score for d in r.dimensions.values()) / 3) < 1e-9
    assert r.num_frames == num_frames
    assert {"decode", "engine", "queue", "fetch", "total"} <= set(r.timings_ms)
    return r


def test_score_json_path(live_server: str) -> None:
    r = httpx.post(f"{live_server}/v1/score", json={"prompt": "a red square moves right", "video": {"path": "h264_mp4.mp4"}}, timeout=120)
    assert r.status_code == 200, r.text
    assert_score(r.json())
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("name", ["h264_mp4", "vp9_webm", "mpeg4_avi", "ffv1_mkv", "real_bikes"])
def test_score_json_base64_codecs(live_server: str, sample_videos: dict[str, Path], name: str) -> None:
    b64 = base64.b64encode(sample_videos[name].read_bytes()).decode()
    r = httpx.post(f"{live_server}/v1/score", json={"prompt": "a scene", "video": {"base64": b64}, "options": {"num_frames": 4}}, timeout=120)
    assert r.status_code == 200, r.text
    assert_score(r.json(), num_frames=4)


def test_score_multipart_with_options(live_server: str, sample_videos: dict[str, Path]) -> None:
    data = sample_videos["real_carphone"].read_bytes()
    r = httpx.post(
        f"{live_server}/v1/score",
        files={"video": ("clip.mp4", data, "video/mp4")},
        data={"prompt": "a man on the phone in a car", "options": json.dumps({"num_frames": 6, "return_frames": True})},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = assert_score(r.json(), num_frames=6)
    assert body.frames is not None and len(body.frames) == 6
    # without options
    r = httpx.post(f"{live_server}/v1/score", files={"video": ("clip.mp4", data)}, data={"prompt": "x"}, timeout=120)
    assert r.status_code == 200, r.text
    assert_score(r.json())


def test_same_request_same_answer(live_server: str) -> None:
    req = {"prompt": "a red square", "video": {"path": "ffv1_mkv.mkv"}, "options": {"temperature": 0.7, "seed": 7}}
    a = httpx.post(f"{live_server}/v1/score", json=req, timeout=120).json()
    b = httpx.post(f"{live_server}/v1/score", json=req, timeout=120).json()
    assert a["dimensions"] == b["dimensions"]


# ---- URL source: a loopback HTTP server, private URLs enabled for this app only ---------------------
@pytest.fixture(scope="module")
def video_http_server(sample_videos: dict[str, Path]) -> Iterator[str]:
    payload = sample_videos["h264_mp4"].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v.mp4":
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/v.mp4")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_score_url_from_loopback_when_private_urls_enabled(serve_app: Callable[..., Any], video_http_server: str, live_server: str) -> None:
    body = {"prompt": "a red square", "video": {"url": f"{video_http_server}/moved"}}
    # the default server refuses a loopback URL ...
    r = httpx.post(f"{live_server}/v1/score", json=body, timeout=120)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_media_source"
    # ... an app configured to allow private URLs fetches it (following the redirect itself)
    with serve_app(allow_private_urls=True) as url:
        r = httpx.post(f"{url}/v1/score", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert_score(r.json())
        r = httpx.post(f"{url}/v1/score", json={"prompt": "x", "video": {"url": f"{video_http_server}/missing"}}, timeout=120)
        assert r.status_code == 422 and r.json()["error"]["code"] == "media_fetch_failed"
        # metadata stays refused even with private URLs on
        r = httpx.post(f"{url}/v1/score", json={"prompt": "x", "video": {"url": "http://169.254.169.254/latest/meta-data/"}}, timeout=120)
        assert r.status_code == 403, r.text


# ---- batch ----------------------------------------------------------------------------------------
def test_batch_mixed_good_and_bad_items_in_order(live_server: str, sample_videos: dict[str, Path]) -> None:
    good_b64 = base64.b64encode(sample_videos["vp9_webm"].read_bytes()).decode()
    items: list[Any] = [
        {"prompt": "a red square", "video": {"path": "h264_mp4.mp4"}},
        {"prompt": "broken", "video": {"base64": base64.b64encode(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500).decode()}},
        {"prompt": "escape", "video": {"path": "../outside_secret.mp4"}},
        {"prompt": "good too", "video": {"base64": good_b64}, "options": {"num_frames": 3}},
        {"prompt": 12345, "video": {"path": "h264_mp4.mp4"}},
        {"prompt": "private", "video": {"url": "http://10.0.0.1/x.mp4"}},
        "not even an object",
        {"prompt": "missing", "video": {"path": "nope.mp4"}},
    ]
    r = httpx.post(f"{live_server}/v1/score/batch", json={"items": items}, timeout=300)
    assert r.status_code == 200, r.text
    results = BatchScoreResponse.model_validate(r.json()).results
    assert len(results) == len(items)
    body = r.json()["results"]
    assert_score(body[0])
    assert body[1]["error"]["code"] == "invalid_video"
    assert body[2]["error"]["code"] == "forbidden_media_source" and body[2]["error"]["param"] == "items.2.video.path"
    assert_score(body[3], num_frames=3)
    assert body[4]["error"]["code"] == "validation_error" and body[4]["error"]["param"] == "items.4.prompt"
    assert body[5]["error"]["code"] == "forbidden_media_source"
    assert body[6]["error"]["code"] == "validation_error"
    assert body[7]["error"]["code"] == "video_not_found"


def test_batch_envelope_errors(live_server: str) -> None:
    for payload, status in (({"items": []}, 422), ({"items": "x"}, 422), ({"things": []}, 422), ([1, 2], 422),
                            ({"items": [{"prompt": "x", "video": {"path": "a"}}] * 65}, 422)):
        r = httpx.post(f"{live_server}/v1/score/batch", json=payload, timeout=60)
        assert r.status_code == status, (payload, r.text)
        assert r.json()["error"]["code"] == "validation_error"


# ---- read-only routes ---------------------------------------------------------------------------------
def test_health_ready_models_docs(live_server: str) -> None:
    assert httpx.get(f"{live_server}/health").json() == {"status": "ok"}
    assert httpx.get(f"{live_server}/ready").json() == {"status": "ready"}
    models = ModelList.model_validate(httpx.get(f"{live_server}/v1/models").json())
    card = models.data[0]
    assert card.id == "tiny-critic" and card.family == "qwen2_vl" and card.engine == "vllm" and card.num_frames == 8
    assert set(card.rubric) == set(DIMENSION_NAMES) and card.labels == LABEL_SCORES
    docs = httpx.get(f"{live_server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(f"{live_server}/openapi.json").json()
    score_body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(score_body)
    assert "ScoreRequest" in spec["components"]["schemas"]


def test_request_id_echoed_or_made_and_logged_as_json(live_server: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lift.access"):
        r = httpx.post(f"{live_server}/v1/score", json={"prompt": "a", "video": {"path": "h264_mp4.mp4"}},
                       headers={"X-Request-Id": "req-abc.123"}, timeout=120)
        assert r.headers["x-request-id"] == "req-abc.123"
        assert r.json()["id"] == "req-abc.123"
        made = httpx.get(f"{live_server}/health").headers["x-request-id"]
        assert len(made) == 32
        bad = httpx.get(f"{live_server}/health", headers={"X-Request-Id": "x" * 500}).headers["x-request-id"]
        assert bad != "x" * 500  # an unusable id is replaced, never echoed into logs
    records = [rec for rec in caplog.records if rec.name == "lift.access"]
    mine = [rec.fields for rec in records if rec.fields.get("request_id") == "req-abc.123"]  # type: ignore[attr-defined]
    assert len(mine) == 1
    line = mine[0]
    assert line["status"] == 200 and line["route"] == "/v1/score" and line["duration_ms"] > 0
    assert {"decode", "engine", "fetch", "queue"} <= set(line["timings_ms"])
    from service.app.logs import JsonFormatter

    parsed = json.loads(JsonFormatter().format(next(r for r in records if r.fields.get("request_id") == "req-abc.123")))  # type: ignore[attr-defined]
    assert parsed["request_id"] == "req-abc.123" and parsed["msg"] == "request"
