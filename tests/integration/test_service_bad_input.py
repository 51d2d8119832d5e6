"""Every class of bad input gets its 4xx and error code, over a real socket, and the server stays ready.

The suite-level rule: nothing a client sends is answered with a 5xx.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.vllm

LIMIT = 2 * 1024 * 1024  # LIVE_DEFAULTS["max_video_bytes"] in conftest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated(sample_videos: dict[str, Path]) -> bytes:
    data = sample_videos["real_bikes"].read_bytes()
    return data[: len(data) // 3]


# (id, request kwargs for httpx.post, expected status, expected error code)
def cases(sample_videos: dict[str, Path]) -> list[tuple[str, dict[str, Any], int, str]]:
    rnd = os.urandom(50_000)
    return [
        ("broken video (truncated mp4)", {"json": {"prompt": "x", "video": {"base64": _b64(_truncated(sample_videos))}}}, 422, "invalid_video"),
        ("random bytes (base64)", {"json": {"prompt": "x", "video": {"base64": _b64(rnd)}}}, 422, "invalid_video"),
        ("random bytes (upload)", {"files": {"video": ("r.mp4", rnd, "video/mp4")}, "data": {"prompt": "x"}}, 422, "invalid_video"),
        ("an image, not a video", {"files": {"video": ("p.png", _png(), "image/png")}, "data": {"prompt": "x"}}, 422, "invalid_video"),
        ("empty upload", {"files": {"video": ("e.mp4", b"", "video/mp4")}, "data": {"prompt": "x"}}, 422, "invalid_video"),
        ("not base64", {"json": {"prompt": "x", "video": {"base64": "this is %%% not base64"}}}, 400, "invalid_request"),
        ("huge upload", {"files": {"video": ("h.mp4", b"\x00" * (LIMIT + 10), "video/mp4")}, "data": {"prompt": "x"}}, 413, "video_too_large"),
        ("huge base64", {"json": {"prompt": "x", "video": {"base64": "A" * (LIMIT // 3 * 4 + 4000)}}}, 413, "video_too_large"),
        ("path with ..", {"json": {"prompt": "x", "video": {"path": "../outside_secret.mp4"}}}, 403, "forbidden_media_source"),
        ("absolute path outside root", {"json": {"prompt": "x", "video": {"path": "/etc/passwd"}}}, 403, "forbidden_media_source"),
        ("symlink escape", {"json": {"prompt": "x", "video": {"path": "escape.mp4"}}}, 403, "forbidden_media_source"),
        ("missing file", {"json": {"prompt": "x", "video": {"path": "nope.mp4"}}}, 422, "video_not_found"),
        ("url 127.0.0.1", {"json": {"prompt": "x", "video": {"url": "http://127.0.0.1:1/v.mp4"}}}, 403, "forbidden_media_source"),
        ("url localhost", {"json": {"prompt": "x", "video": {"url": "http://localhost/v.mp4"}}}, 403, "forbidden_media_source"),
        ("url 10.x", {"json": {"prompt": "x", "video": {"url": "http://10.1.2.3/v.mp4"}}}, 403, "forbidden_media_source"),
        ("url metadata", {"json": {"prompt": "x", "video": {"url": "http://169.254.169.254/latest/meta-data/"}}}, 403, "forbidden_media_source"),
        ("url file scheme", {"json": {"prompt": "x", "video": {"url": "file:///etc/passwd"}}}, 403, "forbidden_media_source"),
        ("url garbage", {"json": {"prompt": "x", "video": {"url": "http://[::1"}}}, 400, "invalid_request"),
        ("malformed JSON", {"content": b'{"prompt": "x", "video": ', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("non-UTF-8 body", {"content": b'{"prompt": "\xff\xfe\xfa", "video": {"path": "a"}}', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("deeply nested JSON", {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("JSON array", {"json": [1, 2, 3]}, 422, "validation_error"),
        ("wrong types", {"json": {"prompt": ["a"], "video": {"path": 5}}}, 422, "validation_error"),
        ("two video sources", {"json": {"prompt": "x", "video": {"path": "a.mp4", "url": "http://example.com/a.mp4"}}}, 422, "validation_error"),
        ("no video", {"json": {"prompt": "x"}}, 422, "validation_error"),
        ("unknown field", {"json": {"prompt": "x", "video": {"path": "h264_mp4.mp4"}, "extra": 1}}, 422, "validation_error"),
        ("bad options", {"json": {"prompt": "x", "video": {"path": "h264_mp4.mp4"}, "options": {"num_frames": 0}}}, 422, "validation_error"),
        ("empty prompt", {"json": {"prompt": "", "video": {"path": "h264_mp4.mp4"}}}, 422, "validation_error"),
        ("1 MB prompt (JSON)", {"json": {"prompt": "a" * 1_000_000, "video": {"path": "h264_mp4.mp4"}}}, 422, "validation_error"),
        ("1 MB prompt (upload)", {"files": {"video": ("v.mp4", b"\x00" * 10)}, "data": {"prompt": "a" * 1_000_000}}, 422, "validation_error"),
        ("upload without prompt", {"files": {"video": ("v.mp4", b"\x00" * 10)}}, 422, "validation_error"),
        ("upload without video", {"files": {"other": ("v.mp4", b"\x00" * 10)}, "data": {"prompt": "x"}}, 422, "validation_error"),
        ("upload bad options", {"files": {"video": ("v.mp4", b"\x00" * 10)}, "data": {"prompt": "x", "options": "{nope"}}, 422, "validation_error"),
        ("video as a text field", {"content": b"--xx\r\nContent-Disposition: form-data; name=\"video\"\r\n\r\nabc", "headers": {"content-type": "multipart/form-data; boundary=xx"}}, 422, "validation_error"),
        ("multipart without boundary", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_form"),
        ("too many form parts", {"files": {"video": ("v.mp4", b"\x00" * 10)}, "data": {f"f{i}": "x" for i in range(20)}}, 400, "invalid_form"),
        ("text/plain body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ]


def test_every_bad_input_gets_its_4xx(live_server: str, sample_videos: dict[str, Path]) -> None:
    failures = []
    with httpx.Client(base_url=live_server, timeout=120) as client:
        for name, kwargs, status, code in cases(sample_videos):
            r = client.post("/v1/score", **kwargs)
            body = r.json()
            got = (r.status_code, body.get("error", {}).get("code"))
            if got != (status, code) or set(body) != {"error"} or not body["error"]["message"]:
                failures.append(f"{name}: expected {status} {code}, got {got} {r.text[:200]}")
            assert r.status_code < 500, f"{name}: 5xx for client input: {r.text}"
            assert client.get("/ready").status_code == 200, f"server not ready after {name}"
    assert not failures, "\n".join(failures)


def test_routes_and_methods(live_server: str) -> None:
    r = httpx.get(f"{live_server}/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{live_server}/v1/score")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def _raw(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send raw bytes: for bodies a normal client would not send (lying lengths, endless chunks)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        # read the rest of a small error body
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def test_oversized_body_refused_before_it_is_read(live_server: str) -> None:
    # Declares 1 GB, sends 1 KB: the answer comes at once, without waiting for the rest.
    head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\nConnection: close\r\n\r\n")
    status, body = _raw(live_server, head, b"{" + b" " * 1000)
    assert status == 413 and json.loads(body)["error"]["code"] == "video_too_large"


def test_chunked_body_capped_while_streaming(live_server: str) -> None:
    def chunks() -> Any:
        for _ in range(200):  # 200 x 64 KiB = 12.5 MiB, well over the cap
            yield b"A" * 65536

    r = httpx.post(f"{live_server}/v1/score", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_large"
    assert httpx.get(f"{live_server}/ready").status_code == 200


def test_bad_content_length_header(live_server: str) -> None:
    head = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\nConnection: close\r\n\r\n"
    status, _ = _raw(live_server, head)
    assert 400 <= status < 500


def test_paths_disabled_without_media_root(serve_app: Any) -> None:
    with serve_app(media_root=None) as url:
        r = httpx.post(f"{url}/v1/score", json={"prompt": "x", "video": {"path": "h264_mp4.mp4"}}, timeout=60)
        assert r.status_code == 403 and "LIFT_MEDIA_ROOT" in r.json()["error"]["message"]
