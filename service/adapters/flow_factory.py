"""Flow-Factory's remote reward server, over our scoring path.

Flow-Factory (`flow_factory.rewards.remote.RemotePointwiseRewardModel` / `RemoteGroupwiseRewardModel`) checks
`GET /health` once (any 2xx; ours already exists) and then calls

    POST /compute  {"prompt": [str], "video": [[base64 PNG, one per frame], ...], "image": ..., "kwargs": ...}
    -> 200 {"rewards": [float, ...]}                     (one per video, in order)

A group-wise call is one prompt's group in one request (its client waits 120 s instead of 60 s). Its format
has no per-sample error, so a broken sample fails the whole call, loudly: a 4xx `{"error": ...}` whose `param`
names the sample and frame (`video.3.5`); overload is 429 / 503 with Retry-After (it retries those), and a
reward is never made up. `kwargs.reward` may name another number than LIFT_ADAPTER_REWARD for one call, and
`kwargs.fps` the frame rate (default 8).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.adapters.selection import RewardSelection
from service.app.errors import ValidationFailed
from service.errors import InvalidRequest, LiftError, UnsupportedMedia
from service.frames import b64_bytes
from service.protocol import MAX_PROMPT_CHARS, ScoreOptions

MAX_SAMPLES = 256  # one call's videos (Flow-Factory's batch_size is per call; groups are usually 8-24)
_IGNORED = {"image", "condition_images", "condition_videos", "kwargs"}


def _list_of(value: Any, what: str, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationFailed(f"'{param}' must be a list of {what}", param=param)
    return value


class FlowFactoryAdapter:
    name = "flow-factory"

    def __init__(self, service: Any, selection: RewardSelection) -> None:
        self.service = service
        self.selection = selection
        self.router = self._routes()

    async def aclose(self) -> None:
        return None

    def _parse(self, data: Any) -> tuple[list[str], list[list[str]], RewardSelection, float | None]:
        if not isinstance(data, dict):
            raise ValidationFailed("expected a JSON object {\"prompt\": [...], \"video\": [[...], ...]}")
        unknown = set(data) - {"prompt", "video"} - _IGNORED
        if unknown:
            raise ValidationFailed(f"unknown fields {sorted(unknown)}", param=sorted(unknown)[0])
        prompts = _list_of(data.get("prompt"), "strings", "prompt")
        videos = data.get("video")
        if videos is None:
            if data.get("image"):
                raise UnsupportedMedia("LiFT's critic scores videos; this server takes 'video' (frames), not 'image'",
                                       param="image")
            raise ValidationFailed("'video' is required: a list of videos, each a list of base64 PNG frames",
                                   param="video")
        videos = _list_of(videos, "videos (each a list of base64 PNG frames)", "video")
        if not 1 <= len(prompts) <= MAX_SAMPLES:
            raise ValidationFailed(f"'prompt' must hold 1 to {MAX_SAMPLES} prompts, got {len(prompts)}", param="prompt")
        if len(videos) != len(prompts):
            raise ValidationFailed(f"{len(videos)} videos but {len(prompts)} prompts", param="video")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip() or len(p) > MAX_PROMPT_CHARS:
                raise ValidationFailed(f"prompt {i} must be a non-empty string of at most {MAX_PROMPT_CHARS} "
                                       "characters", param=f"prompt.{i}")
        for i, v in enumerate(videos):
            if not isinstance(v, list) or not v or not all(isinstance(f, str) for f in v):
                raise ValidationFailed(f"video {i} must be a non-empty list of base64 PNG/JPEG frames",
                                       param=f"video.{i}")
        selection = self.selection
        kwargs = data.get("kwargs") if isinstance(data.get("kwargs"), dict) else {}
        if kwargs.get("reward") is not None:
            try:
                selection = self.service.reward_selection(str(kwargs["reward"]))
            except InvalidRequest as exc:
                raise ValidationFailed(exc.message, param="kwargs.reward") from None
        fps = kwargs.get("fps")
        return prompts, videos, selection, fps

    async def compute(self, data: Any) -> dict[str, list[float]]:
        prompts, videos, selection, fps = self._parse(data)
        if not self.service.ready:
            raise self.service.readiness_error()
        options = self.service.adapter_options(selection)  # reward-only unless asked; the critics it names
        cap = self.service.settings.max_frames_bytes

        async def decode(i: int, frames: list[str]) -> Any:
            images = await asyncio.to_thread(_b64_all, frames, cap, f"video.{i}")
            return await self.service.video_of_images(images, options, fps=fps, param=f"video.{i}",
                                                      fps_param="kwargs.fps")

        decoded = await asyncio.gather(*(decode(i, v) for i, v in enumerate(videos)), return_exceptions=True)
        for r in decoded:  # the first broken sample fails the call (the format has no per-sample error)
            if isinstance(r, BaseException):
                raise r
        results = await self.service.score_many(list(zip(decoded, prompts)), options)
        rewards: list[float] = []
        for i, r in enumerate(results):
            if isinstance(r, LiftError):
                if r.param is None or not r.param.startswith("video"):
                    r.message = f"sample {i}: {r.message}"
                raise r
            rewards.append(selection.value(r))
        return {"rewards": rewards}

    def _routes(self) -> APIRouter:
        from service.app.routes import _read_json

        router = APIRouter(tags=["flow-factory"])
        service = self.service

        @router.post("/compute", summary="Flow-Factory remote reward: {prompt, video} -> {rewards}",
                     openapi_extra=_COMPUTE_BODY)
        async def compute(request: Request) -> Response:
            async with service.admission.admit():
                data = await _read_json(request)
                # Its client resends the same body up to 3 times, at once, after any error or its 60/120 s timeout.
                # The protocol has no request id: the key is the Idempotency-Key header if sent, else the content
                # (prompts, frames, kwargs.reward, kwargs.fps): an exact resend is answered from the first call.
                prompts, videos, _, fps = self._parse(data)
                kwargs = data["kwargs"] if isinstance(data.get("kwargs"), dict) else {}
                waves = -(-len(prompts) // max(1, service.settings.max_inflight))
                return await service.idempotency.answer(
                    request, "/compute", (prompts, videos, kwargs.get("reward"), fps), lambda: self.compute(data),
                    by_content=True, pending_s=service.settings.request_timeout_s * waves + 30.0)

        return router


_COMPUTE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["prompt", "video"],
    "properties": {
        "prompt": {"type": "array", "items": {"type": "string"}, "description": "One prompt per video."},
        "video": {"type": "array", "items": {"type": "array", "items": {"type": "string"}},
                  "description": "Each video: its frames as base64 PNG or JPEG images, in order."},
        "kwargs": {"type": "object", "nullable": True,
                   "description": "Optional: reward (another LIFT_ADAPTER_REWARD for this call), fps (default 8)."},
        "image": {"nullable": True}, "condition_images": {"nullable": True}, "condition_videos": {"nullable": True},
    }}}}}}


def _b64_all(frames: list[str], max_bytes: int, param: str) -> list[bytes]:
    out, left = [], max_bytes
    for j, text in enumerate(frames):
        raw = b64_bytes(text, max(left, 0), param=f"{param}.{j}")
        left -= len(raw)
        out.append(raw)
    return out
