"""Reward functions for training loops (TRL / Flow-GRPO style): (videos, prompts) -> list[float].

    reward = reward_fn(["http://rm-0:8000", "http://rm-1:8000"])          # sync, for any loop
    areward = async_reward_fn(urls, reward={"motion_smoothness": 1.0})    # async twin (TRL runs these concurrently)
    rewards = reward(videos, prompts)

Each item is one /v1/score request; up to `concurrency` run at once, spread over the replicas
(least-loaded), so a batch is split across replicas by load. Videos may be paths, bytes, URLs,
`ServerPath`s, or generated frames: numpy arrays or torch tensors, one video each ((T, H, W, 3), (T, 3, H, W)
or (3, T, H, W)) or a whole batch as one 5-D array ((B, T, H, W, 3), (B, T, 3, H, W), (B, 3, T, H, W)); uint8,
or float in [0, 1]. Frames travel as `.npy` (no mp4 step, no compression artifacts for the fidelity question
to judge), at `fps` (default 8). A failed item raises by default; with
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
from .client import DEFAULT_TIMEOUT, AsyncRewardClient, _options, _parse
from .video import VideoInput

log = logging.getLogger(__name__)

RewardField = Literal["reward", "expected_reward"]
DIMENSIONS: tuple[str, ...] = get_args(DimensionName)


def reward_value(response: ScoreResponse, reward: RewardField | Mapping[str, float], expected: bool = False) -> float:
    """The number a learner sees. Weights {d: 1/3 for d in DIMENSIONS} reproduce `reward` (LiFT Eq. 2)."""
    if reward == "reward":
        return float(response.reward)
    if reward == "expected_reward":  # a critic without probabilities has none: its reward
        return float(response.expected_reward if response.expected_reward is not None else response.reward)
    total = 0.0
    for dim, w in reward.items():  # type: ignore[union-attr]
        d = response.dimensions.get(dim)
        if d is None:  # weights for another critic's dimensions
            raise InvalidRequest(f"the {response.critic} critic has no dimension {dim!r}; it has "
                                 f"{list(response.dimensions)}", param="reward")
        value = d.expected_score if expected and d.expected_score is not None else d.score
        total += float(w) * value
    return total


def _check_reward(reward: Any) -> None:
    if isinstance(reward, str):
        if reward not in ("reward", "expected_reward"):
            raise InvalidRequest(f"reward must be 'reward', 'expected_reward' or a weight dict, not {reward!r}", param="reward")
        return
    if not isinstance(reward, Mapping) or not reward:
        raise InvalidRequest("reward weights must be a non-empty {dimension: weight} dict", param="reward")
    from service.critics import CRITIC_NAMES, load_spec

    known = {d for name in CRITIC_NAMES for d in load_spec(name).dimension_names}
    unknown = set(reward) - known
    if unknown:  # no critic has them (which critic answers is checked on its first response)
        raise InvalidRequest(f"unknown dimensions {sorted(unknown)}; LiFT-Critic's: {list(DIMENSIONS)}; others' in "
                             "service.critics", param="reward")


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
        fps: float = 8.0,
        rationale: bool = False,
    ) -> None:
        _check_reward(reward)
        if concurrency < 1:
            raise InvalidRequest("concurrency must be >= 1", param="concurrency")
        if not 0 < float(fps) <= 240:
            raise InvalidRequest("fps must be in (0, 240]", param="fps")
        self.fps = float(fps)
        self.reward = reward
        self.expected = expected
        self.allow_failures = allow_failures
        self.concurrency = concurrency
        # A learner reads numbers, never reasons: reward-only unless asked (or options say rationale=True)
        self.options = _options(options) or ScoreOptions()
        if "rationale" not in self.options.model_fields_set:
            self.options = self.options.model_copy(update={"rationale": rationale})
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
        if is_frames(videos):  # one 5-D batch array / tensor: B videos
            videos = split_batch(videos)
        if len(videos) != len(prompts):
            raise InvalidRequest(f"{len(videos)} videos but {len(prompts)} prompts", param="prompts")
        client = self.client
        gate = asyncio.Semaphore(self.concurrency)
        options = _options(self.options)

        async def one(video: VideoInput, prompt: str) -> float:
            async with gate:
                if is_frames(video):
                    npy = await asyncio.to_thread(frames_to_npy, video)
                    resp = await score_npy(client, npy, prompt, options=options, fps=self.fps)
                else:
                    resp = await client.score(video, prompt, options=options)
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


# ---- frames in memory -> .npy (issue 19) -----------------------------------------------------------
def is_frames(value: Any) -> bool:
    """A numpy array or a torch tensor (checked by type, so neither library is imported here)."""
    mod = type(value).__module__
    return (mod == "numpy" or mod.startswith("torch")) and hasattr(value, "shape") and hasattr(value, "dtype")


def _to_numpy(value: Any) -> Any:
    if type(value).__module__.startswith("torch"):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.float()  # bfloat16 has no numpy twin
        return t.numpy()
    return value


def split_batch(batch: Any) -> list[Any]:
    """A 5-D batch (B, ...) -> B videos; anything else is an error naming the shapes accepted."""
    shape = tuple(batch.shape)
    if len(shape) != 5:
        raise InvalidRequest(f"a frames batch must be 5-D (B, T, H, W, 3), (B, T, 3, H, W) or (B, 3, T, H, W); got "
                             f"shape {shape}", param="videos")
    return [batch[i] for i in range(shape[0])]


def frames_to_npy(video: Any) -> bytes:
    """One video's frames -> `.npy` bytes of uint8 (T, H, W, 3), the layout the service reads.

    Accepts (T, H, W, 3), (T, 3, H, W) (diffusers / Flow-Factory) or (3, T, H, W); uint8, or float in [0, 1]
    (rounded, clipped). No pickle: `numpy.save(allow_pickle=False)`."""
    import io

    import numpy as np

    arr = np.asarray(_to_numpy(video))
    if arr.ndim != 4:
        raise InvalidRequest(f"a video's frames must be 4-D, got shape {arr.shape}", param="videos")
    if arr.shape[-1] == 3:
        pass
    elif arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)  # (T, 3, H, W)
    elif arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 3, 0)  # (3, T, H, W)
    else:
        raise InvalidRequest(f"frames must be (T, H, W, 3), (T, 3, H, W) or (3, T, H, W); got {arr.shape}",
                             param="videos")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            raise InvalidRequest(f"frames must be uint8 or float in [0, 1], got {arr.dtype}", param="videos")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


async def score_npy(client: AsyncRewardClient, npy: bytes, prompt: str, *, options: ScoreOptions | None = None,
                    fps: float = 8.0) -> ScoreResponse:
    """One /v1/score call with `.npy` frames as the multipart `video` and their `fps`."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("prompt must be a non-empty string", param="prompt")
    form = {"prompt": prompt, "fps": repr(float(fps))}
    if options is not None:
        form["options"] = options.model_dump_json(exclude_none=True)
    resp, replica = await client._send("POST", "/v1/score", files={"video": ("frames.npy", npy, "application/x-npy")},
                                       data=form)
    return _parse(ScoreResponse, resp, replica)


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
