"""The media connector's rules, exercised on real files, real symlinks and a real loopback HTTP server."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import ForbiddenMediaSource, InvalidRequest, MediaFetchError, MediaNotFound, VideoTooLarge
from service.fetch import FetchPolicy, MediaConnector, address_refusal, decode_base64, host_allowed, resolve_path


# ---- paths ----------------------------------------------------------------------------------------
@pytest.fixture()
def media(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x" * 10)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"s" * 10)
    (root / "escape.mp4").symlink_to(outside)
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inner_link.mp4").symlink_to(root / "sub" / "a.mp4")
    return root, outside


def test_path_inside_root_resolves(media: tuple[Path, Path]) -> None:
    root, _ = media
    policy = FetchPolicy(media_root=root)
    assert resolve_path(policy, "sub/a.mp4") == (root / "sub" / "a.mp4").resolve()
    assert resolve_path(policy, str(root / "sub" / "a.mp4")) == (root / "sub" / "a.mp4").resolve()
    # a symlink that stays inside the root is fine
    assert resolve_path(policy, "inner_link.mp4") == (root / "sub" / "a.mp4").resolve()


@pytest.mark.parametrize(
    "requested",
    ["../secret.mp4", "sub/../../secret.mp4", "escape.mp4", "escape_dir/secret.mp4", "/etc/passwd"],
)
def test_path_escapes_are_forbidden(media: tuple[Path, Path], requested: str) -> None:
    root, _ = media
    with pytest.raises(ForbiddenMediaSource):
        resolve_path(FetchPolicy(media_root=root), requested)


def test_paths_off_without_root_missing_and_oversized(media: tuple[Path, Path]) -> None:
    root, _ = media
    with pytest.raises(ForbiddenMediaSource, match="LIFT_MEDIA_ROOT"):
        resolve_path(FetchPolicy(media_root=None), "sub/a.mp4")
    with pytest.raises(MediaNotFound):
        resolve_path(FetchPolicy(media_root=root), "nope.mp4")
    with pytest.raises(MediaNotFound):
        resolve_path(FetchPolicy(media_root=root), "sub")
    with pytest.raises(VideoTooLarge):
        resolve_path(FetchPolicy(media_root=root, max_bytes=5), "sub/a.mp4")
    with pytest.raises(InvalidRequest):
        resolve_path(FetchPolicy(media_root=root), "a\x00b")


# ---- base64 ----------------------------------------------------------------------------------------
def test_base64_decoding_and_caps() -> None:
    raw = os.urandom(300)
    assert decode_base64(base64.b64encode(raw).decode(), 1000) == raw
    assert decode_base64("data:video/mp4;base64," + base64.b64encode(raw).decode(), 1000) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode(), 1000) == raw
    with pytest.raises(VideoTooLarge):  # refused from the text length alone
        decode_base64("A" * 4000, 1000)
    with pytest.raises(InvalidRequest):
        decode_base64("not base64 at all!!", 1000)
    with pytest.raises(InvalidRequest):
        decode_base64("", 1000)


# ---- addresses and hosts ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "169.254.1.1", "::1", "fe80::1",
     "fd00::1", "::ffff:127.0.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1"],
)
def test_non_public_addresses_refused_by_default(ip: str) -> None:
    assert address_refusal(ipaddress.ip_address(ip), allow_private=False) is not None


def test_public_addresses_allowed_and_metadata_always_refused() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), allow_private=False) is None
    assert address_refusal(ipaddress.ip_address("2606:4700::1111"), allow_private=False) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), allow_private=True) is None
    for meta in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert address_refusal(ipaddress.ip_address(meta), allow_private=True) is not None


def test_host_allowlist() -> None:
    assert host_allowed("anything.org", ())
    assert host_allowed("example.com", ("example.com",))
    assert host_allowed("cdn.example.com", ("example.com",))
    assert host_allowed("cdn.example.com", ("*.example.com",))
    assert not host_allowed("evil-example.com", ("example.com",))
    assert not host_allowed("example.com.evil.org", ("example.com",))


# ---- URLs over a real loopback server ----------------------------------------------------------------
VIDEO = os.urandom(5000)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        routes = {
            "/video.mp4": (200, {"Content-Length": str(len(VIDEO))}, VIDEO),
            "/redirect": (302, {"Location": "/video.mp4", "Content-Length": "0"}, b""),
            "/redirect-ip": (302, {"Location": f"http://127.0.0.1:{self.server.server_port}/video.mp4", "Content-Length": "0"}, b""),
            "/redirect-meta": (302, {"Location": "http://169.254.169.254/latest/meta-data/", "Content-Length": "0"}, b""),
            "/loop": (302, {"Location": "/loop", "Content-Length": "0"}, b""),
            "/missing": (404, {"Content-Length": "0"}, b""),
            "/gzip": (200, {"Content-Encoding": "gzip", "Content-Length": "4"}, b"abcd"),
        }
        if self.path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(100):
                chunk = b"z" * 1000
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    return
            self.wfile.write(b"0\r\n\r\n")
            return
        status, headers, body = routes.get(self.path, (404, {"Content-Length": "0"}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()


async def _fetch(url: str, **policy: object) -> bytes:
    connector = MediaConnector(FetchPolicy(**policy))  # type: ignore[arg-type]
    try:
        return await connector.fetch(url)
    finally:
        await connector.aclose()


async def test_url_fetch_loopback_refused_by_default(http_server: int) -> None:
    for url in (f"http://127.0.0.1:{http_server}/video.mp4", f"http://localhost:{http_server}/video.mp4",
                f"http://2130706433:{http_server}/video.mp4", "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/x.mp4"):
        with pytest.raises(ForbiddenMediaSource):
            await _fetch(url)


async def test_url_fetch_succeeds_and_follows_redirects_when_private_allowed(http_server: int) -> None:
    base = f"http://127.0.0.1:{http_server}"
    assert await _fetch(f"{base}/video.mp4", allow_private_urls=True) == VIDEO
    assert await _fetch(f"{base}/redirect", allow_private_urls=True) == VIDEO
    assert await _fetch(f"http://localhost:{http_server}/redirect", allow_private_urls=True) == VIDEO


async def test_every_redirect_hop_is_checked(http_server: int) -> None:
    # the first hop is allowed (localhost is allowlisted); the redirect target's host is not.
    with pytest.raises(ForbiddenMediaSource, match="allowlist"):
        await _fetch(f"http://localhost:{http_server}/redirect-ip", allow_private_urls=True, url_allowlist=("localhost",))
    with pytest.raises(ForbiddenMediaSource, match="metadata"):
        await _fetch(f"http://127.0.0.1:{http_server}/redirect-meta", allow_private_urls=True)
    with pytest.raises(MediaFetchError, match="redirects"):
        await _fetch(f"http://127.0.0.1:{http_server}/loop", allow_private_urls=True, max_redirects=3)


async def test_url_limits_and_failures(http_server: int) -> None:
    base = f"http://127.0.0.1:{http_server}"
    with pytest.raises(VideoTooLarge):  # declared Content-Length over the cap
        await _fetch(f"{base}/video.mp4", allow_private_urls=True, max_bytes=100)
    with pytest.raises(VideoTooLarge):  # no Content-Length: counted while streaming
        await _fetch(f"{base}/chunked-big", allow_private_urls=True, max_bytes=10_000)
    with pytest.raises(MediaFetchError, match="404"):
        await _fetch(f"{base}/missing", allow_private_urls=True)
    with pytest.raises(MediaFetchError, match="gzip"):
        await _fetch(f"{base}/gzip", allow_private_urls=True)
    with pytest.raises(ForbiddenMediaSource, match="scheme"):
        await _fetch("file:///etc/passwd", allow_private_urls=True)
    with pytest.raises(ForbiddenMediaSource, match="scheme"):
        await _fetch("ftp://example.com/a.mp4")
    with pytest.raises(ForbiddenMediaSource, match="credentials"):
        await _fetch(f"http://user:pw@127.0.0.1:{http_server}/video.mp4", allow_private_urls=True)
    with pytest.raises(MediaFetchError, match="resolve"):
        await _fetch("http://no-such-host.invalid/a.mp4")
