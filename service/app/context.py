"""Per-request context (id, timings, error code), carried by a contextvar through one request's task."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass
class RequestContext:
    request_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    error_code: str | None = None
    items: int | None = None  # batch size, for the log line


_current: ContextVar[RequestContext | None] = ContextVar("lift_request", default=None)


def new_request_id(offered: str | None) -> str:
    """Take the caller's X-Request-Id when it is a sane token (it ends up in logs), else make one."""
    if offered and _SAFE_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def current() -> RequestContext | None:
    return _current.get()


def bind(ctx: RequestContext) -> object:
    return _current.set(ctx)


def unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def note_timing(name: str, ms: float) -> None:
    ctx = _current.get()
    if ctx is not None:
        ctx.timings_ms[name] = round(ms, 3)


def note_error(code: str) -> None:
    ctx = _current.get()
    if ctx is not None and ctx.error_code is None:
        ctx.error_code = code
