"""Safe retries: a repeated scoring request is answered with the first result and never scored twice.

Trainers resend (read from their code): Flow-Factory's client posts the same body again, byte for byte, up to 3 times
with no pause after any 4xx/5xx or timeout; Cosmos-RL's retries enqueue with backoff after a 5xx, 408/425/429 or a
timeout; UniRL's resends a chunk after a timeout, a 5xx or a 429; FastVideo's resends a whole group after a 300 s
timeout, and its own server answers repeats from a cache keyed by request id alone, so a resumed run that reuses
ids is answered with the old run's scores. Here a request is a repeat only when it carries the same key AND the same
content (a SHA-256 over the route, the prompt(s), the media bytes as sent and the options):

- same key, same content, first one finished: the first answer, byte for byte (`Idempotent-Replayed: true`);
- same key, same content, first one still being scored: waits for it (one scoring, two answers); across replicas
  (LIFT_REDIS_URL) the waiter polls Redis;
- same key, other content: `IdempotencyConflict` (409 naming the key), never the other request's score.

Keys, per route:
- `/v1/score`, `/v1/score/batch`: the `Idempotency-Key` header. Without one, nothing is remembered (a client that
  samples at temperature > 0 may want a fresh answer each time). A batch's key covers the whole batch (its content
  is every item); its items are remembered one by one, so a retried batch scores only the items whose first attempt
  failed for a reason worth retrying.
- Adapters use the protocol's own ids where it has them: UniRL's `/score`, the chunk's per-sample `request_id`s (newer
  UniRL clients send them). Flow-Factory's `/compute` and Cosmos-RL's enqueue carry none (nor does UniRL's older
  client): there the key is the `Idempotency-Key` header when a client sends one, else the content hash itself.
  Such a key cannot detect "same key, other content" (other content is another key): it only recognises an exact
  repeat, which is what those clients' retries are. That is safe because adapters score greedily: the same content
  gets the same score anyway, so answering a deliberate repeat from memory changes no number.

A failed first attempt is remembered only when the failure is the request's own and would come back the same: a 4xx
for bad input (an undecodable or oversized video, invalid fields). Such a repeat gets the same error without decoding
the video again (Flow-Factory resends a 256-video call with one broken frame 3 times). Never remembered: 5xx, timeouts,
429 (overload), and 4xx that can heal (a URL that failed to download, a path not there yet, a replica without the
latent VAE): the next attempt really runs again. An attempt cut short (cancelled, the replica stopping) forgets its
claim too.

Bounded: finished entries live LIFT_IDEMPOTENCY_TTL_S and at most LIFT_IDEMPOTENCY_MAX_ENTRIES are kept (the oldest
go first); 0 entries turns it off. Keys are scoped by the deployment's answer-shaping settings (critic, scoring rule,
adapter reward, size limits) and by the caller's bearer key, so two deployments or two tenants never share answers.
With LIFT_REDIS_URL the entries live in Redis (`lift:idem:`), shared by replicas; if Redis cannot be reached the
request is scored without repeat detection (counted in `lift_idempotency_store_errors_total`), never refused for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from service.app import context
from service.app.errors import STATUS, error_detail, status_of
from service.app.metrics import ServiceMetrics
from service.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    JobPending,
    JobStoreUnavailable,
    LatentDecoderNotConfigured,
    LiftError,
    MediaFetchError,
    MediaNotFound,
    Overloaded,
    Unauthorized,
)

log = logging.getLogger("lift.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_OFFLOAD_HASH_BYTES = 256 * 1024  # hash bigger contents in a thread: keep the event loop responsive
_POLL_FIRST_S, _POLL_MAX_S = 0.02, 0.5  # waiting on another replica's scoring: poll Redis, backing off

# 4xx that a retry may heal: never remembered.
_HEALABLE_4XX: tuple[type[LiftError], ...] = (
    Overloaded, MediaFetchError, MediaNotFound, LatentDecoderNotConfigured, JobPending, JobNotFound, Unauthorized,
    IdempotencyConflict,
)


def _status_of_type(cls: type[LiftError]) -> int:
    for c in cls.__mro__:
        if c in STATUS:
            return STATUS[c]  # type: ignore[index]
    return 500


def _cacheable_type(cls: type[LiftError]) -> bool:
    return 400 <= _status_of_type(cls) < 500 and not issubclass(cls, _HEALABLE_4XX)


def cacheable(exc: LiftError) -> bool:
    """Whether a first attempt's error is the request's own and final (remembered), or worth retrying (not)."""
    return 400 <= status_of(exc) < 500 and not isinstance(exc, _HEALABLE_4XX)


def _error_types(root: type[LiftError] = LiftError) -> list[type[LiftError]]:
    out = [root]
    for sub in root.__subclasses__():
        out += _error_types(sub)
    return out


def cacheable_code(code: str) -> bool:
    """The same rule for a failure known only by its code (a finished job's): final when every error type with that
    code is. Codes of no type (timeout of a job, worker lost, shutdown, a crash) are worth retrying."""
    types = [t for t in _error_types() if t.code == code]
    return bool(types) and all(_cacheable_type(t) for t in types)


# ---- content ---------------------------------------------------------------------------------------------
def _size(part: Any) -> int:
    if isinstance(part, (str, bytes, memoryview)):
        return len(part)
    if isinstance(part, (list, tuple)):
        return sum(_size(p) for p in part)
    if isinstance(part, dict):
        return sum(_size(k) + _size(v) for k, v in part.items())
    return 8


def _feed(h: Any, part: Any) -> None:
    # Each part is typed and length-prefixed: ("ab", "c") and ("a", "bc") never hash alike.
    if part is None:
        h.update(b"N;")
    elif isinstance(part, (bytes, bytearray, memoryview)):
        h.update(b"B%d:" % len(part))
        h.update(part)
    elif isinstance(part, str):
        data = part.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data))
        h.update(data)
    elif isinstance(part, (list, tuple)):
        h.update(b"L%d:" % len(part))
        for p in part:
            _feed(h, p)
    elif isinstance(part, BaseModel):
        _feed(h, part.model_dump_json())
    else:  # numbers, booleans, dicts: canonical JSON
        _feed(h, json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


def _digest(parts: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()


async def content_hash(route: str, *parts: Any) -> str:
    """SHA-256 over the route and the request's content (prompts, media as sent, options); big ones in a thread."""
    material = (route, *parts)
    if _size(material) > _OFFLOAD_HASH_BYTES:
        return await asyncio.to_thread(_digest, material)
    return _digest(material)


# ---- what is remembered --------------------------------------------------------------------------------------
@dataclass
class Record:
    content: str
    state: Literal["pending", "done"]
    owner: str = ""  # pending: who is scoring it (replica token + call)
    deadline: float = 0.0  # pending: wall-clock time after which its owner is presumed gone
    status: int = 200  # done: the answer's status and body
    body: bytes = b""

    def to_json(self) -> str:
        return json.dumps({"c": self.content, "s": self.state, "o": self.owner, "d": self.deadline,
                           "st": self.status, "b": self.body.decode("utf-8")})

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Record":
        d = json.loads(raw)
        return cls(d["c"], d["s"], d.get("o", ""), float(d.get("d", 0.0)), int(d.get("st", 200)),
                   str(d.get("b", "")).encode("utf-8"))


@dataclass(frozen=True)
class Key:
    store: str  # scoped, as stored
    shown: str  # as the client sent it (named in a 409)
    name: str = HEADER  # what the client calls it (the header, or a protocol's id field)


@dataclass
class Outcome:
    status: int
    body: bytes
    replayed: bool = False
    value: Any = None  # the first caller's own result object (replays have only the body)

    def response(self) -> Response:
        headers = {REPLAYED_HEADER: "true"} if self.replayed else None
        if self.replayed and self.status >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                context.note_error(json.loads(self.body)["error"]["code"])  # the access log names the error
        return Response(self.body, status_code=self.status, media_type="application/json", headers=headers)


class Backend(Protocol):
    async def claim(self, key: str, record: Record) -> Record | None: ...
    async def finish(self, key: str, record: Record) -> None: ...
    async def release(self, key: str, owner: str) -> None: ...
    async def get(self, key: str) -> Record | None: ...
    async def forget(self, key: str, content: str) -> None: ...
    async def aclose(self) -> None: ...


class MemoryBackend:
    """This process's memory (one replica). One event loop: no locks needed."""

    def __init__(self, max_entries: int, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._pending: dict[str, Record] = {}
        self._done: OrderedDict[str, tuple[float, Record]] = OrderedDict()  # key -> (expires, record), oldest first

    def __len__(self) -> int:
        return len(self._done)

    def _sweep(self, now: float) -> None:
        while self._done:
            key, (expires, _) = next(iter(self._done.items()))
            if expires > now:
                break
            del self._done[key]

    async def claim(self, key: str, record: Record) -> Record | None:
        now = self._clock()
        self._sweep(now)
        if key in self._done:
            return self._done[key][1]
        cur = self._pending.get(key)
        if cur is not None and cur.deadline > now:
            return cur
        if record.state == "done":
            await self.finish(key, record)
        else:
            self._pending[key] = record
        return None

    async def finish(self, key: str, record: Record) -> None:
        cur = self._pending.get(key)
        if cur is not None:
            if cur.owner != record.owner:
                return  # our claim lapsed and another call took over: its answer will be stored
            del self._pending[key]
        self._done.pop(key, None)
        self._done[key] = (self._clock() + self.ttl_s, Record(record.content, "done", status=record.status,
                                                               body=record.body))
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)

    async def release(self, key: str, owner: str) -> None:
        cur = self._pending.get(key)
        if cur is not None and cur.owner == owner:
            del self._pending[key]

    async def get(self, key: str) -> Record | None:
        now = self._clock()
        self._sweep(now)
        if key in self._done:
            return self._done[key][1]
        cur = self._pending.get(key)
        return cur if cur is not None and cur.deadline > now else None

    async def forget(self, key: str, content: str) -> None:
        entry = self._done.get(key)
        if entry is not None and entry[1].content == content:
            del self._done[key]

    async def aclose(self) -> None:
        return None


# KEYS[1] = entry. ARGV: record json, ttl ms. Returns the existing entry, or nil once ours is set.
_CLAIM_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# KEYS[1] = entry, KEYS[2] = index zset (member: entry key, score: finish time).
# ARGV: record json, owner, ttl ms, now s, ttl s, max entries. A lapsed claim taken over by another call is left alone.
_FINISH_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local rec = cjson.decode(cur)
  if rec['s'] == 'pending' and rec['o'] ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[5]))
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  for _, k in ipairs(old) do redis.call('DEL', k) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return 1
"""
# KEYS[1] = entry. ARGV: owner. Only our own pending claim is dropped.
_RELEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if rec['s'] == 'pending' and rec['o'] == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
# KEYS[1] = entry, KEYS[2] = index. ARGV: content. Only a finished entry for that content is dropped.
_FORGET_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if rec['s'] == 'done' and rec['c'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  return 1
end
return 0
"""


