"""`create_app(settings, critic)`: the one place the app's parts are built and wired together.

No `app.state` bag: the router closes over one `ScoringService`, the middleware gets metrics and auth
as arguments. Several apps can live in one process (each has its own metrics registry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.adapters import build_adapters
from service.app.auth import ApiKeyAuth
from service.app.errors import install_error_handlers
from service.app.metrics import ServiceMetrics
from service.app.page import build_page_router
from service.app.middleware import RequestMiddleware
from service.app.routes import build_router, install_openapi
from service.app.serving import CriticLike, ScoringService
from service.app.settings import ServiceSettings


def create_app(
    settings: ServiceSettings,
    critic: CriticLike,
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the HTTP app around a critic.

    If the critic is not started yet, the app starts it in the background at startup (so /ready says
    503 meanwhile) and stops it at shutdown; a critic that is already running is left to its owner.
    `on_fatal` is called if the engine fails to load (the CLI uses it to exit non-zero).
    """
    metrics = ServiceMetrics()
    service = ScoringService(settings, critic, metrics, on_fatal=on_fatal)
    adapters = build_adapters(service)  # trainer route sets (LIFT_ADAPTERS) over the same service

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            for adapter in adapters:  # their jobs end (failed: shutdown) before the engine stops
                await adapter.aclose()
            await service.shutdown()

    app = FastAPI(
        title="lift-reward scoring service",
        version="1",
        summary="LiFT-Critic video scoring: semantic consistency, motion smoothness, video fidelity -> reward.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for adapter in adapters:  # first: an adapter may answer a path of ours its way (UniRL's /health + roster)
        app.include_router(adapter.router)
    app.include_router(build_router(service))
    app.include_router(build_page_router())  # GET /: the hand-scoring page (issue 8); public, it holds no data
    install_openapi(app)
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        auth=ApiKeyAuth(settings.api_keys, protect_ops=settings.auth_ops_routes),
        max_body_bytes=settings.max_body_bytes,
        known_paths=frozenset(getattr(r, "path", "") for r in app.routes),
    )
    return app
