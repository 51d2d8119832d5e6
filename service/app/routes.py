"""HTTP only: content types, bodies, forms and status codes in; `ScoringService` calls out.

No model code here. The score routes read the body themselves (JSON or multipart on one route, and a
batch whose items fail one by one), so their OpenAPI bodies are declared explicitly.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.app.errors import MalformedForm, PayloadTooLarge, ValidationFailed, error_response
from service.app.metrics import CONTENT_TYPE
from service.app.serving import ScoringService, parse_json_async, parse_options, parse_prompt, parse_score_request
from service.errors import InvalidVideo, UnsupportedMedia, VideoTooLarge
from service.frames import NPY_MAGIC, is_npy
from service.protocol import (
    BatchScoreRequest,
    BatchScoreResponse,
    ErrorResponse,
    ModelList,
    ScoreRequest,
    ScoreResponse,
)

MAX_FORM_FIELD_BYTES = 1024 * 1024  # prompt/options parts; the prompt's own limit is checked after

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "Malformed body (not JSON, not UTF-8, broken form).",
        401: "Missing or invalid API key.",
        403: "Media source not allowed (outside the media root, private address, ...).",
        409: "Idempotency-Key already used for a request with other content.",
        413: "Video or body over LIFT_MAX_VIDEO_BYTES.",
        415: "Body is neither JSON nor multipart/form-data.",
        422: "Invalid fields, or a video that cannot be decoded or fetched.",
        429: "Overloaded; see Retry-After.",
        503: "Engine loading or failed; see Retry-After.",
        504: "Request timed out.",
    }.items()
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {
    "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Makes a retry safe: a repeat with the same key and the same content is answered with the first "
                   "answer (header Idempotent-Replayed: true), not scored again; the same key with other content is "
                   "a 409. Remembered LIFT_IDEMPOTENCY_TTL_S (900 s)."}
_SCORE_BODY = {
    "parameters": [_IDEMPOTENCY_KEY],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("ScoreRequest")},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video", "prompt"],
                    "properties": {
                        "video": {"type": "string", "format": "binary",
                                  "description": "The video file, or frames as a uint8 .npy array (T, H, W, 3)."},
                        "fps": {"type": "string", "description": "Frame rate of .npy frames (default 8)."},
                        "prompt": {"type": "string", "description": "The caption the video was generated from."},
                        "options": {"type": "string", "description": "ScoreOptions as a JSON object."},
                    },
                }
            },
        },
    }
}
_BATCH_BODY = {"parameters": [_IDEMPOTENCY_KEY],
               "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchScoreRequest")}}}}
EXTRA_SCHEMAS = (ScoreRequest, BatchScoreRequest)


def _video_parts(req: ScoreRequest) -> list[Any]:
    """A JSON request's media as sent, for its content hash (base64 text as given: a resend is byte for byte)."""
    v = req.video
    return [v.path, v.url, v.base64, v.npy, v.frames, v.fps]


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_json(request: Request) -> Any:
    media = _media_type(request)
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(f"Content-Type {media!r} is not supported here; send application/json")
    return await parse_json_async(await request.body())


def _json(model: BaseModel) -> Response:
    # Serialise once (the model is already valid); response_model only documents the shape.
    return Response(model.model_dump_json(), media_type="application/json")