class RedisBackend:
    """Entries in Redis, shared by every replica naming the same LIFT_REDIS_URL (connection as the job store's)."""

    def __init__(self, url: str, max_entries: int, ttl_s: float, *, prefix: str = "lift:idem:",
                 clock: Callable[[], float] = time.time) -> None:
        from service.jobs import redis_client

        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._clock = clock
        self._redis = redis_client(url)
        self._claim = self._redis.register_script(_CLAIM_LUA)
        self._finish = self._redis.register_script(_FINISH_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)
        self._forget = self._redis.register_script(_FORGET_LUA)

    def _k(self, key: str) -> str:
        return f"{self.prefix}{key}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}index"

    async def _call(self, coro: Any) -> Any:
        from service.jobs import redis_call

        return await redis_call(coro, "the idempotency store")

    async def claim(self, key: str, record: Record) -> Record | None:
        if record.state == "done":
            ttl_ms = int(self.ttl_s * 1000)
        else:
            ttl_ms = max(1000, int((record.deadline - self._clock()) * 1000))
        raw = await self._call(self._claim(keys=[self._k(key)], args=[record.to_json(), ttl_ms]))
        if raw is None:
            if record.state == "done":  # index it, so that the count bound sees it
                await self.finish(key, record)
            return None
        return Record.from_json(raw)

    async def finish(self, key: str, record: Record) -> None:
        done = Record(record.content, "done", status=record.status, body=record.body)
        await self._call(self._finish(keys=[self._k(key), self._index], args=[
            done.to_json(), record.owner, int(self.ttl_s * 1000), self._clock(), self.ttl_s, self.max_entries]))

    async def release(self, key: str, owner: str) -> None:
        await self._call(self._release(keys=[self._k(key)], args=[owner]))

    async def get(self, key: str) -> Record | None:
        raw = await self._call(self._redis.get(self._k(key)))
        return None if raw is None else Record.from_json(raw)

    async def forget(self, key: str, content: str) -> None:
        await self._call(self._forget(keys=[self._k(key), self._index], args=[content]))

    async def aclose(self) -> None:
        await self._redis.aclose()


