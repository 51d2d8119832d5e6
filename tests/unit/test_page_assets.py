"""The hand-scoring page as a file: self-contained, pinned by its CSP, and shipped inside the wheel.

Its behaviour in a browser is tests/e2e/test_page.py; these checks need no engine and no browser.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.app.page import page

REPO = Path(__file__).resolve().parents[2]


def test_page_loads_nothing_from_elsewhere() -> None:
    body, _ = page()
    html = body.decode()
    # No external script, stylesheet, font, image or import: the service may run offline.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "<link" not in html.lower()
    assert html.count("<script>") == 1 and html.count("<style>") == 1


def test_csp_pins_the_inline_blocks_by_hash() -> None:
    body, csp = page()
    html = body.decode()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for kind in ("script", "style"):
        (block,) = re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert directives[f"{kind}-src"] == f"'sha256-{digest}'"


@pytest.mark.slow
def test_wheel_ships_the_page(tmp_path: Path) -> None:
    """An installed wheel must serve GET /: the html is package data of service.app.static."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    for pkg in ("service", "clients", "finetune"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(out), str(src)],
        check=True, timeout=300,
    )
    (wheel,) = out.glob("lift_reward-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("service/app/static/index.html")
    assert shipped == (REPO / "service/app/static/index.html").read_bytes()