def build_router(service: ScoringService) -> APIRouter:
    router = APIRouter()
    max_video = service.settings.max_video_bytes
    max_frames = service.settings.max_frames_bytes

    @router.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        openapi_extra=_SCORE_BODY,
        summary="Score one video on LiFT's three dimensions",
    )
    async def score(request: Request) -> Response:
        async with service.admission.admit():  # before reading the body: bounds memory under a burst
            media = _media_type(request)
            once = service.idempotency  # Idempotency-Key: a repeat gets the first answer, unscored
            if media == "multipart/form-data":
                video, prompt, options, fps = await _read_form(request, max_video, max_frames)
                return await once.answer(request, "/v1/score", ("upload", prompt, options, fps, video),
                                         lambda: service.score_upload(video, prompt, options, fps=fps))
            req = parse_score_request(await _read_json(request))
            return await once.answer(request, "/v1/score", ("json", req.prompt, req.options, _video_parts(req)),
                                     lambda: service.score(req))

    @router.post(
        "/v1/score/batch",
        response_model=BatchScoreResponse,
        responses=_ERRORS,
        openapi_extra=_BATCH_BODY,
        summary="Score up to 64 videos; each item gets its result or its own error, in order",
    )
    async def score_batch(request: Request) -> Response:
        async with service.admission.admit():
            data = await _read_json(request)
            items = data.get("items") if isinstance(data, dict) else None
            once = None  # Idempotency-Key: checked against all items now, each item's answer remembered
            if isinstance(items, list):
                once = await service.idempotency.batch(request, "/v1/score/batch", items)
            return _json(await service.score_batch(data, once=once))

    @router.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]}, summary="The served critic")
    async def models() -> ModelList:
        return service.models()

    @router.get("/health", summary="Liveness: the process answers and its engine has not failed",
                responses={503: _ERRORS[503]})
    async def health() -> Response:
        if not service.alive:  # a failed load or a dead engine will not heal: let the orchestrator restart us
            return error_response(service.readiness_error())
        return JSONResponse({"status": "ok"})

    @router.get("/ready", summary="Readiness: the engine is loaded", responses={503: _ERRORS[503]})
    async def ready() -> Response:
        if not service.ready:
            return error_response(service.readiness_error())
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return router


async def _read_form(request: Request, max_video: int, max_frames: int) -> tuple[bytes, str, Any, float | None]:
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=MAX_FORM_FIELD_BYTES)
    except (MultiPartException, StarletteHTTPException) as exc:
        # Starlette turns its parser's MultiPartException into a bare HTTPException(400): map both.
        text = str(getattr(exc, "message", None) or getattr(exc, "detail", "") or exc)
        if "maximum size" in text.lower():
            raise PayloadTooLarge(f"multipart field too large: {text}") from None
        raise MalformedForm(f"broken multipart form: {text}") from None
    try:
        video = form.get("video")
        prompt = form.get("prompt")
        options_raw = form.get("options")
        fps_raw = form.get("fps")
        if not isinstance(video, UploadFile):
            raise ValidationFailed("multipart form needs a 'video' file field", param="video")
        if not isinstance(prompt, str):
            raise ValidationFailed("multipart form needs a 'prompt' text field", param="prompt")
        if options_raw is not None and not isinstance(options_raw, str):
            raise ValidationFailed("'options' must be a text field holding JSON", param="options")
        # An .npy upload is frames (issue 19): raw pixels get their own, larger cap (LIFT_MAX_FRAMES_BYTES).
        head = await video.read(len(NPY_MAGIC))
        cap = max_frames if is_npy(head) else max_video
        if video.size is not None and video.size > cap:
            raise VideoTooLarge(f"video is {video.size} bytes, over the limit of {cap}", param="video")
        data = head + await video.read(cap + 1 - len(head))  # spooled to disk by the parser; read capped
        if len(data) > cap:
            raise VideoTooLarge(f"video is over the limit of {cap} bytes", param="video")
        if not data:
            raise InvalidVideo("the uploaded video is empty (0 bytes)", param="video")
        fps = _parse_fps(fps_raw)
        # Same rules as JSON: the prompt field's own constraints, the options model.
        options = parse_options(options_raw)
        model = form.get("model")
        if model is not None:  # which critic answers, as JSON's top-level `model`
            if not isinstance(model, str) or not 1 <= len(model) <= 128:
                raise ValidationFailed("'model' must be a critic id from /v1/models", param="model")
            if options.critics is not None and options.critics != [model]:
                raise ValidationFailed("'model' and 'options.critics' name different critics", param="model")
            options = options.model_copy(update={"critics": [model]})
        return data, parse_prompt(prompt), options, fps
    finally:
        await form.close()


def _parse_fps(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ValidationFailed("'fps' must be a text field holding a number", param="fps")
    try:
        value = float(raw)
    except ValueError:
        raise ValidationFailed(f"fps must be a number, got {raw[:40]!r}", param="fps") from None
    if not 0 < value <= 240:
        raise ValidationFailed("fps must be in (0, 240]", param="fps")
    return value


def install_openapi(app: FastAPI) -> None:
    """Add the hand-declared request bodies' models to the generated schema's components."""
    from pydantic.json_schema import models_json_schema

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        _, defs = models_json_schema([(m, "validation") for m in EXTRA_SCHEMAS], ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, s in defs.get("$defs", {}).items():
            components.setdefault(name, s)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