# ---- the one way in ----------------------------------------------------------------------------------------------
Work = Callable[[], Awaitable[Any]]


def _to_body(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode("utf-8")
    # as JSONResponse renders it
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class Idempotency:
    """Recognises repeats and answers them from the first result. One per app (`ScoringService.idempotency`)."""

    def __init__(self, backend: Backend | None, metrics: ServiceMetrics, *, pending_s: float,
                 namespace: Callable[[], str] = lambda: "") -> None:
        self.backend = backend  # None: off (LIFT_IDEMPOTENCY_MAX_ENTRIES=0)
        self.metrics = metrics
        self.pending_s = pending_s
        self._namespace = namespace
        self._ns: str | None = None
        self._token = uuid.uuid4().hex[:12]  # this replica, in the owner of its claims
        self._calls = 0
        self._local: dict[str, asyncio.Event] = {}  # claims this replica holds: their waiters here need not poll

    @classmethod
    def from_settings(cls, settings: Any, metrics: ServiceMetrics, namespace: Callable[[], str]) -> "Idempotency":
        pending_s = float(settings.request_timeout_s) + 30.0
        backend: Backend | None = None
        if settings.idempotency_max_entries > 0:
            if settings.redis_url is not None:
                backend = RedisBackend(settings.redis_url.get_secret_value(), settings.idempotency_max_entries,
                                       settings.idempotency_ttl_s)
            else:
                backend = MemoryBackend(settings.idempotency_max_entries, settings.idempotency_ttl_s)
        return cls(backend, metrics, pending_s=pending_s, namespace=namespace)

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    async def aclose(self) -> None:
        if self.backend is not None:
            await self.backend.aclose()

    # -- keys --------------------------------------------------------------------------------------------------
    def _scope(self, request: Request | None) -> str:
        if self._ns is None:
            self._ns = self._namespace()
        auth = request.headers.get("authorization") if request is not None else None
        who = hashlib.sha256(auth.encode("utf-8", "surrogatepass")).hexdigest()[:16] if auth else "-"
        return f"{self._ns}:{who}"

    def header_key(self, request: Request) -> str | None:
        """The `Idempotency-Key` header, checked (visible ASCII, at most 255 characters); None when absent."""
        raw = request.headers.get(HEADER)
        if raw is None:
            return None
        if not 1 <= len(raw) <= MAX_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in raw):
            raise InvalidRequest(f"{HEADER} must be 1 to {MAX_KEY_CHARS} visible ASCII characters", param=HEADER)
        return raw

    def key(self, request: Request | None, given: str, *, kind: str = "key", name: str = HEADER) -> Key:
        """A client's key (or a protocol's id, or a content hash: `kind` keeps them apart), scoped to this deployment
        and the caller's bearer key; `name` is what the client calls it."""
        return Key(f"{self._scope(request)}:{kind}:{given}", given, name)

    # -- the route's call ------------------------------------------------------------------------------------------
    async def answer(self, request: Request, route: str, parts: Sequence[Any], work: Work, *,
                     by_content: bool = False, ids: tuple[str, str] | None = None,
                     reuse: Callable[[Outcome], Awaitable[bool]] | None = None,
                     pending_s: float | None = None) -> Response:
        """Answer a route's request: `work()` returns the 200 body (a model or a dict) or raises. The key is the
        `Idempotency-Key` header, else the protocol's ids (`(field name, value)`), else (with `by_content`) the content
        hash; with none, `work()` runs as if this module did not exist."""
        given = self.header_key(request)
        if not self.enabled or (given is None and ids is None and not by_content):
            return Outcome(200, _to_body(await work())).response()
        content = await content_hash(route, *parts)
        if given is not None:
            key = self.key(request, given)
        elif ids is not None:
            key = self.key(request, ids[1], kind="ids", name=ids[0])
        else:
            key = self.key(request, content, kind="content")
        outcome = await self.run(route, key, content, work, reuse=reuse, pending_s=pending_s)
        return outcome.response()

    async def run(self, route: str, key: Key, content: str, work: Work, *,
                  reuse: Callable[[Outcome], Awaitable[bool]] | None = None, pending_s: float | None = None,
                  count: bool = True) -> Outcome:
        """At most one `work()` per key and content at a time, and none while its answer is remembered."""
        backend = self.backend
        if backend is None:
            value = await work()
            return Outcome(200, _to_body(value), value=value)
        waited = False
        while True:
            self._calls += 1
            owner = f"{self._token}:{self._calls}"
            deadline = time.time() + (pending_s or self.pending_s)
            try:
                cur = await backend.claim(key.store, Record(content, "pending", owner=owner, deadline=deadline))
            except JobStoreUnavailable as exc:
                return await self._unremembered(exc, work)
            if cur is None:
                return await self._own(route, key, content, owner, work)
            if cur.content != content:
                self.metrics.idempotency_conflicts.labels(route=route).inc()
                raise IdempotencyConflict(
                    f"{key.name} {key.shown!r} was already used for a request with other content (prompt, video or "
                    f"options differ); a new request needs a new key", param=key.name)
            if cur.state == "done":
                outcome = Outcome(cur.status, cur.body, replayed=True)
                if reuse is not None and not await reuse(outcome):
                    await self._quietly(backend.forget(key.store, content))
                    continue
                if count:
                    self.metrics.idempotent_replays.labels(route=route, waited=str(waited).lower()).inc()
                return outcome
            waited = True
            await self._wait(key.store, cur)

    async def _own(self, route: str, key: Key, content: str, owner: str, work: Work) -> Outcome:
        backend = self.backend
        assert backend is not None
        event = self._local[key.store] = asyncio.Event()
        try:
            try:
                value = await work()
            except LiftError as exc:
                if cacheable(exc):
                    body = _to_body({"error": error_detail(exc).model_dump()})  # as error_response writes it
                    await self._quietly(backend.finish(key.store, Record(content, "pending", owner=owner,
                                                                         status=status_of(exc), body=body)))
                else:
                    await self._quietly(backend.release(key.store, owner))
                raise
            except BaseException:  # cancelled (deadline, shutdown) or a bug: the next attempt runs again
                await self._quietly(asyncio.shield(backend.release(key.store, owner)))
                raise
            body = _to_body(value)
            await self._quietly(backend.finish(key.store, Record(content, "pending", owner=owner, body=body)))
            return Outcome(200, body, value=value)
        finally:
            if self._local.get(key.store) is event:
                del self._local[key.store]
            event.set()

    async def _wait(self, store_key: str, cur: Record) -> None:
        """Until the pending entry is settled: on this replica's event, or by polling the shared store."""
        left = max(0.05, cur.deadline - time.time())
        event = self._local.get(store_key)
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except TimeoutError:
                pass
            return
        backend = self.backend
        assert backend is not None
        delay, end = _POLL_FIRST_S, time.monotonic() + left
        while time.monotonic() < end:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)
            try:
                now = await backend.get(store_key)
            except JobStoreUnavailable:
                return
            if now is None or now.state == "done" or now.owner != cur.owner:
                return

    async def _unremembered(self, exc: LiftError, work: Work) -> Outcome:
        self.metrics.idempotency_store_errors.inc()
        log.warning("scoring without repeat detection: %s", exc.message)
        value = await work()
        return Outcome(200, _to_body(value), value=value)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except JobStoreUnavailable as exc:  # the answer still goes out; only its memory is lost
            self.metrics.idempotency_store_errors.inc()
            log.warning("could not record a request for repeats: %s", exc.message)

    # -- batches ---------------------------------------------------------------------------------------------------
    async def batch(self, request: Request, route: str, items: Sequence[Any]) -> "BatchItems | None":
        """A keyed batch: its key is checked against the whole batch's content now (409 before anything is scored),
        and each item is then remembered on its own (`BatchItems.run`). None without a key."""
        given = self.header_key(request)
        if not self.enabled or given is None:
            return None
        content = await content_hash(route, items)
        key = self.key(request, given)
        backend = self.backend
        assert backend is not None
        try:
            cur = await backend.claim(key.store, Record(content, "done"))
        except JobStoreUnavailable as exc:
            self.metrics.idempotency_store_errors.inc()
            log.warning("scoring a batch without repeat detection: %s", exc.message)
            return None
        if cur is not None and cur.content != content:
            self.metrics.idempotency_conflicts.labels(route=route).inc()
            raise IdempotencyConflict(f"{HEADER} {given!r} was already used for a request with other content "
                                      f"(the items differ); a new request needs a new key", param=HEADER)
        return BatchItems(self, route, key, content)


@dataclass
class BatchItems:
    """One keyed batch's items, each remembered under the batch's key and its position."""

    idempotency: Idempotency
    route: str
    key: Key
    content: str

    async def run(self, i: int, work: Work) -> Outcome:
        item = Key(f"{self.key.store}#{i}", self.key.shown)
        return await self.idempotency.run(self.route, item, self.content, work)


def deployment_namespace(settings: Any, critic: Any) -> str:
    """What shapes an answer besides the request: the critic, the scoring rule, the adapters' number and the size
    limits. Replicas that agree on these share answers; a changed deployment never replays an old one."""
    card = critic.model_card() if hasattr(critic, "model_card") else None
    shaping = settings.model_dump(mode="json", include={"scoring", "adapter_reward", "adapter_rationale",
                                                        "max_video_bytes", "max_frames_bytes"})
    material = json.dumps([card.model_dump(mode="json") if card is not None else None, shaping], sort_keys=True)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
