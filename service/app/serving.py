"""The work behind each route (vLLM's `serving_*` split): validate -> fetch media -> admit -> score -> respond.

Knows protocol models, the media connector and the critic's public API; knows nothing of HTTP (no
Request, no status codes). LitServe's decode/predict/encode steps map to `parse_*`, `_score_one`, the
ScoreResponse the critic returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import TypeAdapter, ValidationError

from service.app import context
from service.app.admission import Admission
from service.app.errors import MalformedBody, ValidationFailed, error_detail, validation_failed
from service.app.idempotency import BatchItems, Idempotency, Outcome, deployment_namespace
from service.app.metrics import ServiceMetrics
from service.app.settings import ServiceSettings
from service.errors import (
    AnswerParseError,
    EngineDead,
    EngineError,
    EngineNotReady,
    LiftError,
    ModelLoadError,
    RequestTimeout,
    VideoTooLarge,
)
from service.fetch import FetchPolicy, MediaConnector, decode_base64, resolve_path
from service.frames import b64_bytes, is_npy, video_from_images, videos_from_npy
from service.media import MediaLimits, VideoFrames
from service.rubric import DEFAULT_NUM_FRAMES, DIMENSION_NAMES as DIMENSIONS
from service.groups import batch_groups
from service.protocol import (
    MAX_GROUP_ID_CHARS,
    BatchItemError,
    BatchScoreItem,
    BatchScoreResponse,
    ModelCard,
    ModelList,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
)

log = logging.getLogger("lift.service")

MAX_BATCH_ITEMS = 64
_OFFLOAD_JSON_BYTES = 256 * 1024  # parse bigger bodies in a thread: keep the event loop responsive
ENGINE_WATCH_INTERVAL_S = 0.5  # how often a started engine is checked for death (exit within 15 s asked)


class CriticLike(Protocol):
    """What the service needs from `service.critic.Critic` (kept narrow on purpose)."""

    @property
    def ready(self) -> bool: ...
    @property
    def dead(self) -> bool: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def score(
        self, video: Any, prompt: str, options: ScoreOptions | None = None, *, limits: Any = None, request_id: str | None = None
    ) -> ScoreResponse: ...
    def model_card(self) -> ModelCard: ...


def parse_json(body: bytes) -> Any:
    """Bytes -> JSON value; non-UTF-8 and malformed JSON are the client's 400, never a crash."""
    if not body:
        raise MalformedBody("request body is empty; send JSON or a multipart form")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"request body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise MalformedBody(f"request body is not valid JSON{where}") from None


async def parse_json_async(body: bytes) -> Any:
    if len(body) > _OFFLOAD_JSON_BYTES:
        return await asyncio.to_thread(parse_json, body)
    return parse_json(body)


def parse_score_request(data: Any, *, prefix: str = "", model: type[ScoreRequest] = ScoreRequest) -> ScoreRequest:
    if not isinstance(data, dict):
        raise ValidationFailed("expected a JSON object", param=prefix or None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc.errors(include_url=False), prefix) from None


_PROMPT = TypeAdapter(Annotated[str, ScoreRequest.model_fields["prompt"]])


def parse_prompt(prompt: str, *, param: str = "prompt") -> str:
    """A prompt that did not come inside a ScoreRequest (multipart): the same field rules."""
    try:
        return _PROMPT.validate_python(prompt)
    except ValidationError as exc:
        raise validation_failed([{**e, "loc": (param,)} for e in exc.errors(include_url=False)]) from None


def parse_options(raw: str | None) -> ScoreOptions:
    """The multipart `options` field: a JSON object, optional."""
    if raw is None or not raw.strip():
        return ScoreOptions()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ValidationFailed("options must be a JSON object", param="options") from None
    if not isinstance(data, dict):
        raise ValidationFailed("options must be a JSON object", param="options")
    try:
        return ScoreOptions.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc.errors(include_url=False), "options") from None


