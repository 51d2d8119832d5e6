"""GET /: the hand-scoring page, one self-contained HTML file (inline CSS + JS, nothing fetched elsewhere).

The page talks to the public API only (`POST /v1/score`), so it needs no access to the service's internals.
Its Content-Security-Policy pins the inline script and style by hash and allows no other origin, so
the page keeps working offline and model text can never run as script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


@cache
def page() -> tuple[bytes, str]:
    """The page's bytes and its CSP (read once from the installed package)."""
    html = resources.files("service.app.static").joinpath("index.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _BLOCK.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(hashes['script'])}",
            # Inline style attributes (the probability bars' widths) need 'unsafe-hashes' + a hash per
            # value; they are set from JS via CSSOM, which CSP does not restrict.
            f"style-src {' '.join(hashes['style'])}",
            "img-src data: blob:",  # frame thumbnails arrive as data: URLs
            "media-src blob:",  # the chosen video plays from an object URL, never uploaded twice
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode("utf-8"), csp


def build_page_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> Response:
        body, csp = page()
        return Response(
            body,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )

    return router
