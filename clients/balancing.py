"""Which replica gets the next request, when to retry, and how long to wait.

Shared by the sync and the async client (they differ only in how they sleep and send). Retries happen
only where they can help: the request never reached a working server (connection refused/reset, DNS,
connect timeout, a server that died mid-request; scoring is idempotent so re-sending is safe) or the
server said "not now" (429, 503), in which case its Retry-After is honoured. A 4xx will fail the same
way again and a 504 means the work is too slow, so neither is retried.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

from service.errors import LiftError

from .errors import RETRYABLE_STATUS, ServiceUnreachable

Strategy = Literal["least_loaded", "round_robin"]

# Transport errors where the request surely was not answered and another try (elsewhere) can work.
# Read/write timeouts are left out on purpose: the server is alive but slow, and piling on makes it slower.
RETRYABLE_TRANSPORT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,  # server closed the connection mid-request (killed, restarted)
    httpx.ReadError,
    httpx.WriteError,
    httpx.PoolTimeout,
)


@dataclass
class RetryPolicy:
    """How persistent a client is. Delays use exponential backoff with full jitter."""

    max_attempts: int = field(default=6, metadata={"help": "Attempts per request, first one included."})
    backoff_base_s: float = field(default=0.2, metadata={"help": "First backoff ceiling; doubles per failure."})
    backoff_max_s: float = field(default=10.0, metadata={"help": "Largest backoff between attempts."})
    max_retry_after_s: float = field(default=60.0, metadata={"help": "Cap on a server's Retry-After we honour."})
    down_cooldown_max_s: float = field(default=30.0, metadata={"help": "Longest a dead replica is skipped."})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("delays must be >= 0")

    def backoff(self, failures: int) -> float:
        """Full jitter (AWS style): uniform(0, min(max, base * 2**(failures-1)))."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** max(0, failures - 1)))
        return random.uniform(0.0, ceiling)

    def honour_retry_after(self, retry_after_s: float | None, failures: int) -> float:
        if retry_after_s is None:
            return max(self.backoff(failures), self.backoff_base_s)
        # Up to 10 % jitter on top so that many clients told "1 s" do not come back in one instant.
        base = min(retry_after_s, self.max_retry_after_s)
        return base + random.uniform(0.0, 0.1 * base + 0.01)


@dataclass
class Replica:
    url: str
    inflight: int = 0
    available_at: float = 0.0  # monotonic time before which we do not send here
    consecutive_failures: int = 0
    sent: int = 0


class Balancer:
    """Replica choice: least-loaded (by this client's in-flight requests) or round-robin, skipping
    replicas that are cooling down after a failure or a Retry-After."""

    def __init__(self, urls: list[str], strategy: Strategy = "least_loaded", policy: RetryPolicy | None = None):
        if not urls:
            raise ValueError("at least one base URL is needed")
        if strategy not in ("least_loaded", "round_robin"):
            raise ValueError(f"unknown strategy {strategy!r}: use 'least_loaded' or 'round_robin'")
        self.replicas = [Replica(u) for u in urls]
        self.strategy = strategy
        self.policy = policy or RetryPolicy()
        self._rr = 0
        self._lock = threading.Lock()

    def acquire(self, avoid: Replica | None = None) -> tuple[Replica, float]:
        """Pick a replica and say how long to wait before using it (0 if one is available now)."""
        with self._lock:
            now = time.monotonic()
            ready = [r for r in self.replicas if r.available_at <= now]
            if len(ready) > 1 and avoid is not None and avoid in ready:
                ready.remove(avoid)  # fail over: the one that just failed goes last
            if ready:
                wait = 0.0
                if self.strategy == "round_robin":
                    n = len(self.replicas)
                    for k in range(n):
                        cand = self.replicas[(self._rr + k) % n]
                        if cand in ready:
                            chosen = cand
                            self._rr = (self.replicas.index(cand) + 1) % n
                            break
                else:
                    low = min(r.inflight for r in ready)
                    tied = [r for r in ready if r.inflight == low]
                    chosen = tied[self._rr % len(tied)]
                    self._rr += 1
            else:
                chosen = min(self.replicas, key=lambda r: r.available_at)
                wait = max(0.0, chosen.available_at - now)
            chosen.inflight += 1
            chosen.sent += 1
            return chosen, wait

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.inflight -= 1

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            replica.consecutive_failures = 0
            replica.available_at = 0.0

    def unreachable(self, replica: Replica) -> None:
        """Connection-level failure: skip this replica for a growing, jittered while."""
        with self._lock:
            replica.consecutive_failures += 1
            ceiling = min(
                self.policy.down_cooldown_max_s,
                max(self.policy.backoff_base_s, 0.05) * (2 ** (replica.consecutive_failures - 1)),
            )
            replica.available_at = time.monotonic() + random.uniform(ceiling / 2, ceiling)

    def busy(self, replica: Replica, delay_s: float) -> None:
        """The replica said 429/503: leave it alone for `delay_s`."""
        with self._lock:
            replica.available_at = max(replica.available_at, time.monotonic() + delay_s)


class Attempts:
    """The retry bookkeeping of one logical request (one per call, not shared)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.policy = balancer.policy
        self.n = 0
        self.failures = 0
        self.last: Replica | None = None
        self.last_error: BaseException | None = None

    def next(self) -> tuple[Replica, float]:
        self.n += 1
        replica, wait = self.balancer.acquire(avoid=self.last)
        if wait == 0.0 and self.failures and replica is self.last:
            # Only one replica and it just failed without telling us when to come back.
            wait = self.policy.backoff(self.failures)
        self.last = replica
        return replica, wait

    def on_transport_error(self, replica: Replica, exc: BaseException) -> bool:
        """Record a transport failure; True if another attempt is allowed."""
        self.failures += 1
        self.last_error = exc
        if not isinstance(exc, RETRYABLE_TRANSPORT):
            return False
        self.balancer.unreachable(replica)
        return self.n < self.policy.max_attempts

    def on_status(self, replica: Replica, status: int, error: LiftError) -> bool:
        """Record an error status; True if another attempt is allowed."""
        self.failures += 1
        self.last_error = error
        if status not in RETRYABLE_STATUS:
            return False
        delay = self.policy.honour_retry_after(getattr(error, "retry_after_s", None), self.failures)
        self.balancer.busy(replica, delay)
        return self.n < self.policy.max_attempts

    def give_up(self) -> LiftError:
        err = self.last_error
        if isinstance(err, LiftError):
            return err
        urls = ", ".join(r.url for r in self.balancer.replicas)
        detail = f"{type(err).__name__}: {err}" if err is not None else "no attempt made"
        if isinstance(err, httpx.TimeoutException) and not isinstance(err, (httpx.ConnectTimeout, httpx.PoolTimeout)):
            from service.errors import RequestTimeout

            exc: LiftError = RequestTimeout(f"no answer within the client timeout from {self.last.url if self.last else urls} ({detail})")
        else:
            exc = ServiceUnreachable(f"no scoring service answered after {self.n} attempt(s) [{urls}]: {detail}")
        exc.__cause__ = err
        return exc
