"""UniRL's reward service protocol, over our scoring path.

The wire format, read from Tencent-Hunyuan/UniRL@1a7b501e8fe8517b432a130220d2ff462f9b5afa:
`unirl-reward-service/reward_service/schemas.py` (the bodies), `unirl-reward-service/reward_service/server.py`
(the routes), `unirl-reward-service/reward_service/workers/pool.py` + `workers/actor.py` (the /health roster), and
the trainer's client `unirl/reward/remote.py` (`RemoteRewardBackend`: what it sends and how it reads the answer).

    POST /score   {"requests": [{"history": [{"text", "video_b64" | "video_path" | "image_b64"}],
                                 "required_rewards": [name, ...], "metadata": {...} | null}, ...]}
        -> 200 {"results": [{name: {sub: number}}], "errors": [{name: reason}]}     (one entry each, in order)
    GET /health   -> {"status": "ok", "rewards": {name: ["<name>:ready"]}}   (its client checks every required name)
    GET /rewards  -> {"rewards": [name, ...]}

Its trainer (`input_kind: video`) re-encodes each sample as an 8 fps H.264 mp4 and sends it as `video_b64`, one
single-turn history per sample. Per reward it reads the FIRST sub-score (JSON order, `sub_metric_reduce: first`), fails
the sample on a missing reward or any null / NaN / non-number sub-score, and reads an empty sub-score object as 0.0:
so every reward here is a non-empty object of finite numbers whose first entry is the reward itself.

Rewards served, under our own names: `lift` (LIFT_ADAPTER_REWARD, first), `reward`, `expected_reward`, each dimension
(its expected score) and `DIM.score` (its label score). Each one's sub-scores: its own number first, then every other
number of the same score under its own key (as Cosmos-RL's `scores`).

Where its reference server fails the whole batch on one bad turn (a 400 for a broken base64 or a missing path), a
sample's own fault here (an image where a video is needed, a broken or oversized video, a path outside
LIFT_MEDIA_ROOT, an empty prompt) is that sample's entry in `errors`, with a reason, and the other samples are scored.
A malformed envelope is a 422 and an unknown reward name a 400 (as there); overload, a loading or failed engine
and timeouts fail the call with 429 / 503 / 504 (its client retries the batch), never a made-up number.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.adapters.selection import RewardSelection, all_scores, reward_names
from service.app.errors import ValidationFailed, error_response, status_of
from service.errors import InvalidRequest, LiftError, Overloaded, UnsupportedMedia
from service.fetch import decode_base64, resolve_path
from service.protocol import MAX_PROMPT_CHARS, ScoreOptions, ScoreResponse

REWARD_FN = "lift"  # carries LIFT_ADAPTER_REWARD: the name a trainer puts in required_rewards
MAX_SAMPLES = 256  # one call's requests (its client's batch_size is 8 by default)


@dataclass
class _Sample:
    rewards: list[str]  # required, deduplicated, in the order asked
    prompt: str = ""
    video: bytes | Path | None = None
    field: str | None = None  # where the video came from, named in a reason the decoder gives without one
    error: LiftError | None = None


def _reason(exc: LiftError) -> str:
    where = f" ({exc.param})" if exc.param else ""
    return f"{exc.code}: {exc.message}{where}"


class UniRLAdapter:
    name = "unirl"

    def __init__(self, service: Any, selection: RewardSelection) -> None:
        self.service = service
        self.selection = selection
        # the names a trainer may ask for: ours, then every number of the deployment's critic
        self.rewards: tuple[str, ...] = (REWARD_FN, *reward_names(service.critic_dimensions))
        self.router = self._routes()

    async def aclose(self) -> None:
        return None

    # -- the envelope: a fault here fails the call, as a schema error does in UniRL's server ------------------
    def _parse(self, data: Any) -> list[tuple[list[str], Any]]:
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise ValidationFailed("expected {\"requests\": [{\"history\": [...], \"required_rewards\": [...], "
                                   "\"metadata\": ...}, ...]}", param="requests")
        requests = data["requests"]
        if len(requests) > MAX_SAMPLES:
            raise ValidationFailed(f"'requests' holds {len(requests)} samples; at most {MAX_SAMPLES} per call",
                                   param="requests")
        out: list[tuple[list[str], Any]] = []
        for i, req in enumerate(requests):
            p = f"requests.{i}"
            if not isinstance(req, dict):
                raise ValidationFailed(f"request {i} must be an object {{history, required_rewards, metadata}}", param=p)
            names = req.get("required_rewards")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValidationFailed(f"request {i}: 'required_rewards' must be a list of reward names",
                                       param=f"{p}.required_rewards")
            for j, n in enumerate(names):
                if n not in self.rewards:  # UniRL's server answers 400 for the whole batch; so do we
                    raise InvalidRequest(f"unknown reward: {n}. available: {list(self.rewards)}",
                                         param=f"{p}.required_rewards.{j}")
            if req.get("metadata") is not None and not isinstance(req["metadata"], dict):
                raise ValidationFailed(f"request {i}: 'metadata' must be an object or null", param=f"{p}.metadata")
            out.append((list(dict.fromkeys(names)), req.get("history")))
        return out

    # -- one sample's media: a fault here is that sample's entry in `errors` -------------------------------------
    def _media(self, i: int, history: Any) -> tuple[str, bytes | Path, str]:
        p = f"requests.{i}.history"
        if not isinstance(history, list) or not history:
            raise ValidationFailed("'history' must be a non-empty list of turns", param=p)
        tp = f"{p}.{len(history) - 1}"
        turn = history[-1]  # the scored turn, as UniRL's video scorers read it: its text and its video
        if not isinstance(turn, dict):
            raise ValidationFailed("a turn must be an object {text, video_b64 | video_path | image_b64}", param=tp)
        text = turn.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
            raise ValidationFailed(f"the turn's text (the prompt) must be a non-empty string of at most "
                                   f"{MAX_PROMPT_CHARS} characters", param=f"{tp}.text")
        b64, path = turn.get("video_b64"), turn.get("video_path")
        if b64 is not None and path is not None:
            raise ValidationFailed("video_b64 and video_path are mutually exclusive", param=tp)
        if path is not None:
            if not isinstance(path, str):
                raise ValidationFailed("video_path must be a string", param=f"{tp}.video_path")
            param = f"{tp}.video_path"
            return text, resolve_path(self.service.connector.policy, path, param=param), param
        if b64 is not None:
            if not isinstance(b64, str):
                raise ValidationFailed("video_b64 must be a base64 string", param=f"{tp}.video_b64")
            param = f"{tp}.video_b64"
            return text, decode_base64(b64, self.service.settings.max_video_bytes, param=param), param
        if turn.get("image_b64") is not None:
            raise UnsupportedMedia("LiFT's critic judges videos (motion needs frames over time); this turn carries an "
                                   "image where a video is needed: set input_kind: video in the trainer's "
                                   "RemoteRewardSpec", param=f"{tp}.image_b64")
        raise ValidationFailed("the turn carries no video: send video_b64 or video_path", param=tp)

    async def _sample(self, i: int, names: list[str], history: Any) -> _Sample:
        sample = _Sample(names)
        if not names:  # nothing asked, nothing to score (UniRL's server answers {} for it too)
            return sample
        try:
            sample.prompt, sample.video, sample.field = await asyncio.to_thread(self._media, i, history)
        except LiftError as exc:
            self.service.metrics.rejected.labels(reason=exc.code).inc()
            sample.error = exc
        return sample

    def _rewards_of(self, response: ScoreResponse, names: list[str]) -> dict[str, dict[str, float]]:
        numbers = {REWARD_FN: self.selection.value(response), **all_scores(response)}
        bad = [k for k, v in numbers.items() if not math.isfinite(v)]
        if bad:  # its client would fail the sample on a NaN anyway: say why instead of sending one
            raise LiftError(f"the critic returned a non-finite score for {bad}")
        return {n: {n: numbers[n], **{k: v for k, v in numbers.items() if k not in (n, REWARD_FN)}} for n in names}

    async def score(self, data: Any) -> dict[str, list[dict[str, Any]]]:
        parsed = self._parse(data)
        if not parsed:
            return {"results": [], "errors": []}
        if not self.service.ready:
            raise self.service.readiness_error()
        samples = await asyncio.gather(*(self._sample(i, n, h) for i, (n, h) in enumerate(parsed)))
        todo = [i for i, s in enumerate(samples) if s.rewards and s.error is None]
        options = self.service.adapter_options(self.selection)  # reward-only unless asked; the critics it names
        scored = await self.service.score_many([(samples[i].video, samples[i].prompt) for i in todo], options)
        for i, r in zip(todo, scored):
            if isinstance(r, LiftError):
                if isinstance(r, Overloaded) or status_of(r) >= 500:  # the service's state, not the sample:
                    r.message = f"sample {i}: {r.message}"  # fail the call, its client retries the batch
                    raise r
                r.param = r.param or samples[i].field
                samples[i].error = r
        results: list[dict[str, Any]] = [{} for _ in samples]
        errors: list[dict[str, str]] = [{} for _ in samples]
        for k, i in enumerate(todo):
            if samples[i].error is None:
                try:
                    results[i] = self._rewards_of(scored[k], samples[i].rewards)  # type: ignore[arg-type]
                except LiftError as exc:
                    samples[i].error = exc
        for i, s in enumerate(samples):
            if s.error is not None:
                errors[i] = {n: _reason(s.error) for n in s.rewards}
        return {"results": results, "errors": errors}

    def health(self) -> Response:
        service = self.service
        if not service.alive:  # a failed load or a dead engine: its client's is_available() reads False
            return error_response(service.readiness_error())
        state = "ready" if service.ready else "loading"  # 200 while loading, as our own /health; /score says 503
        return JSONResponse({"status": "ok", "rewards": {n: [f"{n}:{state}"] for n in self.rewards}})

    def _routes(self) -> APIRouter:
        from service.app.routes import _read_json

        router = APIRouter(tags=["unirl"])
        service = self.service

        @router.post("/score", summary="UniRL reward service: {requests: [{history, required_rewards}]} -> "
                     "{results, errors}", openapi_extra=_score_body(self.rewards))
        async def score(request: Request) -> Response:
            async with service.admission.admit():
                data = await _read_json(request)
                # Its client resends a chunk after a timeout (300 s), a 5xx or a 429. Newer clients give every sample a
                # `request_id` (its sample id, or a uuid made once per chunk): the key is the chunk's ids, so ids reused
                # with other content (a resumed run) are a 409, never the old scores. Without ids (the 1a7b501 client)
                # the key is the content. An Idempotency-Key header wins over both.
                self._parse(data)  # a bad envelope is refused before anything is remembered
                requests = data["requests"]
                ids = [r.get("request_id") for r in requests]
                key = ("request_id", ",".join(ids)) if ids and all(isinstance(i, str) and i for i in ids) else None
                waves = -(-len(requests) // max(1, service.settings.max_inflight))
                return await service.idempotency.answer(
                    request, "/score", (requests,), lambda: self.score(data), by_content=True, ids=key,
                    pending_s=service.settings.request_timeout_s * waves + 30.0)

        # Served before the service's own /health (the app includes adapters first): the same liveness answer
        # with UniRL's reward roster added. The service's route documents the path.
        @router.get("/health", name="unirl_health", include_in_schema=False)
        async def health() -> Response:
            return self.health()

        @router.get("/rewards", summary="UniRL reward service: the reward names /score computes")
        async def rewards() -> Response:
            return JSONResponse({"rewards": list(self.rewards)})

        return router


def _score_body(rewards: tuple[str, ...]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["requests"],
    "properties": {"requests": {"type": "array", "items": {
        "type": "object", "required": ["history", "required_rewards"],
        "properties": {
            "history": {"type": "array", "description": "Turns; the last one is scored: its text is the prompt.",
                        "items": {"type": "object", "required": ["text"], "properties": {
                            "text": {"type": "string"},
                            "video_b64": {"type": "string", "nullable": True,
                                          "description": "A video file (mp4, ...), base64."},
                            "video_path": {"type": "string", "nullable": True,
                                           "description": "A video file under LIFT_MEDIA_ROOT."},
                            "image_b64": {"type": "string", "nullable": True,
                                          "description": "Not scored: the critic judges videos."}}}},
            "required_rewards": {"type": "array", "items": {"type": "string", "enum": list(rewards)}},
            "metadata": {"type": "object", "nullable": True, "description": "Accepted and ignored."},
        }}}}}}}}}
