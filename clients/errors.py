"""The service's error body -> the project's typed exceptions.

The client raises the same types the service raises (`service.errors`), so `except InvalidVideo`
means the same thing in-process and over HTTP. Each raised error also carries the HTTP status and the
replica that answered. Errors only a client can see (nobody answered, an answer that is not ours) get
their own types here.
"""

from __future__ import annotations

import json
from typing import Any

from service import errors as E

__all__ = [
    "E",
    "ServiceUnreachable",
    "UnexpectedResponse",
    "error_from_body",
    "error_from_response",
    "RETRYABLE_STATUS",
]


class ServiceUnreachable(E.LiftError):
    """No replica answered (connection refused/reset, DNS, connect timeout) after every retry."""

    code = "service_unreachable"


class UnexpectedResponse(E.LiftError):
    """A reply that is not the v1 contract: a proxy's HTML page, an unknown error code, a bad body."""

    code = "unexpected_response"


# Statuses where asking again (later, or another replica) can succeed. Everything else is final:
# a 4xx will fail the same way again, a 504 means the work is too slow and a retry only adds load.
RETRYABLE_STATUS = frozenset({429, 503})


def _code_table() -> dict[str, type[E.LiftError]]:
    # Most specific class wins where a parent shares its code (MediaError and InvalidVideo).
    table: dict[str, type[E.LiftError]] = {}
    stack: list[type[E.LiftError]] = [E.LiftError]
    while stack:
        cls = stack.pop(0)
        table[cls.code] = cls
        stack.extend(cls.__subclasses__())
    table[E.InvalidVideo.code] = E.InvalidVideo
    return table


_CODES = _code_table()


def error_from_body(
    body: Any, *, status: int, replica: str | None = None, retry_after_s: float | None = None
) -> E.LiftError:
    """Build the typed error for an `{"error": {"code", "message", "param"}}` body."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict) or not isinstance(detail.get("code"), str):
        exc: E.LiftError = UnexpectedResponse(f"HTTP {status} without an error body: {str(body)[:200]}")
    else:
        code = detail["code"]
        message = str(detail.get("message") or code)
        param = detail.get("param")
        cls = _CODES.get(code) or _by_status(status)
        if cls is UnexpectedResponse:
            exc = UnexpectedResponse(f"{code}: {message}", param=param)
        elif issubclass(cls, E.Overloaded):
            exc = cls(message, retry_after_s=retry_after_s if retry_after_s is not None else 1.0)
            exc.param = param
        else:
            exc = cls(message, param=param)
        if exc.code != code:
            # A code this client does not know (the HTTP layer's own, or a newer server's): typed by
            # status, and the server's code kept so callers and logs see the real one.
            exc.code = code
    exc.status_code = status  # type: ignore[attr-defined]
    exc.replica = replica  # type: ignore[attr-defined]
    if retry_after_s is not None or not hasattr(exc, "retry_after_s"):
        exc.retry_after_s = retry_after_s  # type: ignore[attr-defined]
    return exc


def _by_status(status: int) -> type[E.LiftError]:
    if status == 429:
        return E.Overloaded
    if status == 503:
        return E.EngineNotReady
    if status == 401 or status == 403:
        return E.Unauthorized
    if status == 504:
        return E.RequestTimeout
    if 400 <= status < 500:
        return E.InvalidRequest  # invalid_json, validation_error, payload_too_large, not_found, ...
    return UnexpectedResponse


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the service sends delta-seconds; an HTTP date is read too)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def error_from_response(status: int, content: bytes, headers: Any, replica: str | None = None) -> E.LiftError:
    """Typed error for a non-2xx reply (any body: ours, a proxy's, none)."""
    retry_after = parse_retry_after(headers.get("retry-after") if headers is not None else None)
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = content[:200].decode("utf-8", "replace")
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        # No contract body: still type what the status tells us, so retries and callers behave.
        if status == 429:
            body = {"error": {"code": E.Overloaded.code, "message": f"HTTP 429: {body}"}}
        elif status == 503:
            body = {"error": {"code": E.EngineNotReady.code, "message": f"HTTP 503: {body}"}}
        elif status == 401 or status == 403:
            body = {"error": {"code": E.Unauthorized.code, "message": f"HTTP {status}: {body}"}}
        elif status == 504:
            body = {"error": {"code": E.RequestTimeout.code, "message": f"HTTP 504: {body}"}}
    return error_from_body(body, status=status, replica=replica, retry_after_s=retry_after)
