"""Async scoring jobs (enqueue now, pull later): bounded, with a real failed state, and results that expire.

- Bounded: at most `max_pending` jobs are unfinished at once; `create` past that raises `Overloaded` (429 with
  Retry-After), so nothing is ever accepted and then dropped.
- A job ends `done` (its result) or `failed` (a code and a reason a person can act on). A job whose worker
  vanished (its replica stopped before finishing) reads as failed once its deadline passes, never pending forever.
- Finished jobs are kept `ttl_s` seconds, then forgotten (a pull after that is "unknown job").

`MemoryJobStore` lives in the process (one replica). `RedisJobStore` (when `LIFT_REDIS_URL` is set) lets any
replica behind a load balancer answer a pull for a job another replica enqueued; the bound is then shared too,
checked and taken in one Lua script so two replicas cannot both take the last slot.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.errors import JobStoreUnavailable, Overloaded

JobState = Literal["pending", "done", "failed"]
WORKER_LOST = "worker_lost"


@dataclass
class Job:
    id: str
    state: JobState
    created: float
    deadline: float  # a pending job past this is failed (its worker is gone)
    info: dict[str, Any] = field(default_factory=dict)  # what was asked, echoed back on pull
    result: dict[str, Any] | None = None  # the adapter's result (its scores' provenance included)
    error: dict[str, str] | None = None  # {"code", "message"}
    finished: float | None = None

    def settled(self, now: float) -> "Job":
        """The job as a reader should see it: an abandoned pending job is failed."""
        if self.state == "pending" and now > self.deadline:
            self.state = "failed"
            self.error = {"code": WORKER_LOST, "message": "the replica scoring this job stopped before it finished; "
                          "enqueue it again"}
        return self

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "state": self.state, "created": self.created, "deadline": self.deadline,
                           "info": self.info, "result": self.result, "error": self.error, "finished": self.finished})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        d = json.loads(text)
        return cls(d["id"], d["state"], d["created"], d["deadline"], d.get("info") or {}, d.get("result"),
                   d.get("error"), d.get("finished"))


class JobStore(Protocol):
    max_pending: int
    ttl_s: float

    async def create(self, info: dict[str, Any], *, run_timeout_s: float) -> Job: ...
    async def finish(self, job_id: str, result: dict[str, Any]) -> None: ...
    async def fail(self, job_id: str, code: str, message: str) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def pending(self) -> int: ...
    async def aclose(self) -> None: ...


def _full(max_pending: int, retry_after_s: float) -> Overloaded:
    return Overloaded(f"{max_pending} reward jobs are already pending (LIFT_JOBS_MAX_PENDING); retry later",
                      retry_after_s=retry_after_s)


class MemoryJobStore:
    """Jobs in this process's memory (one event loop: no locks needed)."""

    def __init__(self, max_pending: int = 256, ttl_s: float = 3600.0, *, max_stored: int | None = None,
                 clock: Any = time.time) -> None:
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        # Finished results stay until they expire; this bounds the memory they hold (refuse, never evict).
        self.max_stored = max_stored if max_stored is not None else 16 * max_pending
        self._clock = clock
        self._jobs: dict[str, Job] = {}

    def _sweep(self, now: float) -> None:
        for job_id in [j.id for j in self._jobs.values()
                       if j.finished is not None and now - j.finished > self.ttl_s]:
            del self._jobs[job_id]
        for job in self._jobs.values():  # abandoned pending jobs start their TTL when they turn failed
            if job.state == "pending" and now > job.deadline:
                job.settled(now).finished = now

    async def pending(self) -> int:
        now = self._clock()
        self._sweep(now)
        return sum(1 for j in self._jobs.values() if j.state == "pending")

    async def create(self, info: dict[str, Any], *, run_timeout_s: float) -> Job:
        if await self.pending() >= self.max_pending:
            raise _full(self.max_pending, max(1.0, run_timeout_s / 4))
        if len(self._jobs) >= self.max_stored:
            raise Overloaded(f"{len(self._jobs)} job results are held until they expire (LIFT_JOBS_TTL_S="
                             f"{self.ttl_s:g}s); retry later", retry_after_s=max(1.0, min(self.ttl_s, 60.0)))
        now = self._clock()
        job = Job(uuid.uuid4().hex, "pending", now, now + run_timeout_s, info)
        self._jobs[job.id] = job
        return job

    async def finish(self, job_id: str, result: dict[str, Any]) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state == "pending":
            job.state, job.result, job.finished = "done", result, self._clock()

    async def fail(self, job_id: str, code: str, message: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state == "pending":
            job.state, job.error, job.finished = "failed", {"code": code, "message": message}, self._clock()

    async def get(self, job_id: str) -> Job | None:
        now = self._clock()
        self._sweep(now)
        job = self._jobs.get(job_id)
        return None if job is None else job.settled(now)

    async def aclose(self) -> None:
        return None


def redis_client(url: str) -> Any:
    """An async Redis client with the service's timeouts (connect 5 s, each command 10 s). Every Redis-backed
    store (jobs here, repeats in `service.app.idempotency`) connects this way."""
    import redis.asyncio as aioredis

    return aioredis.from_url(url, socket_connect_timeout=5, socket_timeout=10)


async def redis_call(coro: Any, what: str) -> Any:
    """Await one Redis command; unreachable or too slow -> JobStoreUnavailable naming `what` (a 503: the service is
    degraded, not the client's fault)."""
    import redis.exceptions

    try:
        return await coro
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise JobStoreUnavailable(f"{what} (Redis at LIFT_REDIS_URL) is unreachable: {type(exc).__name__}") from None


# KEYS[1] = pending zset (member: job id, score: deadline), KEYS[2] = job key.
# ARGV: now, max_pending, deadline, job id, job json, job key ttl (s). Returns 1 if taken, 0 if full.
_CREATE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
return 1
"""
# KEYS[1] = pending zset, KEYS[2] = job key. ARGV: job id, new json, ttl. Only a pending job is finished.
_FINISH_LUA = """
local cur = redis.call('GET', KEYS[2])
if not cur then return 0 end
if cjson.decode(cur)['state'] ~= 'pending' then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class RedisJobStore:
    """Jobs in Redis, shared by every replica that names the same `LIFT_REDIS_URL` (and key prefix)."""

    def __init__(self, url: str, max_pending: int = 256, ttl_s: float = 3600.0, *, prefix: str = "lift:jobs:",
                 clock: Any = time.time) -> None:
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._clock = clock
        self._redis = redis_client(url)
        self._create = self._redis.register_script(_CREATE_LUA)
        self._finish_script = self._redis.register_script(_FINISH_LUA)
        self.url = url

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    @property
    def _pending_key(self) -> str:
        return f"{self.prefix}pending"

    async def _call(self, coro: Any) -> Any:
        return await redis_call(coro, "the job store")

    async def pending(self) -> int:
        await self._call(self._redis.zremrangebyscore(self._pending_key, "-inf", self._clock()))
        return int(await self._call(self._redis.zcard(self._pending_key)))

    async def create(self, info: dict[str, Any], *, run_timeout_s: float) -> Job:
        now = self._clock()
        job = Job(uuid.uuid4().hex, "pending", now, now + run_timeout_s, info)
        # The key outlives the deadline by the TTL, so an abandoned job can still be read as failed.
        key_ttl = int(run_timeout_s + self.ttl_s) + 1
        taken = await self._call(self._create(keys=[self._pending_key, self._key(job.id)],
                                              args=[now, self.max_pending, job.deadline, job.id, job.to_json(), key_ttl]))
        if not int(taken):
            raise _full(self.max_pending, max(1.0, run_timeout_s / 4))
        return job

    async def _settle(self, job_id: str, update: dict[str, Any]) -> None:
        raw = await self._call(self._redis.get(self._key(job_id)))
        if raw is None:
            return
        job = Job.from_json(raw)
        for k, v in update.items():
            setattr(job, k, v)
        job.finished = self._clock()
        await self._call(self._finish_script(keys=[self._pending_key, self._key(job_id)],
                                             args=[job_id, job.to_json(), max(1, int(self.ttl_s))]))

    async def finish(self, job_id: str, result: dict[str, Any]) -> None:
        await self._settle(job_id, {"state": "done", "result": result})

    async def fail(self, job_id: str, code: str, message: str) -> None:
        await self._settle(job_id, {"state": "failed", "error": {"code": code, "message": message}})

    async def get(self, job_id: str) -> Job | None:
        raw = await self._call(self._redis.get(self._key(job_id)))
        return None if raw is None else Job.from_json(raw).settled(self._clock())

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_job_store(redis_url: str | None, *, max_pending: int, ttl_s: float) -> JobStore:
    if redis_url:
        return RedisJobStore(redis_url, max_pending, ttl_s)
    return MemoryJobStore(max_pending, ttl_s)
