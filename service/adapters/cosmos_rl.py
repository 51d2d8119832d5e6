"""Cosmos-RL's remote reward service (`cosmos_rl/reward/remote_calculator.py`), over our scoring path.

    POST /api/reward/enqueue   body: <JSON header>\\n<.npy bytes>   (application/octet-stream, bearer token)
        header: {"prompts": [str], "reward_fn": {name: weight}, "media_type": "video" | "latent",
                 "video_infos": [{"video_fps": float}, ...]}
        -> 200 {"uuid": str}
    POST /api/reward/pull      form: uuid, type (a reward_fn name)
        -> 400 while the job is pending (the trainer polls again), then
           200 {"scores": {key: [float per sample]}, "input_info": {...}, "duration": s, "type": type}

`scores` holds every number under its own key (`reward`, `expected_reward`, each dimension's expected score,
`DIM.score`, and the reward function's own name, `lift`, carrying LIFT_ADAPTER_REWARD), so the trainer's
`score_key` (`"lift"`, `"motion_smoothness+video_fidelity"`, ...) picks or sums what it wants. The pull also
carries `provenance` (critic, rubric, frames, engine, sampling, server; one per job), which Cosmos-RL ignores.

Unlike Cosmos-RL's own service, nothing is dropped and nothing fails silently: the envelope (header, array
header, sizes, batch size, limits) is checked at enqueue and refused with a 4xx there; past LIFT_JOBS_MAX_PENDING
unfinished jobs enqueue answers 429 with Retry-After; a job that cannot be decoded or scored ends `failed` and
its pull answers 422 with the reason (never a reward of 0); results expire after LIFT_JOBS_TTL_S (pull: 404).

Video arrives as `media_type: latent` from Cosmos-RL's client (Wan2.1 VAE latents): decoded with the VAE in
LIFT_LATENT_VAE (`service.adapters.latents`). `media_type: video` takes uint8 frames `(B, T, H, W, 3)` or
`(B, 3, T, H, W)`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.formparsers import MultiPartException

from service.adapters.latents import LATENT_DTYPES, LatentDecoder
from service.adapters.selection import RewardSelection, all_scores
from service.app.errors import MalformedBody, ValidationFailed
from service.app.idempotency import cacheable_code
from service.errors import (
    InvalidRequest,
    InvalidVideo,
    JobFailed,
    JobNotFound,
    JobPending,
    LiftError,
    UnsupportedMedia,
)
from service.frames import check_fps, check_frame_limits, frame_layout, load_npy, read_npy_header, videos_from_array
from service.jobs import JobStore, create_job_store
from service.protocol import MAX_PROMPT_CHARS, ScoreOptions

log = logging.getLogger("lift.adapters.cosmos_rl")

REWARD_FN = "lift"  # the reward function name this server computes (the trainer's reward_fns[].name)
MAX_SAMPLES = 256
_HEADER_MAX = 4 * 1024 * 1024


class CosmosRLAdapter:
    name = "cosmos-rl"

    def __init__(self, service: Any, selection: RewardSelection, *, store: JobStore | None = None,
                 decoder: LatentDecoder | None = None) -> None:
        settings = service.settings
        self.service = service
        self.selection = selection
        self.store = store or create_job_store(
            settings.redis_url.get_secret_value() if settings.redis_url is not None else None,
            max_pending=settings.jobs_max_pending, ttl_s=settings.jobs_ttl_s)
        self.decoder = decoder or LatentDecoder(settings.latent_vae)
        self._tasks: set[asyncio.Task[None]] = set()
        self.router = self._routes()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.aclose()

    # -- enqueue -------------------------------------------------------------------------------------
    def _parse(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        cut = body.find(b"\n", 0, _HEADER_MAX)
        if cut < 0:
            raise MalformedBody("body must be '<JSON header>\\n<.npy bytes>' (no newline after the header)")
        try:
            header = json.loads(body[:cut].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise MalformedBody("the header line of the body is not JSON") from None
        if not isinstance(header, dict):
            raise ValidationFailed("the header must be a JSON object")
        return header, body[cut + 1 :]

    def _check_header(self, header: dict[str, Any]) -> tuple[list[str], str, dict[str, float], list[float]]:
        prompts = header.get("prompts")
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SAMPLES:
            raise ValidationFailed(f"'prompts' must be a list of 1 to {MAX_SAMPLES} strings", param="prompts")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip() or len(p) > MAX_PROMPT_CHARS:
                raise ValidationFailed(f"prompt {i} must be a non-empty string of at most {MAX_PROMPT_CHARS} "
                                       "characters", param=f"prompts.{i}")
        media_type = header.get("media_type", "video")
        if media_type == "image":
            raise UnsupportedMedia("LiFT's critic scores videos; media_type 'image' is not served here",
                                   param="media_type")
        if media_type not in ("video", "latent"):
            raise ValidationFailed(f"media_type must be 'video' or 'latent', got {media_type!r}", param="media_type")
        reward_fn = header.get("reward_fn", {REWARD_FN: 1.0})
        if not isinstance(reward_fn, dict) or not reward_fn:
            raise ValidationFailed("'reward_fn' must be an object {name: weight}", param="reward_fn")
        unknown = [n for n in reward_fn if n != REWARD_FN]
        if unknown:
            raise ValidationFailed(f"this server computes the reward function {REWARD_FN!r}, not {unknown}; name it "
                                   f"{REWARD_FN!r} in the trainer's reward_fns", param="reward_fn")
        infos = header.get("video_infos") or []
        if not isinstance(infos, list) or (infos and len(infos) != len(prompts)):
            raise ValidationFailed("'video_infos' must hold one {\"video_fps\": ...} per prompt", param="video_infos")
        fps = []
        for i in range(len(prompts)):
            info = infos[i] if infos else {}
            raw = info.get("video_fps") if isinstance(info, dict) else None
            try:
                fps.append(check_fps(raw, param=f"video_infos.{i}.video_fps"))
            except InvalidVideo as exc:
                raise ValidationFailed(exc.message, param=exc.param) from None
        return prompts, media_type, {str(k): float(v) for k, v in reward_fn.items()}, fps

    def _check_array(self, data: bytes, media_type: str, batch: int) -> Any:
        header = read_npy_header(data, param="body")
        if header.offset + header.nbytes != len(data):
            raise InvalidVideo(f"the .npy body is {len(data) - header.offset} bytes but its header declares "
                               f"{header.nbytes}; truncated?", param="body")
        shape = header.shape
        if not shape or shape[0] != batch:
            raise ValidationFailed(f"the array holds {shape[0] if shape else 0} samples but there are {batch} prompts",
                                   param="prompts")
        limits = self.service.frame_limits
        if media_type == "latent":
            self.decoder.require()
            if header.dtype not in LATENT_DTYPES:
                raise InvalidVideo(f"latents must be float16 or float32, got {header.dtype}", param="body")
            self.decoder.check_shape(shape, limits, param="body")
        else:
            layout = frame_layout(shape, batch=True, param="body")
            if header.dtype != np.uint8:
                raise InvalidVideo(f"frames must be uint8 (0..255), got {header.dtype}", param="body")
            t, h, w = (shape[1], shape[2], shape[3]) if layout == "BTHWC" else (shape[2], shape[3], shape[4])
            check_frame_limits(t, h, w, 1000.0, limits, param="body")  # duration is checked per sample's fps
        return header

    async def enqueue(self, body: bytes) -> dict[str, str]:
        return await self._enqueue(*self._parse(body))

    async def _enqueue(self, header: dict[str, Any], data: bytes) -> dict[str, str]:
        prompts, media_type, reward_fn, fps = self._check_header(header)
        npy_header = await asyncio.to_thread(self._check_array, data, media_type, len(prompts))
        if not self.service.ready:
            raise self.service.readiness_error()
        s = self.service.settings
        waves = math.ceil(len(prompts) / max(1, s.max_inflight))
        run_timeout = s.request_timeout_s * waves + 120.0  # + VAE decoding
        info = {"prompts": prompts, "media_type": media_type, "reward_fn": reward_fn,
                "video_infos": [{"video_fps": f} for f in fps], "shape": list(npy_header.shape),
                "dtype": str(npy_header.dtype)}
        job = await self.store.create(info, run_timeout_s=run_timeout)
        task = asyncio.create_task(self._run(job.id, data, npy_header, prompts, fps, media_type, run_timeout),
                                   name=f"lift-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"uuid": job.id}

    # -- the job ---------------------------------------------------------------------------------------
    async def _run(self, job_id: str, data: bytes, header: Any, prompts: list[str], fps: list[float],
                   media_type: str, run_timeout: float) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(run_timeout):
                result = await self._score(data, header, prompts, fps, media_type)
            result["duration"] = round(time.perf_counter() - started, 3)
            await self.store.finish(job_id, result)
        except asyncio.CancelledError:
            await _quietly(self.store.fail(job_id, "shutdown", "the server shut down before the job finished; "
                                           "enqueue it again"))
            raise
        except TimeoutError:
            log.warning("reward job %s failed: timeout after %.0fs", job_id, run_timeout)
            await _quietly(self.store.fail(job_id, "timeout", f"the job took longer than {run_timeout:.0f}s"))
        except LiftError as exc:
            where = f" ({exc.param})" if exc.param else ""
            # Cosmos-RL's trainer logs only the 422 status of a failed pull: say why here, for whoever reads ours
            log.warning("reward job %s failed: %s: %s%s", job_id, exc.code, exc.message, where)
            await _quietly(self.store.fail(job_id, exc.code, f"{exc.message}{where}"))
        except Exception as exc:  # noqa: BLE001 - a bug must still end the job as failed, not pending forever
            log.exception("reward job %s crashed", job_id)
            await _quietly(self.store.fail(job_id, "internal_error", f"the job crashed: {type(exc).__name__}"))

    async def _score(self, data: bytes, header: Any, prompts: list[str], fps: list[float],
                     media_type: str) -> dict[str, Any]:
        arr = await asyncio.to_thread(load_npy, data, header, param="body")
        if media_type == "latent":
            arr = await asyncio.to_thread(self.decoder.decode, arr)  # (B, T, H, W, 3) uint8
        options = self.service.adapter_options(self.selection)  # reward-only unless asked; the critics it names
        limits = self.service.frame_limits
        n = self.service.num_frames_for(options)
        sampler = self.service.frame_sampler(options)  # the critic's own frame rule (None: LiFT's)

        def sample() -> list[Any]:
            layout = "BTHWC" if arr.shape[-1] == 3 else "BCTHW"
            out = []
            for i in range(arr.shape[0]):
                one = arr[i] if layout == "BTHWC" else arr[i].transpose(1, 2, 3, 0)
                out += videos_from_array(one, num_frames=n, fps=fps[i], limits=limits, batch=False,
                                         param=f"sample {i}", fps_param=f"video_infos.{i}.video_fps",
                                         sampler=sampler)
            return out

        videos = await asyncio.to_thread(sample)
        results = await self.service.score_many(list(zip(videos, prompts)), options)
        per_sample: list[dict[str, float]] = []
        for i, r in enumerate(results):
            if isinstance(r, LiftError):
                r.message = f"sample {i}: {r.message}"
                raise r
            scores = all_scores(r)
            scores[REWARD_FN] = self.selection.value(r)
            per_sample.append(scores)
        keys = list(per_sample[0])
        # one provenance per job: its samples share the critic and the options
        provenance = results[0].provenance  # type: ignore[union-attr]
        return {"scores": {k: [s[k] for s in per_sample] for k in keys},
                "provenance": provenance.model_dump(mode="json") if provenance is not None else None}

    async def _job_answers(self, first: Any) -> bool:
        """Whether a remembered enqueue answer still stands: its job is pending, done, or failed for bad input. A job
        that expired, timed out, lost its replica or hit an engine failure is enqueued again."""
        if first.status != 200:
            return True
        job = await self.store.get(json.loads(first.body)["uuid"])
        if job is None:
            return False
        return job.state != "failed" or cacheable_code((job.error or {}).get("code", ""))

    # -- pull --------------------------------------------------------------------------------------------
    async def pull(self, job_id: str, kind: str | None) -> dict[str, Any]:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no reward job {job_id!r} (never enqueued here, or its result expired after "
                              f"{self.store.ttl_s:g}s)", param="uuid")
        kind = kind or REWARD_FN
        if kind not in (job.info.get("reward_fn") or {REWARD_FN: 1.0}):
            raise InvalidRequest(f"job {job_id} was enqueued for {sorted(job.info.get('reward_fn', {}))}, not "
                                 f"{kind!r}", param="type")
        if job.state == "pending":
            raise JobPending(f"job {job_id} is still being scored; pull again later", param="uuid")
        if job.state == "failed":
            err = job.error or {"code": "failed", "message": "failed"}
            raise JobFailed(f"job {job_id} failed ({err['code']}): {err['message']}", param="uuid")
        assert job.result is not None
        return {"scores": job.result["scores"], "input_info": job.info, "duration": job.result.get("duration"),
                "type": kind, "provenance": job.result.get("provenance")}

    def _routes(self) -> APIRouter:
        router = APIRouter(tags=["cosmos-rl"])

        @router.post("/api/reward/enqueue", summary="Cosmos-RL: enqueue '<JSON header>\\n<.npy>' -> {uuid}",
                     openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                         "schema": {"type": "string", "format": "binary", "description": "A JSON header line "
                                    "(prompts, reward_fn, media_type, video_infos), a newline, .npy bytes."}}}}})
        async def enqueue(request: Request) -> Response:
            async with self.service.admission.admit():
                media = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if media not in ("", "application/octet-stream"):
                    raise UnsupportedMedia(f"Content-Type {media!r}: send application/octet-stream")
                header, data = self._parse(await request.body())
                # Its client retries enqueue after a timeout, a 5xx or a 408/425/429; the header has no request id:
                # the key is the Idempotency-Key header if sent, else the content (header + array). A repeat gets the
                # first job's uuid (no second job), unless that job failed for a reason worth retrying.
                return await self.service.idempotency.answer(
                    request, "/api/reward/enqueue", (header, data), lambda: self._enqueue(header, data),
                    by_content=True, reuse=self._job_answers)

        @router.post("/api/reward/pull", summary="Cosmos-RL: pull a job's scores (400 while pending)",
                     openapi_extra={"requestBody": {"required": True, "content": {
                         "application/x-www-form-urlencoded": {"schema": {
                             "type": "object", "required": ["uuid"],
                             "properties": {"uuid": {"type": "string"}, "type": {"type": "string"}}}}}}})
        async def pull(request: Request) -> Response:
            job_id, kind = await _pull_fields(request)
            return JSONResponse(await self.pull(job_id, kind))

        return router


async def _pull_fields(request: Request) -> tuple[str, str | None]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        from service.app.serving import parse_json

        data = parse_json(await request.body())
        if not isinstance(data, dict):
            raise ValidationFailed("expected {\"uuid\": ..., \"type\": ...}")
        job_id, kind = data.get("uuid"), data.get("type")
    else:
        try:
            form = await request.form(max_files=0, max_fields=8)
        except (MultiPartException, Exception) as exc:  # noqa: BLE001 - any unparsable form is the client's 400
            raise MalformedBody(f"the pull body must be a form with 'uuid' and 'type': {type(exc).__name__}") from None
        job_id, kind = form.get("uuid"), form.get("type")
    if not isinstance(job_id, str) or not job_id.strip() or len(job_id) > 128:
        raise ValidationFailed("'uuid' (the id enqueue answered) is required", param="uuid")
    if kind is not None and not isinstance(kind, str):
        raise ValidationFailed("'type' must be a reward function name", param="type")
    return job_id.strip(), kind


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001 - the store being down is logged; the job then reads as failed on deadline
        log.exception("could not record a job's end in the job store")
