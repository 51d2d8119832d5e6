"""Browser fixtures: Debian's headless Chromium driven by the `playwright` package, and the live servers.

The servers are tests/integration/conftest.py's: in-process apps on the session's one vLLM critic
(`live_server`, and `serve_app(**settings)` for an app with API keys on). That file is loaded here by
path under its own module name, because conftest files only reach the tests below them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "e2e"
CHROMIUM = os.environ.get("LIFT_CHROMIUM", "/usr/bin/chromium")
# As root (no user namespace sandbox) and on a closed network: no background calls home, no QUIC.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _load_integration_conftest() -> Any:
    name = "lift_tests_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "integration" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_integration = _load_integration_conftest()
# Re-exported fixtures (pytest collects fixture objects found in a conftest's namespace).
live_media_root = _integration.live_media_root
serve_app = _integration.serve_app
live_server = _integration.live_server


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM}: scripts/install_system_tools.sh installs Debian's `chromium` "
            "(needs root and apt-get); set LIFT_CHROMIUM to use another binary"
        )
    return path


# module scope: sync playwright keeps an event loop running in this thread until it exits, which would break
# every asyncio test collected after this module
@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    # Imported here: a missing `playwright` (test extra) is an install error and fails loudly.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (own storage) and page per test; console errors are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
