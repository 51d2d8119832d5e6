"""Admission control: a bounded number of requests in the engine, a bounded wait queue, 429 beyond.

vLLM batches continuously, so there is no batching queue here, only a gate:
- `admit()` (whole request, taken before the body is read): at most max_inflight + max_queue requests
  are inside the service at once, which bounds memory under a burst; beyond that, Overloaded (429).
- `engine_slot()` (per scoring call): at most max_inflight calls in the engine; the rest wait in FIFO.
Everything runs on the event loop thread, so plain counters suffice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from service.errors import Overloaded


class Admission:
    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        *,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._admitted = 0
        self._inflight = 0
        self._waiting = 0
        self._slots = asyncio.Semaphore(max_inflight)
        self._on_change = on_change  # (inflight, queued) -> None, for the gauges
        self._avg_engine_s = 1.0  # EWMA of engine time, for Retry-After

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def admitted(self) -> int:
        return self._admitted

    def retry_after_s(self) -> float:
        """Rough time until a queue slot frees: queued work over engine parallelism, times the mean."""
        backlog = self._waiting + self._inflight
        return max(1.0, backlog / self.max_inflight * self._avg_engine_s)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._inflight, self._waiting)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self._admitted >= self.max_inflight + self.max_queue:
            raise Overloaded(
                f"server is at capacity ({self.max_inflight} in the engine, {self.max_queue} queued); retry later",
                retry_after_s=self.retry_after_s(),
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @asynccontextmanager
    async def engine_slot(self) -> AsyncIterator[None]:
        self._waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._changed()
        self._inflight += 1
        self._changed()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._inflight -= 1
            self._slots.release()
            self._avg_engine_s = 0.8 * self._avg_engine_s + 0.2 * (time.perf_counter() - started)
            self._changed()
