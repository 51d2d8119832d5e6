"""HTTP clients for the scoring service (contract v1): `RewardClient` (sync) and `AsyncRewardClient`.

Both take one or several base URLs, spread requests over them (least-loaded or round-robin), fail over
when a replica stops answering, retry only what a retry can fix (see `clients.balancing`), and raise the
project's typed errors (see `clients.errors`). No torch, no vllm: a training job installs only this.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from pydantic import ValidationError

from service.errors import InvalidRequest, LiftError
from service.protocol import (
    BatchScoreResponse,
    ModelList,
    ScoreOptions,
    ScoreResponse,
)

from .balancing import Attempts, Balancer, Replica, RetryPolicy, Strategy
from .errors import UnexpectedResponse, error_from_body, error_from_response
from .video import PreparedVideo, VideoInput, prepare_video

__all__ = ["RewardClient", "AsyncRewardClient", "RetryPolicy", "DEFAULT_TIMEOUT"]

# Scoring a video is seconds of work on a busy GPU; connecting should be near-instant.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
MAX_BATCH_ITEMS = 64  # the service's BatchScoreRequest limit
# Connections per httpx client inside AsyncRewardClient. httpcore's pool re-examines every connection each
# time a request starts or ends (a socket poll per idle connection, and a count of the idle connections per
# idle connection: O(n^2)); with one pool of 32 connections that was half of `lift label --concurrency 32`'s
# CPU (cProfile: 7.7 of 14 s in `_assign_requests_to_connections`). Several small pools keep it constant.
POOL_CONNECTIONS = 4


def _urls(base_urls: str | Sequence[str]) -> list[str]:
    if isinstance(base_urls, str):
        base_urls = [u for u in base_urls.split(",")]
    urls = [u.strip().rstrip("/") for u in base_urls if u and u.strip()]
    if not urls:
        raise InvalidRequest("no server URL given", param="base_urls")
    for u in urls:
        if not u.lower().startswith(("http://", "https://")):
            raise InvalidRequest(f"server URL must start with http:// or https://: {u!r}", param="base_urls")
    return urls


def _options(options: ScoreOptions | dict[str, Any] | None) -> ScoreOptions | None:
    if options is None or isinstance(options, ScoreOptions):
        return options
    try:
        return ScoreOptions.model_validate(options)
    except ValidationError as exc:
        raise InvalidRequest(f"bad score options: {exc.errors()[0]['msg']}", param="options") from None


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("prompt must be a non-empty string", param="prompt")


def _score_request_kwargs(video: PreparedVideo, prompt: str, options: ScoreOptions | None) -> dict[str, Any]:
    """httpx.post kwargs for one /v1/score call: multipart for uploads, JSON otherwise."""
    if video.kind == "bytes":
        # Multipart: no base64 inflation (a third more bytes) and no JSON string of megabytes to parse.
        assert video.data is not None
        form = {"prompt": prompt}
        if options is not None:
            form["options"] = options.model_dump_json(exclude_none=True)
        body, ctype = _multipart(form, "video", video.filename, video.data, "video/mp4")
        return {"content": body, "headers": {"Content-Type": ctype}}
    body = {"prompt": prompt, "video": video.json_source()}
    if options is not None:
        body["options"] = options.model_dump(exclude_none=True)
    return {"json": body}


def _multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    """A multipart/form-data body as one buffer. httpx's own encoder streams it part by part, which is one
    socket write per part and chunk (about ten syscalls per request, profiled: a quarter of the client's CPU
    at concurrency 32); one buffer goes out in one or two."""
    boundary = os.urandom(16).hex()
    safe = "".join("_" if c in '"\\\r\n' else c for c in filename) or "video.mp4"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe}"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n".encode("utf-8"))
    parts += [data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _batch_body(items: list[tuple[PreparedVideo, str]], options: ScoreOptions | None) -> dict[str, Any]:
    opts = options.model_dump(exclude_none=True) if options is not None else None
    out = []
    for video, prompt in items:
        item: dict[str, Any] = {"prompt": prompt, "video": video.json_source()}
        if opts:
            item["options"] = opts
        out.append(item)
    return {"items": out}


def _parse(model: type, response: httpx.Response, replica: Replica) -> Any:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        err = UnexpectedResponse(f"{replica.url} answered 200 with a body that is not a {model.__name__}: {exc.errors()[0]['msg']}")
        err.replica = replica.url  # type: ignore[attr-defined]
        raise err from None


def _batch_results(parsed: BatchScoreResponse, n: int) -> list[ScoreResponse | LiftError]:
    if len(parsed.results) != n:
        raise UnexpectedResponse(f"batch answered {len(parsed.results)} results for {n} items")
    out: list[ScoreResponse | LiftError] = []
    for r in parsed.results:
        if isinstance(r, ScoreResponse):
            out.append(r)
        else:
            out.append(error_from_body({"error": r.error.model_dump()}, status=200))
    return out


def _with_idempotency_key(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One `Idempotency-Key` per logical call, the same on every retry: a retry after a timeout or a dropped
    connection is answered with the first attempt's result instead of being scored again (the server keeps
    answers by key and content; replicas sharing LIFT_REDIS_URL share them)."""
    return {**kwargs, "headers": {**kwargs.get("headers", {}), "Idempotency-Key": uuid.uuid4().hex}}


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": "lift-reward-client/0.1"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


