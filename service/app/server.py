"""Run an app under uvicorn with the service's shutdown rules.

SIGTERM/SIGINT: stop accepting, let in-flight requests finish (bounded by the graceful timeout), stop
the engine, exit 0. Plain uvicorn re-raises the signal after a graceful shutdown, which would make the
process die "by signal" instead of exiting 0.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from service.app.settings import ServiceSettings


class GracefulServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # The graceful shutdown already was the answer to SIGTERM/SIGINT: do not re-raise it.
            self._captured_signals = [s for s in self._captured_signals if s not in (signal.SIGTERM, signal.SIGINT)]


def uvicorn_config(app: FastAPI, settings: ServiceSettings, *, port: int | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_config=None,  # logging is configured by service.app.logs (JSON lines)
        access_log=False,  # the app logs one JSON line per request itself
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        timeout_keep_alive=5,
        lifespan="on",
        server_header=False,
    )
