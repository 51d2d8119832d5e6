"""The media connector: the one place that turns a client's video reference into bytes or a safe path.

Sources: a path under the configured media root (off when no root is set), an http(s) URL, or base64.
Security rules live here and nowhere else (vLLM's `MediaConnector` is the model):
- paths: no `..`, no NUL, the real path (symlinks resolved) must stay under the root;
- URLs: http(s) only, optional host allowlist, every resolved address checked (loopback, private,
  link-local, metadata, ... refused unless private URLs are enabled; cloud metadata is always refused),
  the connection is pinned to the address that was checked (no DNS-rebinding window), redirects are
  followed here, hop by hop, under the same checks; size and time limits are enforced while downloading.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.errors import (
    ForbiddenMediaSource,
    InvalidRequest,
    MediaFetchError,
    MediaNotFound,
    VideoTooLarge,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance-metadata endpoints hand out cloud credentials: never fetched, even with private URLs on.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchPolicy:
    """What the connector may read. Built from the service settings; immutable once the app runs."""

    media_root: Path | None = None
    max_bytes: int = 64 * 1024 * 1024
    url_allowlist: tuple[str, ...] = ()
    allow_private_urls: bool = False
    fetch_timeout_s: float = 30.0
    max_redirects: int = 5
    user_agent: str = "lift-reward/0.1"
    _root_real: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.media_root is not None:
            # Resolve once: the root itself may be a symlink; what matters is where it really is.
            object.__setattr__(self, "_root_real", Path(os.path.realpath(self.media_root)))


def base64_decoded_size(text: str) -> int:
    """Upper bound of the decoded size, computed without decoding (so a huge upload is refused cheaply)."""
    return math.ceil(len(text) / 4) * 3


def decode_base64(text: str, max_bytes: int, *, param: str = "video.base64") -> bytes:
    if base64_decoded_size(text) > max_bytes + 3:
        raise VideoTooLarge(f"base64 video exceeds {max_bytes} bytes", param=param)
    data = text
    if data.startswith("data:"):  # tolerate a data: URL, as browsers produce
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:  # url-safe alphabet is common in JSON APIs
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"video.base64 is not valid base64: {exc}", param=param) from None
    if len(raw) > max_bytes:
        raise VideoTooLarge(f"video is {len(raw)} bytes, over the limit of {max_bytes}", param=param)
    if not raw:
        raise InvalidRequest("video.base64 is empty", param=param)
    return raw


def resolve_path(policy: FetchPolicy, requested: str, *, param: str = "video.path") -> Path:
    """A client path -> the real path of a regular file under the media root, or a typed error."""
    root = policy._root_real
    if root is None:
        raise ForbiddenMediaSource("video.path is disabled on this server (LIFT_MEDIA_ROOT is not set)", param=param)
    if not requested or "\x00" in requested:
        raise InvalidRequest("video.path is empty or contains a NUL byte", param=param)
    parts = Path(requested).parts
    if ".." in parts:
        raise ForbiddenMediaSource("video.path may not contain '..'", param=param)
    candidate = Path(requested) if os.path.isabs(requested) else root / requested
    # realpath resolves every symlink on the way; the result must still be under the root.
    real = Path(os.path.realpath(candidate))
    if not real.is_relative_to(root):
        raise ForbiddenMediaSource("video.path resolves outside the media root", param=param)
    try:
        st = real.stat()
    except FileNotFoundError:
        raise MediaNotFound(f"no such video under the media root: {requested}", param=param) from None
    except OSError as exc:
        raise MediaNotFound(f"cannot read video: {exc.strerror}", param=param) from None
    if not real.is_file():
        raise MediaNotFound(f"not a regular file: {requested}", param=param)
    if st.st_size > policy.max_bytes:
        raise VideoTooLarge(f"video is {st.st_size} bytes, over the limit of {policy.max_bytes}", param=param)
    return real


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    """Exact host or a subdomain of an entry (`example.com` allows `cdn.example.com`); empty = all."""
    if not allowlist:
        return True
    host = host.lower().rstrip(".")
    for entry in allowlist:
        e = entry.lower().strip().lstrip("*").lstrip(".").rstrip(".")
        if e and (host == e or host.endswith("." + e)):
            return True
    return False


def address_refusal(ip: IPAddress, allow_private: bool) -> str | None:
    """Why an address may not be fetched from, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified or ip.is_multicast:
        return "an unspecified or multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:  # shared (100.64/10), reserved, documentation ranges, ...
        return "a non-public address"
    return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaFetchError(f"cannot resolve host {host!r}: {exc.strerror}", param="video.url") from None
    addrs: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        raise MediaFetchError(f"host {host!r} has no addresses", param="video.url")
    return addrs


