"""The idempotency store on its own (service.app.idempotency): one scoring per key and content, conflicts, which
failures are remembered, the bounds, and two replicas on a real redis-server. The HTTP routes and adapters on the real
engine: tests/integration/test_idempotency.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.app.idempotency import (
    Idempotency,
    Key,
    MemoryBackend,
    RedisBackend,
    cacheable,
    cacheable_code,
    content_hash,
)
from service.app.metrics import ServiceMetrics
from service.errors import (
    EngineError,
    IdempotencyConflict,
    InvalidVideo,
    MediaFetchError,
    Overloaded,
    RequestTimeout,
    VideoTooLarge,
)


def memory_store(max_entries: int = 100, ttl_s: float = 60.0, clock: Any = time.time) -> Idempotency:
    return Idempotency(MemoryBackend(max_entries, ttl_s, clock=clock), ServiceMetrics(), pending_s=30.0)


class Counted:
    """A scoring stand-in that takes `delay` seconds and counts its calls; `fail` raises on the first calls."""

    def __init__(self, value: Any = None, delay: float = 0.0, fail: list[Exception] | None = None) -> None:
        self.calls = 0
        self.value = value if value is not None else {"reward": 0.5}
        self.delay = delay
        self.fail = list(fail or [])

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail.pop(0)
        return {**self.value, "call": self.calls}


def replays(store: Idempotency, route: str = "r") -> dict[str, float]:
    out = {}
    for waited in ("true", "false"):
        out[waited] = store.metrics.idempotent_replays.labels(route=route, waited=waited)._value.get()
    return out


def test_content_hash_separates_parts_and_types() -> None:
    async def run() -> None:
        assert await content_hash("r", "ab", "c") != await content_hash("r", "a", "bc")
        assert await content_hash("r", b"x") != await content_hash("r", "x")
        assert await content_hash("r", ["a", "b"]) == await content_hash("r", ("a", "b"))
        assert await content_hash("r", {"b": 1, "a": 2}) == await content_hash("r", {"a": 2, "b": 1})
        big = b"\0" * (1024 * 1024)  # hashed in a thread: the same digest
        assert await content_hash("r", big) == await content_hash("r", bytes(big))
        assert await content_hash("/v1/score", "x") != await content_hash("/compute", "x")

    asyncio.run(run())


def test_repeats_back_to_back_and_in_flight_run_once() -> None:
    async def run() -> None:
        store = memory_store()
        work = Counted(delay=0.2)
        key = Key("k1", "k1")
        first = asyncio.create_task(store.run("r", key, "c", work))
        await asyncio.sleep(0.05)  # the first is being scored
        waiting = await asyncio.gather(*(store.run("r", key, "c", work) for _ in range(3)))
        done = await first
        after = [await store.run("r", key, "c", work) for _ in range(3)]
        assert work.calls == 1
        assert not done.replayed and all(o.replayed for o in waiting + after)
        assert {o.body for o in [done, *waiting, *after]} == {done.body}
        assert replays(store) == {"true": 3, "false": 3}

    asyncio.run(run())


def test_same_key_other_content_is_a_conflict_naming_the_key() -> None:
    async def run() -> None:
        store = memory_store()
        await store.run("r", Key("s:k", "my-key"), "c1", Counted())
        with pytest.raises(IdempotencyConflict) as err:
            await store.run("r", Key("s:k", "my-key"), "c2", Counted())
        assert "'my-key'" in err.value.message and err.value.param == "Idempotency-Key"
        assert store.metrics.idempotency_conflicts.labels(route="r")._value.get() == 1
        # while the first is still in flight too
        slow = asyncio.create_task(store.run("r", Key("s:k2", "k2"), "c1", Counted(delay=0.2)))
        await asyncio.sleep(0.05)
        with pytest.raises(IdempotencyConflict):
            await store.run("r", Key("s:k2", "k2"), "c2", Counted())
        await slow

    asyncio.run(run())


@pytest.mark.parametrize("error", [EngineError("engine down"), RequestTimeout("too slow"), Overloaded("busy"),
                                   MediaFetchError("remote 503")])
def test_a_failure_worth_retrying_is_not_remembered(error: Exception) -> None:
    async def run() -> None:
        store = memory_store()
        work = Counted(fail=[error])
        with pytest.raises(type(error)):
            await store.run("r", Key("k", "k"), "c", work)
        again = await store.run("r", Key("k", "k"), "c", work)  # really retried
        assert work.calls == 2 and not again.replayed and again.status == 200

    asyncio.run(run())


def test_a_waiter_retries_itself_when_the_first_fails_worth_retrying() -> None:
    async def run() -> None:
        store = memory_store()
        work = Counted(delay=0.1, fail=[EngineError("engine down")])
        first = asyncio.create_task(store.run("r", Key("k", "k"), "c", work))
        await asyncio.sleep(0.02)
        second = await store.run("r", Key("k", "k"), "c", work)
        with pytest.raises(EngineError):
            await first
        assert work.calls == 2 and second.status == 200 and not second.replayed

    asyncio.run(run())


def test_bad_input_is_remembered_as_first_answered() -> None:
    async def run() -> None:
        store = memory_store()
        work = Counted(fail=[InvalidVideo("not a video", param="video")])
        with pytest.raises(InvalidVideo):
            await store.run("r", Key("k", "k"), "c", work)
        again = await store.run("r", Key("k", "k"), "c", work)
        assert work.calls == 1 and again.replayed and again.status == 422
        assert b'"code":"invalid_video"' in again.body and b'"param":"video"' in again.body

    asyncio.run(run())


def test_a_cancelled_first_attempt_is_forgotten() -> None:
    async def run() -> None:
        store = memory_store()
        work = Counted(delay=5.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await store.run("r", Key("k", "k"), "c", work)
        work.delay = 0.0
        again = await store.run("r", Key("k", "k"), "c", work)
        assert work.calls == 2 and not again.replayed

    asyncio.run(run())


def test_bounded_by_count_and_ttl() -> None:
    now = [1000.0]

    async def run() -> None:
        store = memory_store(max_entries=2, ttl_s=10.0, clock=lambda: now[0])
        work = Counted()
        for k in ("a", "b", "c"):
            await store.run("r", Key(k, k), "c", work)
        assert len(store.backend) == 2  # type: ignore[arg-type]
        assert not (await store.run("r", Key("a", "a"), "c", work)).replayed  # the oldest went first
        assert (await store.run("r", Key("c", "c"), "c", work)).replayed
        now[0] += 11.0
        assert not (await store.run("r", Key("c", "c"), "c", work)).replayed  # expired

    asyncio.run(run())


def test_which_failures_are_final() -> None:
    assert cacheable(InvalidVideo("x")) and cacheable(VideoTooLarge("x"))
    assert not any(cacheable(e) for e in (EngineError("x"), RequestTimeout("x"), Overloaded("x"), MediaFetchError("x"),
                                          IdempotencyConflict("x")))
    assert cacheable_code("invalid_video") and cacheable_code("video_too_large")
    for code in ("timeout", "engine_error", "engine_dead", "overloaded", "worker_lost", "shutdown", "internal_error",
                 "media_fetch_failed", "latent_vae_not_configured"):
        assert not cacheable_code(code), code


# ---- two replicas, one real redis-server ------------------------------------------------------------------------
# redis_url: a real redis-server per test (tests/conftest.py)


def redis_store(url: str, max_entries: int = 100, ttl_s: float = 60.0) -> Idempotency:
    return Idempotency(RedisBackend(url, max_entries, ttl_s, prefix="t:"), ServiceMetrics(), pending_s=30.0)


def test_replicas_share_answers_and_wait_for_each_other(redis_url: str) -> None:
    async def run() -> None:
        a, b = redis_store(redis_url), redis_store(redis_url)
        try:
            work = Counted(delay=0.3)
            first = asyncio.create_task(a.run("r", Key("k", "k"), "c", work))
            await asyncio.sleep(0.05)
            on_b = await b.run("r", Key("k", "k"), "c", work)  # polls Redis until A's answer is there
            done = await first
            assert work.calls == 1 and on_b.replayed and on_b.body == done.body
            assert replays(b) == {"true": 1, "false": 0}
            with pytest.raises(IdempotencyConflict):
                await b.run("r", Key("k", "k"), "other", work)
            failing = Counted(fail=[EngineError("down")])  # a failure on A is not remembered for B
            with pytest.raises(EngineError):
                await a.run("r", Key("f", "f"), "c", failing)
            assert not (await b.run("r", Key("f", "f"), "c", failing)).replayed and failing.calls == 2
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(run())


def test_redis_entries_are_bounded_by_count(redis_url: str) -> None:
    async def run() -> None:
        store = redis_store(redis_url, max_entries=3)
        try:
            work = Counted()
            for i in range(5):
                await store.run("r", Key(f"k{i}", f"k{i}"), "c", work)
            import redis.asyncio as aioredis

            r = aioredis.from_url(redis_url)
            keys = sorted(k.decode() for k in await r.keys("t:k*"))
            await r.aclose()
            assert keys == ["t:k2", "t:k3", "t:k4"]
            assert not (await store.run("r", Key("k0", "k0"), "c", work)).replayed
        finally:
            await store.aclose()

    asyncio.run(run())


def test_redis_unreachable_scores_without_repeat_detection() -> None:
    from tests.integration.conftest import free_port

    async def run() -> None:
        store = redis_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        try:
            work = Counted()
            out = await store.run("r", Key("k", "k"), "c", work)
            assert out.status == 200 and work.calls == 1
            assert store.metrics.idempotency_store_errors._value.get() >= 1
        finally:
            await store.aclose()

    asyncio.run(run())
