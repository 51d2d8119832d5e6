"""The ASGI layer around every request: request id, auth gate, body cap, metrics, one JSON log line.

Pure ASGI (no BaseHTTPMiddleware): it must see the body stream to cap it, and it stays cheap per request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import context
from service.app.auth import ApiKeyAuth
from service.app.errors import MalformedBody, error_response
from service.app.metrics import ServiceMetrics
from service.errors import LiftError, VideoTooLarge

access_log = logging.getLogger("lift.access")


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: ServiceMetrics, auth: ApiKeyAuth, max_body_bytes: int, known_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.known_paths = known_paths  # route label for requests refused before routing (401, 413)
        self.metrics = metrics
        self.auth = auth
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ctx = context.RequestContext(context.new_request_id(_header(scope, b"x-request-id")))
        token = context.bind(ctx)
        status = 500
        rid_header = (b"x-request-id", ctx.request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            rejection = self._gate(scope)
            if rejection is not None:
                await self._send_error(rejection, send_wrapper)
            else:
                await self.app(scope, self._capped(receive), send_wrapper)
        except Exception:
            status = 500  # the catch-all handler answered; the exception is re-raised for the server's log
            context.note_error("internal_error")
            raise
        finally:
            context.unbind(token)
            self._record(scope, ctx, status, time.perf_counter() - started)

    # -- before the app ----------------------------------------------------------------------------
    def _gate(self, scope: Scope) -> LiftError | None:
        path = scope.get("path", "")
        if self.auth.applies_to(path):
            try:
                self.auth.check(_header(scope, b"authorization"))
            except LiftError as exc:
                return exc
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return MalformedBody("Content-Length is not a number")
            if int(declared) > self.max_body_bytes:
                # Refuse before reading a byte of it.
                return VideoTooLarge(
                    f"request body of {declared} bytes is over the limit of {self.max_body_bytes} "
                    f"(videos up to LIFT_MAX_VIDEO_BYTES, base64 included)"
                )
        return None

    def _capped(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked or lying Content-Length: stop at the limit
                    raise VideoTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        return capped_receive

    async def _send_error(self, exc: LiftError, send: Send) -> None:
        context.note_error(exc.code)
        response = error_response(exc)
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    # -- after the app -----------------------------------------------------------------------------
    def _record(self, scope: Scope, ctx: context.RequestContext, status: int, elapsed_s: float) -> None:
        route = scope.get("route")
        path = scope.get("path", "")
        route_path = getattr(route, "path", None) or (path if path in self.known_paths else "other")
        self.metrics.requests.labels(route=route_path, status=str(status)).inc()
        self.metrics.request_duration.labels(route=route_path).observe(elapsed_s)
        if status >= 400:
            self.metrics.rejected.labels(reason=ctx.error_code or str(status)).inc()
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "route": route_path,
            "status": status,
            "duration_ms": round(elapsed_s * 1000, 3),
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        if ctx.timings_ms:
            fields["timings_ms"] = ctx.timings_ms
        if ctx.error_code:
            fields["error"] = ctx.error_code
        if ctx.items is not None:
            fields["items"] = ctx.items
        access_log.info("request", extra={"fields": fields})

