"""Reward functions for training loops (TRL / Flow-GRPO style): (videos, prompts) -> list[float].

    reward = reward_fn(["http://rm-0:8000", "http://rm-1:8000"])          # sync, for any loop
    areward = async_reward_fn(urls, reward={"motion_smoothness": 1.0})    # async twin (TRL runs these concurrently)
    rewards = reward(videos, prompts)

Each item is one /v1/score request; up to `concurrency` run at once, spread over the replicas
(least-loaded), so a batch is split across replicas by load. Videos may be paths, bytes, URLs,
`ServerPath`s or uint8 arrays (T, H, W, 3). A failed item raises by default; with
`allow_failures=True` its reward is None (TRL excludes None; it is never silently 0) and the failure
is logged and kept in `.last_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from service.errors import InvalidRequest, LiftError
from service.protocol import DimensionName, ScoreOptions, ScoreResponse

from .balancing import RetryPolicy, Strategy
from .client import DEFAULT_TIMEOUT, AsyncRewardClient
from .video import VideoInput

log = logging.getLogger(__name__)

RewardField = Literal["reward", "expected_reward"]
DIMENSIONS: tuple[str, ...] = get_args(DimensionName)


def reward_value(response: ScoreResponse, reward: RewardField | Mapping[str, float], expected: bool = False) -> float:
    """The number a learner sees. Weights {d: 1/3 for d in DIMENSIONS} reproduce `reward` (LiFT Eq. 2)."""
    if reward == "reward":
        return float(response.reward)
    if reward == "expected_reward":
        return float(response.expected_reward)
    total = 0.0
    for dim, w in reward.items():  # type: ignore[union-attr]
        d = response.dimensions[dim]  # type: ignore[index]
        total += float(w) * (d.expected_score if expected else d.score)
    return total


def _check_reward(reward: Any) -> None:
    if isinstance(reward, str):
        if reward not in ("reward", "expected_reward"):
            raise InvalidRequest(f"reward must be 'reward', 'expected_reward' or a weight dict, not {reward!r}", param="reward")
        return
    if not isinstance(reward, Mapping) or not reward:
        raise InvalidRequest("reward weights must be a non-empty {dimension: weight} dict", param="reward")
    unknown = set(reward) - set(DIMENSIONS)
    if unknown:
        raise InvalidRequest(f"unknown dimensions {sorted(unknown)}; known: {list(DIMENSIONS)}", param="reward")


class AsyncRewardFunction:
    """`await fn(videos, prompts) -> list[float | None]`; create and call it inside one event loop."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        reward: RewardField | Mapping[str, float] = "reward",
        expected: bool = False,
        allow_failures: bool = False,
        concurrency: int = 16,
        options: ScoreOptions | dict[str, Any] | None = None,
        api_key: str | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        strategy: Strategy = "least_loaded",
        name: str = "lift_reward",
    ) -> None:
        _check_reward(reward)
        if concurrency < 1:
            raise InvalidRequest("concurrency must be >= 1", param="concurrency")
        self.reward = reward
        self.expected = expected
        self.allow_failures = allow_failures
        self.concurrency = concurrency
        self.options = options
        self.__name__ = name  # TRL logs reward functions by __name__
        self.last_errors: dict[int, LiftError] = {}
        self._client_kwargs = dict(api_key=api_key, timeout=timeout, retry=retry, strategy=strategy,
                                   max_connections=max(concurrency, 8))
        self._base_urls = base_urls
        self._client: AsyncRewardClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> AsyncRewardClient:
        # httpx's async pool belongs to one event loop; a caller running asyncio.run() per step gets a
        # fresh client per loop instead of "attached to a different loop" errors.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = AsyncRewardClient(self._base_urls, **self._client_kwargs)
            self._client_loop = loop
        return self._client

    async def __call__(
        self,
        videos: Sequence[VideoInput] | None = None,
        prompts: Sequence[str] | None = None,
        *args: Any,
        completions: Sequence[VideoInput] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        # TRL passes keywords (prompts=, completions=); Flow-GRPO passes (videos, prompts, metadata).
        if videos is None:
            videos = completions
        if videos is None or prompts is None:
            raise InvalidRequest("reward function needs videos (or completions=) and prompts")
        if len(videos) != len(prompts):
            raise InvalidRequest(f"{len(videos)} videos but {len(prompts)} prompts", param="prompts")
        client = self.client
        gate = asyncio.Semaphore(self.concurrency)

        async def one(video: VideoInput, prompt: str) -> float:
            async with gate:
                resp = await client.score(video, prompt, options=self.options)
            return reward_value(resp, self.reward, self.expected)

        results = await asyncio.gather(*(one(v, p) for v, p in zip(videos, prompts)), return_exceptions=True)
        self.last_errors = {}
        out: list[float | None] = []
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                if not isinstance(r, LiftError) or not self.allow_failures:
                    raise r
                self.last_errors[i] = r
                out.append(None)
            else:
                out.append(r)
        if self.last_errors:
            codes = sorted({e.code for e in self.last_errors.values()})
            log.warning("%s: %d of %d rewards failed (%s); they are None", self.__name__, len(self.last_errors), len(out), ", ".join(codes))
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class RewardFunction:
    """Synchronous `fn(videos, prompts) -> list[float | None]`.

    Runs the async function on a private event loop in a daemon thread, so it works from plain code,
    from threads and from inside a running loop (a notebook) alike, with connections reused across calls.
    """

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any) -> None:
        self._afn = AsyncRewardFunction(base_urls, **kwargs)
        self.__name__ = self._afn.__name__
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def last_errors(self) -> dict[int, LiftError]:
        return self._afn.last_errors

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="lift-reward-fn", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def __call__(self, videos: Sequence[VideoInput] | None = None, prompts: Sequence[str] | None = None,
                 *args: Any, **kwargs: Any) -> list[float | None]:
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._afn(videos, prompts, *args, **kwargs), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._afn.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reward_fn(base_urls: str | Sequence[str], **kwargs: Any) -> RewardFunction:
    """A synchronous reward function over the scoring service. See `AsyncRewardFunction` for options."""
    return RewardFunction(base_urls, **kwargs)


def async_reward_fn(base_urls: str | Sequence[str], **kwargs: Any) -> AsyncRewardFunction:
    """The async twin of `reward_fn` (TRL runs async reward functions concurrently)."""
    return AsyncRewardFunction(base_urls, **kwargs)
