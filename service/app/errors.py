"""THE table from error types to HTTP status codes, and the one error body shape.

Every error the service answers with, typed or not, leaves through `error_response`:
`{"error": {"code", "message", "param"}}`. Status codes are chosen here and nowhere else.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    AnswerParseError,
    EngineDead,
    EngineError,
    EngineNotReady,
    EngineStartError,
    ForbiddenMediaSource,
    IdempotencyConflict,
    InvalidRequest,
    InvalidVideo,
    JobFailed,
    JobNotFound,
    JobPending,
    JobStoreUnavailable,
    LatentDecoderNotConfigured,
    LiftError,
    MediaError,
    MediaFetchError,
    MediaNotFound,
    ModelLoadError,
    Overloaded,
    RequestTimeout,
    Unauthorized,
    UnparsableAnswer,
    UnsupportedMedia,
    VideoTooLarge,
)
from service.app.context import note_error
from service.protocol import ErrorDetail

log = logging.getLogger("lift.service")


# ---- HTTP-layer error types (the request itself, before any media or model is involved) ----------
class MalformedBody(InvalidRequest):
    """Body is not JSON, not UTF-8, or a broken multipart form."""

    code = "invalid_json"


class MalformedForm(MalformedBody):
    """A multipart/form-data body that does not parse (no boundary, truncated, too many parts)."""

    code = "invalid_form"


class ValidationFailed(InvalidRequest):
    """Well-formed body whose fields have the wrong types, ranges or lengths."""

    code = "validation_error"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class RouteNotFound(InvalidRequest):
    code = "not_found"


class MethodNotAllowed(InvalidRequest):
    code = "method_not_allowed"


# Most specific first is not needed: lookup walks the exception's MRO, so a subclass finds its own
# entry before its parent's.
STATUS: dict[type[LiftError], int] = {
    MalformedBody: 400,
    MalformedForm: 400,
    ValidationFailed: 422,
    PayloadTooLarge: 413,
    RouteNotFound: 404,
    MethodNotAllowed: 405,
    InvalidRequest: 400,
    InvalidVideo: 422,
    VideoTooLarge: 413,
    UnsupportedMedia: 415,
    MediaNotFound: 422,
    ForbiddenMediaSource: 403,
    MediaFetchError: 422,
    MediaError: 422,
    LatentDecoderNotConfigured: 422,
    IdempotencyConflict: 409,
    JobPending: 400,
    JobNotFound: 404,
    JobFailed: 422,
    JobStoreUnavailable: 503,
    Unauthorized: 401,
    Overloaded: 429,
    EngineNotReady: 503,
    EngineError: 503,
    EngineDead: 503,
    EngineStartError: 503,
    UnparsableAnswer: 422,
    AnswerParseError: 503,
    ModelLoadError: 503,
    RequestTimeout: 504,
    LiftError: 500,
}


def status_of(exc: LiftError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def retry_after_of(exc: LiftError) -> int | None:
    """Seconds for `Retry-After` on errors worth retrying (overload, engine still loading)."""
    if isinstance(exc, Overloaded):
        return max(1, math.ceil(exc.retry_after_s))
    if isinstance(exc, JobPending):
        return 1
    if isinstance(exc, (EngineNotReady, EngineError, EngineStartError, ModelLoadError, JobStoreUnavailable)):
        return 5  # another replica (or this one, restarted) may answer
    return None


def error_detail(exc: LiftError) -> ErrorDetail:
    return ErrorDetail(code=exc.code, message=exc.message, param=exc.param)


def error_response(exc: LiftError) -> JSONResponse:
    note_error(exc.code)
    headers: dict[str, str] = {}
    retry = retry_after_of(exc)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": error_detail(exc).model_dump()}
    return JSONResponse(body, status_code=status_of(exc), headers=headers)


def validation_failed(errors: list[dict], prefix: str = "") -> ValidationFailed:
    """pydantic/FastAPI errors -> one ValidationFailed naming the first bad field."""
    if not errors:
        return ValidationFailed("request is invalid")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(([prefix] if prefix else []) + loc) or None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ValidationFailed(f"{param + ': ' if param else ''}{msg}{more}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LiftError)
    async def _lift(_: Request, exc: LiftError) -> JSONResponse:
        if status_of(exc) >= 500:
            log.warning("request failed: %s: %s", exc.code, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return error_response(MalformedBody("request body is not valid JSON"))
        return error_response(validation_failed(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        mapped: LiftError
        if exc.status_code == 404:
            mapped = RouteNotFound("no such route")
        elif exc.status_code == 405:
            mapped = MethodNotAllowed("method not allowed on this route")
        else:
            detail = exc.detail if isinstance(exc.detail, str) else "request rejected"
            mapped = InvalidRequest(detail)
            note_error(mapped.code)
            return JSONResponse({"error": error_detail(mapped).model_dump()}, status_code=exc.status_code, headers=exc.headers)
        return error_response(mapped)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not a client error: log it whole, answer the same body shape without internals.
        log.exception("unhandled error: %s", type(exc).__name__)
        note_error("internal_error")
        return JSONResponse({"error": {"code": "internal_error", "message": "internal server error", "param": None}}, status_code=500)