class ScoringService:
    """One per app: the critic, the connector, admission and metrics, wired explicitly."""

    def __init__(
        self,
        settings: ServiceSettings,
        critic: CriticLike,
        metrics: ServiceMetrics,
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.critic = critic
        self.metrics = metrics
        self.admission = Admission(settings.max_inflight, settings.max_queue, on_change=metrics.set_queue)
        self.connector = MediaConnector(
            FetchPolicy(
                media_root=settings.media_root,
                max_bytes=settings.max_video_bytes,
                url_allowlist=tuple(settings.url_allowlist),
                allow_private_urls=settings.allow_private_urls,
                fetch_timeout_s=settings.fetch_timeout_s,
                max_redirects=settings.max_redirects,
            )
        )
        self._on_fatal = on_fatal
        self._started_engine = False  # stop only what we started (a shared critic stays up)
        self._start_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.load_error: str | None = None
        self.engine_dead: str | None = None
        self._engine_lost = asyncio.Event()  # set once the engine died: in-flight scores answer 503 at once
        self._limits = self._media_limits()
        self._parse_failures_seen = int(getattr(critic, "parse_failures", 0) or 0)
        # Repeats (same key, same content) get the first answer (service.app.idempotency); routes and adapters use it
        self.idempotency = Idempotency.from_settings(settings, metrics, lambda: deployment_namespace(settings, critic))

    @property
    def critic_dimensions(self) -> tuple[str, ...]:
        """The deployment's (first) critic's dimensions (what LIFT_ADAPTER_REWARD and the adapters may name)."""
        spec = getattr(self.critic, "spec", None)
        return spec.dimension_names if spec is not None else DIMENSIONS

    @property
    def critics_dimensions(self) -> dict[str, tuple[str, ...]] | None:
        """With several critics: {name: its dimensions} (a reward may name `critic.term`); None with one."""
        names = getattr(self.critic, "names", None)
        return {n: self.critic.dimensions_of(n) for n in names()} if names is not None else None

    def reward_selection(self, spec: str) -> Any:
        from service.adapters.selection import RewardSelection

        return RewardSelection.parse(spec, self.critic_dimensions, critics=self.critics_dimensions)

    def adapter_options(self, selection: Any) -> ScoreOptions:
        """What the adapters ask: reward-only unless LIFT_ADAPTER_RATIONALE, and every critic the reward names."""
        default = getattr(self.critic, "model_name", None)
        critics = selection.critics_asked(default) if default is not None else None
        return ScoreOptions(rationale=self.settings.adapter_rationale, critics=critics)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def startup(self) -> None:
        if self.critic.ready:
            self.metrics.engine_ready.set(1)
            self._watch_task = asyncio.create_task(self._watch_engine(), name="lift-engine-watch")
            return
        self.metrics.engine_ready.set(0)
        # Load in the background: the server answers /health and /ready (503) while the engine loads.
        self._start_task = asyncio.create_task(self._start_engine(), name="lift-engine-start")

    async def _start_engine(self) -> None:
        started = time.perf_counter()
        try:
            await self.critic.start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any load failure must surface, not hang /ready
            # our own errors already say what to change; others keep their type for the log reader
            self.load_error = exc.message if isinstance(exc, LiftError) else f"{type(exc).__name__}: {exc}"
            log.error("engine failed to start: %s", self.load_error)
            if self._on_fatal is not None:
                self._on_fatal(exc)
            return
        self._started_engine = True
        self.metrics.engine_ready.set(1)
        log.info("engine ready", extra={"fields": {"load_s": round(time.perf_counter() - started, 2)}})
        self._watch_task = asyncio.create_task(self._watch_engine(), name="lift-engine-watch")

    async def _watch_engine(self) -> None:
        """A started engine that dies (vLLM's worker killed, out of memory) never comes back: say so on
        /health and /ready, and tell the owner (the CLI exits non-zero so that its supervisor restarts it)."""
        while not getattr(self.critic, "dead", False):
            await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
        self.engine_dead = "the engine died after it started (its process exited); this replica must be restarted"
        self._engine_lost.set()
        self.metrics.engine_ready.set(0)
        log.error("engine died", extra={"fields": {"error": self.engine_dead}})
        if self._on_fatal is not None:
            self._on_fatal(EngineDead(self.engine_dead))

    async def shutdown(self) -> None:
        self.metrics.engine_ready.set(0)
        for task in (self._start_task, self._watch_task):
            if task is not None and not task.done():
                task.cancel()
        if self._started_engine:
            await self.critic.stop()
        await self.connector.aclose()
        await self.idempotency.aclose()

    @property
    def ready(self) -> bool:
        return self.critic.ready and self.load_error is None and self.engine_dead is None

    @property
    def alive(self) -> bool:
        """False once the engine failed to load or died: neither heals, so liveness fails and we get restarted."""
        return self.load_error is None and self.engine_dead is None

    def readiness_error(self) -> LiftError:
        if self.load_error is not None:
            return ModelLoadError(f"the engine failed to start: {self.load_error}")
        if self.engine_dead is not None or getattr(self.critic, "dead", False):
            return EngineDead(self.engine_dead or "the engine died")
        return EngineNotReady("the engine is still loading")

    def models(self) -> ModelList:
        cards = getattr(self.critic, "model_cards", None)
        return ModelList(data=cards() if cards is not None else [self.critic.model_card()])

    # -- scoring ---------------------------------------------------------------------------------------
    def _media_limits(self) -> Any:
        """The critic's media limits with this server's byte cap (LIFT_MAX_VIDEO_BYTES) in place of its own."""
        base = getattr(self.critic, "limits", None)
        if base is not None and dataclasses.is_dataclass(base) and not isinstance(base, type):
            return dataclasses.replace(base, max_bytes=self.settings.max_video_bytes)
        return base

    # -- frames (issue 19): the same sampling and limits as files, decoded off the event loop -------------
    def num_frames_for(self, options: ScoreOptions) -> int:
        return options.num_frames or int(getattr(self.critic, "num_frames", DEFAULT_NUM_FRAMES) or DEFAULT_NUM_FRAMES)

    @property
    def frame_limits(self) -> MediaLimits:
        """Pixels, frames and duration as for files; bytes from LIFT_MAX_FRAMES_BYTES (raw pixels, not mp4)."""
        base = self._limits if isinstance(self._limits, MediaLimits) else MediaLimits()
        return dataclasses.replace(base, max_bytes=self.settings.max_frames_bytes)

    async def videos_of_npy(self, data: bytes, options: ScoreOptions, *, fps: float | None = None,
                            batch: bool | None = False, param: str = "video", fps_param: str = "video.fps") -> list[VideoFrames]:
        return await asyncio.to_thread(
            videos_from_npy, data, num_frames=self.num_frames_for(options), fps=fps, limits=self.frame_limits,
            batch=batch, param=param, fps_param=fps_param, sampler=self.frame_sampler(options))

    async def video_of_images(self, images: list[bytes], options: ScoreOptions, *, fps: float | None = None,
                              param: str = "video.frames", fps_param: str = "video.fps") -> VideoFrames:
        return await asyncio.to_thread(
            video_from_images, images, num_frames=self.num_frames_for(options), fps=fps, limits=self.frame_limits,
            param=param, fps_param=fps_param, sampler=self.frame_sampler(options))

    def frame_sampler(self, options: ScoreOptions) -> Any:
        """The critic's own frame rule for frames sent as arrays or images (None: LiFT's linspace count)."""
        sampler = getattr(self.critic, "frame_sampler", None)
        return sampler(options.num_frames) if sampler is not None else None

    async def _video_of(self, request: ScoreRequest, prefix: str) -> bytes | Path | VideoFrames:
        src = request.video
        p = f"{prefix}video" if prefix else "video"
        cap = self.settings.max_frames_bytes
        if src.npy is not None:
            data = await asyncio.to_thread(b64_bytes, src.npy, cap, param=f"{p}.npy")
            return (await self.videos_of_npy(data, request.options, fps=src.fps, param=f"{p}.npy", fps_param=f"{p}.fps"))[0]
        if src.frames is not None:
            images = await asyncio.to_thread(_b64_frames, src.frames, cap, f"{p}.frames")
            return await self.video_of_images(images, request.options, fps=src.fps, param=f"{p}.frames",
                                              fps_param=f"{p}.fps")
        if src.path is not None:
            return await asyncio.to_thread(resolve_path, self.connector.policy, src.path, param=f"{p}.path")
        if src.url is not None:
            try:
                return await self.connector.fetch(src.url)
            except LiftError as exc:
                if exc.param == "video.url" and prefix:
                    exc.param = f"{p}.url"
                raise
        assert src.base64 is not None
        text = src.base64
        if len(text) > _OFFLOAD_JSON_BYTES:
            data = await asyncio.to_thread(decode_base64, text, max(self.settings.max_video_bytes, cap), param=f"{p}.base64")
        else:
            data = decode_base64(text, max(self.settings.max_video_bytes, cap), param=f"{p}.base64")
        return await self._file_or_frames(data, request.options, param=f"{p}.base64")

    async def _file_or_frames(self, data: bytes, options: ScoreOptions, *, fps: float | None = None,
                              param: str = "video") -> bytes | VideoFrames:
        """Uploaded bytes: an .npy array is frames (sniffed by its magic), anything else a video file."""
        if is_npy(data):
            return (await self.videos_of_npy(data, options, fps=fps, param=param))[0]
        if len(data) > self.settings.max_video_bytes:
            raise VideoTooLarge(f"video is {len(data)} bytes, over the limit of {self.settings.max_video_bytes}",
                                param=param)
        if fps is not None:
            raise ValidationFailed("'fps' goes with frames (.npy); a video file carries its own", param="fps")
        return data

    async def _score_video(self, video: bytes | Path | VideoFrames, prompt: str, options: ScoreOptions) -> ScoreResponse:
        if not self.ready:
            raise self.readiness_error()
        return await self._unless_engine_dies(self._admit_and_score(video, prompt, options))

    async def _unless_engine_dies(self, work: Any) -> ScoreResponse:
        """Run `work`, but answer EngineDead (503 + Retry-After) as soon as the engine is lost: a request still
        queued or decoding must not wait for the shutdown's drain to cancel it (that would be a 500)."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self._engine_lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise EngineDead(self.engine_dead or "the engine died")

    async def _admit_and_score(self, video: bytes | Path | VideoFrames, prompt: str, options: ScoreOptions) -> ScoreResponse:
        if options.scoring is None:  # the deployment's rule (LIFT_SCORING) unless the request names one
            options = options.model_copy(update={"scoring": self.settings.scoring})
        queued_at = time.perf_counter()
        async with self.admission.engine_slot():
            queue_ms = (time.perf_counter() - queued_at) * 1000
            try:
                ctx = context.current()
                response = await self.critic.score(
                    video, prompt, options, limits=self._limits, request_id=ctx.request_id if ctx else None
                )
            except AnswerParseError:
                self.metrics.parse_failures.inc()
                raise
            except LiftError:
                raise
            except (RuntimeError, OSError) as exc:
                # vLLM reports a dead engine this way; the client may retry elsewhere.
                log.exception("engine failure")
                raise EngineError(f"the engine failed: {type(exc).__name__}") from exc
            finally:
                self._sync_parse_failures()
        response.timings_ms["queue"] = round(queue_ms, 3)
        self.metrics.observe_score(response)
        return response

    def _sync_parse_failures(self) -> None:
        # The critic counts answers it could not parse (and scored anyway); mirror them into the counter.
        seen = int(getattr(self.critic, "parse_failures", 0) or 0)
        if seen > self._parse_failures_seen:
            self.metrics.parse_failures.inc(seen - self._parse_failures_seen)
        self._parse_failures_seen = max(seen, self._parse_failures_seen)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """One JSON score request, under the per-request deadline."""
        return await self._with_deadline(self._score_request(request, prefix=""))

    async def score_upload(self, video: bytes, prompt: str, options: ScoreOptions, *, fps: float | None = None) -> ScoreResponse:
        """A multipart upload: the bytes are already here (capped); an .npy upload is frames."""
        async def run() -> ScoreResponse:
            t0 = time.perf_counter()
            media = await self._file_or_frames(video, options, fps=fps)
            return await self._timed(media, prompt, options, fetch_ms=(time.perf_counter() - t0) * 1000)

        return await self._with_deadline(run())

    async def score_many(self, items: list[tuple[bytes | Path | VideoFrames, str]], options: ScoreOptions,
                         ) -> list[ScoreResponse | LiftError]:
        """Many videos at once into the engine (vLLM batches them), each under the deadline; a failed item is its
        error in its place. The adapters' one way in: the same path as /v1/score."""
        if not self.ready:
            raise self.readiness_error()
        # Items past the first max_inflight wait for engine slots: each wave gets the per-request deadline.
        waves = -(-len(items) // max(1, self.settings.max_inflight))
        timeout = self.settings.request_timeout_s * max(1, waves)

        async def one(i: int, video: bytes | Path | VideoFrames, prompt: str) -> ScoreResponse | LiftError:
            try:
                async with asyncio.timeout(timeout):
                    return await self._timed(video, prompt, options, fetch_ms=0.0)
            except TimeoutError:
                return RequestTimeout(f"sample {i} took longer than {timeout:g}s (LIFT_REQUEST_TIMEOUT_S)")
            except LiftError as exc:
                self.metrics.rejected.labels(reason=exc.code).inc()
                return exc

        return list(await asyncio.gather(*(one(i, v, p) for i, (v, p) in enumerate(items))))

    async def _score_request(self, request: ScoreRequest, prefix: str) -> ScoreResponse:
        t0 = time.perf_counter()
        video = await self._video_of(request, prefix)
        fetch_ms = (time.perf_counter() - t0) * 1000
        return await self._timed(video, request.prompt, request.options, fetch_ms=fetch_ms)

    async def _timed(self, video: bytes | Path | VideoFrames, prompt: str, options: ScoreOptions, *, fetch_ms: float) -> ScoreResponse:
        t0 = time.perf_counter()
        response = await self._score_video(video, prompt, options)
        response.timings_ms["fetch"] = round(fetch_ms, 3)
        response.timings_ms["total"] = round(fetch_ms + (time.perf_counter() - t0) * 1000, 3)
        for k, v in response.timings_ms.items():
            context.note_timing(k, v)
        return response

    async def _with_deadline(self, coro: Any) -> ScoreResponse:
        timeout = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            raise RequestTimeout(f"scoring took longer than {timeout:g}s (LIFT_REQUEST_TIMEOUT_S)") from None

    async def score_batch(self, data: Any, *, once: BatchItems | None = None) -> BatchScoreResponse:
        """Items are validated and scored one by one: a bad item becomes its own error, in its place. With `once` (a
        keyed batch), each item's first answer is remembered and a repeat's item gets it instead of a new scoring."""
        if not isinstance(data, dict) or set(data) - {"items"} or not isinstance(data.get("items"), list):
            raise ValidationFailed("expected {\"items\": [score request, ...]}", param="items")
        items = data["items"]
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise ValidationFailed(f"items must hold 1 to {MAX_BATCH_ITEMS} requests, got {len(items)}", param="items")
        ctx = context.current()
        if ctx is not None:
            ctx.items = len(items)
        if not self.ready:  # the whole batch would fail the same way: say it once, with Retry-After
            raise self.readiness_error()
        timeout = self.settings.request_timeout_s

        async def one(i: int, raw: Any) -> ScoreResponse | BatchItemError:
            prefix = f"items.{i}."

            async def work() -> ScoreResponse:
                request = parse_score_request(raw, prefix=f"items.{i}", model=BatchScoreItem)
                return await self._score_request(request, prefix)

            try:
                async with asyncio.timeout(timeout):
                    if once is None:
                        return await work()
                    return _batch_item(await once.run(i, work))
            except TimeoutError:
                return self._item_error(RequestTimeout(f"item {i} took longer than {timeout:g}s"))
            except LiftError as exc:
                return self._item_error(exc)

        results = await asyncio.gather(*(one(i, raw) for i, raw in enumerate(items)))
        groups = batch_groups((_group_of(raw), r if isinstance(r, ScoreResponse) else None)
                              for raw, r in zip(items, results))
        self.metrics.observe_groups(groups)
        return BatchScoreResponse(results=list(results), groups=groups)

    def _item_error(self, exc: LiftError) -> BatchItemError:
        self.metrics.rejected.labels(reason=exc.code).inc()
        return BatchItemError(error=error_detail(exc))



def _batch_item(outcome: Outcome) -> ScoreResponse | BatchItemError:
    if not outcome.replayed:
        return outcome.value
    if outcome.status == 200:
        return ScoreResponse.model_validate_json(outcome.body)
    return BatchItemError.model_validate_json(outcome.body)  # a remembered bad-input error, as first answered


def _group_of(raw: Any) -> str | None:
    """An item's group id, read from the raw item so that an item failing validation still counts as its
    group's failure (an id that is itself invalid makes the item fail, and counts nowhere)."""
    group = raw.get("group") if isinstance(raw, dict) else None
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        return None
    if isinstance(group, str) and not 1 <= len(group) <= MAX_GROUP_ID_CHARS:
        return None
    return str(group)


def _b64_frames(frames: list[str], max_bytes: int, param: str) -> list[bytes]:
    """base64 images -> bytes, the total capped as it goes (a frame list is one payload)."""
    out: list[bytes] = []
    left = max_bytes
    for i, text in enumerate(frames):
        raw = b64_bytes(text, max(left, 0), param=f"{param}.{i}")
        left -= len(raw)
        out.append(raw)
    return out