class _Base:
    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        strategy: Strategy = "least_loaded",
        max_connections: int = 64,
    ) -> None:
        self.base_urls = _urls(base_urls)
        self.retry = retry or RetryPolicy()
        self.balancer = Balancer(self.base_urls, strategy=strategy, policy=self.retry)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(5.0, timeout))
        self._http_kwargs = dict(
            headers=_headers(api_key),
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    @property
    def replicas(self) -> list[Replica]:
        return self.balancer.replicas


class RewardClient(_Base):
    """Synchronous client. Thread-safe; `score_batch` sends chunks to several replicas at once.

    >>> with RewardClient(["http://a:8000", "http://b:8000"], api_key="...") as c:
    ...     c.score("clip.mp4", "a cat playing piano").reward
    """

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(base_urls, **kwargs)
        self._http = httpx.Client(**self._http_kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, Replica]:
        kwargs = _with_idempotency_key(kwargs)
        attempts = Attempts(self.balancer)
        while True:
            replica, wait = attempts.next()
            try:
                if wait > 0:
                    time.sleep(wait)
                try:
                    resp = self._http.request(method, replica.url + path, **kwargs)
                except httpx.TransportError as exc:
                    if attempts.on_transport_error(replica, exc):
                        continue
                    raise attempts.give_up() from exc
            finally:
                self.balancer.release(replica)
            if resp.status_code < 400:
                self.balancer.succeeded(replica)
                return resp, replica
            err = error_from_response(resp.status_code, resp.content, resp.headers, replica.url)
            if attempts.on_status(replica, resp.status_code, err):
                continue
            raise err

    def score(
        self, video: VideoInput, prompt: str, *, options: ScoreOptions | dict[str, Any] | None = None
    ) -> ScoreResponse:
        """Score one video against its prompt. Raises a typed `LiftError` on failure."""
        _check_prompt(prompt)
        opts = _options(options)
        kwargs = _score_request_kwargs(prepare_video(video), prompt, opts)
        resp, replica = self._send("POST", "/v1/score", **kwargs)
        return _parse(ScoreResponse, resp, replica)

    def score_batch(
        self,
        videos: Sequence[VideoInput],
        prompts: Sequence[str],
        *,
        options: ScoreOptions | dict[str, Any] | None = None,
        batch_size: int = 16,
        return_exceptions: bool = False,
    ) -> list[ScoreResponse | LiftError]:
        """Score many (video, prompt) pairs through /v1/score/batch, in input order.

        Chunks of `batch_size` go to several replicas at once. With `return_exceptions=True` a failed item
        is its typed error in the list; otherwise the first failure is raised.
        """
        items, opts = _batch_items(videos, prompts, options, batch_size)
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

        def run(chunk: list[tuple[PreparedVideo, str]]) -> list[ScoreResponse | LiftError]:
            try:
                resp, replica = self._send("POST", "/v1/score/batch", json=_batch_body(chunk, opts))
            except LiftError as exc:
                if not return_exceptions:
                    raise
                return [exc] * len(chunk)
            return _batch_results(_parse(BatchScoreResponse, resp, replica), len(chunk))

        workers = max(1, min(len(chunks), 2 * len(self.base_urls)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(run, chunks) for r in part]
        return _finish(results, return_exceptions)

    def health(self) -> dict[str, Any]:
        """/health of the first replica that answers (liveness). Raises ServiceUnreachable if none."""
        last: BaseException | None = None
        for r in self.replicas:
            try:
                resp = self._http.get(r.url + "/health", timeout=self.timeout.connect or 5.0)
            except httpx.TransportError as exc:
                last = exc
                continue
            if resp.status_code == 200:
                return resp.json()
            last = error_from_response(resp.status_code, resp.content, resp.headers, r.url)
        raise _unreachable(self.base_urls, last)

    def ready(self) -> bool:
        """True when at least one replica's engine is loaded (GET /ready = 200)."""
        return any(self.replicas_ready().values())

    def replicas_ready(self) -> dict[str, bool]:
        out = {}
        for r in self.replicas:
            try:
                out[r.url] = self._http.get(r.url + "/ready", timeout=self.timeout.connect or 5.0).status_code == 200
            except httpx.TransportError:
                out[r.url] = False
        return out

    def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise _unreachable(self.base_urls, None, f"not ready after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def models(self) -> ModelList:
        resp, replica = self._send("GET", "/v1/models")
        return _parse(ModelList, resp, replica)


class AsyncRewardClient(_Base):
    """asyncio client; many concurrent `score` calls spread over the replicas.

    >>> async with AsyncRewardClient(urls) as c:
    ...     results = await asyncio.gather(*(c.score(v, p) for v, p in pairs))
    """

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(base_urls, **kwargs)
        http_kwargs = dict(self._http_kwargs)
        total = http_kwargs.pop("limits").max_connections or 64
        n = max(1, math.ceil(total / POOL_CONNECTIONS))
        per = math.ceil(total / n)
        # One TLS context for all of them (each would read the CA bundle otherwise: tens of ms).
        verify = httpx.create_ssl_context()
        self._pools = [httpx.AsyncClient(limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
                                         verify=verify, **http_kwargs) for _ in range(n)]
        self._pool_inflight = [0] * n
        self._http = self._pools[0]  # health, ready, models: one pool is plenty

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, Replica]:
        kwargs = _with_idempotency_key(kwargs)
        attempts = Attempts(self.balancer)
        while True:
            replica, wait = attempts.next()
            try:
                if wait > 0:
                    await asyncio.sleep(wait)
                pool = min(range(len(self._pools)), key=self._pool_inflight.__getitem__)
                self._pool_inflight[pool] += 1
                try:
                    resp = await self._pools[pool].request(method, replica.url + path, **kwargs)
                except httpx.TransportError as exc:
                    if attempts.on_transport_error(replica, exc):
                        continue
                    raise attempts.give_up() from exc
                finally:
                    self._pool_inflight[pool] -= 1
            finally:
                self.balancer.release(replica)
            if resp.status_code < 400:
                self.balancer.succeeded(replica)
                return resp, replica
            err = error_from_response(resp.status_code, resp.content, resp.headers, replica.url)
            if attempts.on_status(replica, resp.status_code, err):
                continue
            raise err

    async def score(
        self, video: VideoInput, prompt: str, *, options: ScoreOptions | dict[str, Any] | None = None
    ) -> ScoreResponse:
        _check_prompt(prompt)
        opts = _options(options)
        # Reading a file or encoding frames blocks: keep it off the event loop.
        prepared = video if isinstance(video, PreparedVideo) else await asyncio.to_thread(prepare_video, video)
        resp, replica = await self._send("POST", "/v1/score", **_score_request_kwargs(prepared, prompt, opts))
        return _parse(ScoreResponse, resp, replica)

    async def score_batch(
        self,
        videos: Sequence[VideoInput],
        prompts: Sequence[str],
        *,
        options: ScoreOptions | dict[str, Any] | None = None,
        batch_size: int = 16,
        return_exceptions: bool = False,
    ) -> list[ScoreResponse | LiftError]:
        items, opts = await asyncio.to_thread(_batch_items, videos, prompts, options, batch_size)
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

        async def run(chunk: list[tuple[PreparedVideo, str]]) -> list[ScoreResponse | LiftError]:
            try:
                resp, replica = await self._send("POST", "/v1/score/batch", json=_batch_body(chunk, opts))
            except LiftError as exc:
                if not return_exceptions:
                    raise
                return [exc] * len(chunk)
            return _batch_results(_parse(BatchScoreResponse, resp, replica), len(chunk))

        parts = await asyncio.gather(*(run(c) for c in chunks))
        return _finish([r for part in parts for r in part], return_exceptions)

    async def health(self) -> dict[str, Any]:
        last: BaseException | None = None
        for r in self.replicas:
            try:
                resp = await self._http.get(r.url + "/health", timeout=self.timeout.connect or 5.0)
            except httpx.TransportError as exc:
                last = exc
                continue
            if resp.status_code == 200:
                return resp.json()
            last = error_from_response(resp.status_code, resp.content, resp.headers, r.url)
        raise _unreachable(self.base_urls, last)

    async def ready(self) -> bool:
        return any((await self.replicas_ready()).values())

    async def replicas_ready(self) -> dict[str, bool]:
        async def one(r: Replica) -> bool:
            try:
                return (await self._http.get(r.url + "/ready", timeout=self.timeout.connect or 5.0)).status_code == 200
            except httpx.TransportError:
                return False

        states = await asyncio.gather(*(one(r) for r in self.replicas))
        return {r.url: s for r, s in zip(self.replicas, states)}

    async def wait_ready(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if time.monotonic() > deadline:
                raise _unreachable(self.base_urls, None, f"not ready after {timeout_s:.0f}s")
            await asyncio.sleep(poll_s)

    async def models(self) -> ModelList:
        resp, replica = await self._send("GET", "/v1/models")
        return _parse(ModelList, resp, replica)


def _batch_items(
    videos: Sequence[VideoInput], prompts: Sequence[str], options: Any, batch_size: int
) -> tuple[list[tuple[PreparedVideo, str]], ScoreOptions | None]:
    if len(videos) != len(prompts):
        raise InvalidRequest(f"{len(videos)} videos but {len(prompts)} prompts", param="prompts")
    if not 1 <= batch_size <= MAX_BATCH_ITEMS:
        raise InvalidRequest(f"batch_size must be 1..{MAX_BATCH_ITEMS}", param="batch_size")
    for p in prompts:
        _check_prompt(p)
    return [(prepare_video(v), p) for v, p in zip(videos, prompts)], _options(options)


def _finish(results: list[ScoreResponse | LiftError], return_exceptions: bool) -> list[ScoreResponse | LiftError]:
    if not return_exceptions:
        for r in results:
            if isinstance(r, LiftError):
                raise r
    return results


def _unreachable(urls: list[str], last: BaseException | None, why: str = "no replica answered") -> LiftError:
    from .errors import ServiceUnreachable

    if isinstance(last, LiftError):
        return last
    detail = f": {type(last).__name__}: {last}" if last is not None else ""
    return ServiceUnreachable(f"{why} [{', '.join(urls)}]{detail}")