class MediaConnector:
    """Fetches URLs under a `FetchPolicy`. One per app; it owns its HTTP client (no env proxies)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env=False: an HTTP(S)_PROXY in the environment must not bypass the address checks.
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.policy.fetch_timeout_s),
                headers={"User-Agent": self.policy.user_agent},
            )
        return self._client

    async def check_url(self, url: str) -> tuple[httpx.URL, IPAddress]:
        """Validate one hop: scheme, host allowlist, every resolved address. Returns the pinned address."""
        try:
            u = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise InvalidRequest(f"video.url is not a valid URL: {exc}", param="video.url") from None
        if u.scheme not in ("http", "https"):
            raise ForbiddenMediaSource(f"URL scheme {u.scheme!r} is not fetched; use http or https", param="video.url")
        host = u.host
        if not host:
            raise InvalidRequest("video.url has no host", param="video.url")
        if u.userinfo:
            raise ForbiddenMediaSource("URLs with credentials are not fetched", param="video.url")
        if not host_allowed(host, self.policy.url_allowlist):
            raise ForbiddenMediaSource(f"host {host!r} is not in the URL allowlist", param="video.url")
        port = u.port or (443 if u.scheme == "https" else 80)
        addrs = await _resolve(host, port)
        for ip in addrs:  # all of them: the connection could otherwise land on a refused one
            why = address_refusal(ip, self.policy.allow_private_urls)
            if why is not None:
                raise ForbiddenMediaSource(f"host {host!r} resolves to {why} ({ip}); not fetched", param="video.url")
        return u, addrs[0]

    async def fetch(self, url: str) -> bytes:
        """Download a video under the policy's size and time limits."""
        try:
            async with asyncio.timeout(self.policy.fetch_timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise MediaFetchError(
                f"fetching the video took longer than {self.policy.fetch_timeout_s:g}s", param="video.url"
            ) from None

    async def _fetch(self, url: str) -> bytes:
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            u, ip = await self.check_url(current)
            # Pin the connection to the checked address; keep Host and TLS SNI/cert checks on the name.
            pinned = u.copy_with(host=str(ip))
            host_header = u.host if u.port is None else f"{u.host}:{u.port}"
            extensions = {"sni_hostname": u.host} if u.scheme == "https" else {}
            # identity: a compressed body could expand past the size limit inside one chunk.
            headers = {"Host": host_header, "Accept-Encoding": "identity"}
            request = self._http().build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                response = await self._http().send(request, stream=True)
            except httpx.HTTPError as exc:
                raise MediaFetchError(f"fetching the video failed: {type(exc).__name__}: {exc}", param="video.url") from None
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise MediaFetchError("redirect without a Location header", param="video.url")
                    current = str(u.join(location))
                    continue
                if response.status_code >= 400:
                    raise MediaFetchError(f"the video URL answered HTTP {response.status_code}", param="video.url")
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise MediaFetchError(f"the video URL sent a {encoding!r}-encoded body", param="video.url")
                return await self._read_limited(response)
            finally:
                await response.aclose()
        raise MediaFetchError(f"more than {self.policy.max_redirects} redirects", param="video.url")

    async def _read_limited(self, response: httpx.Response) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise VideoTooLarge(f"the video URL declares {declared} bytes, over the limit of {limit}", param="video.url")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > limit:  # stop reading at once: a lying or missing Content-Length
                    raise VideoTooLarge(f"the video URL sent more than {limit} bytes", param="video.url")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise MediaFetchError(f"download interrupted: {type(exc).__name__}: {exc}", param="video.url") from None
        data = b"".join(chunks)
        if not data:
            raise MediaFetchError("the video URL returned an empty body", param="video.url")
        return data
