"""Reading a labeling manifest: JSONL lines `{"id"?, "video", "prompt"}`.

Ids: a line's `"id"` if it has one (any JSON scalar, kept as a string); otherwise a stable hash of
video and prompt: `"h" + sha256(video + "\\n" + prompt)[:16]`. The hash (not the line number) is the
default because it survives edits to the manifest (inserted, removed or reordered lines) and so keeps
a resumed run from redoing or mislabeling items. The same (video, prompt) twice is one item.

Videos are local paths (uploaded as bytes) or http(s) URLs (passed through for the server to fetch).
A relative path is looked up next to the manifest first, then in the current directory.
A malformed line does not stop the run: it becomes an item with id `line-<N>` that is recorded as an
error without asking the service.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, MediaNotFound

from .video import is_url


@dataclass(frozen=True)
class ManifestItem:
    id: str
    video: str
    prompt: str
    line: int
    problem: str | None = None  # why the line cannot be labeled (malformed), else None


def item_id(video: str, prompt: str) -> str:
    return "h" + hashlib.sha256(f"{video}\n{prompt}".encode("utf-8")).hexdigest()[:16]


@dataclass
class Manifest:
    path: Path
    items: list[ManifestItem]
    duplicates: int  # lines skipped because their id was already in the manifest

    def resolve(self, video: str) -> str | Path:
        """URL as is; a local path made absolute (manifest's folder first, then the working directory)."""
        if is_url(video):
            return video
        p = Path(video).expanduser()
        if p.is_absolute():
            return p
        beside = self.path.parent / p
        if beside.exists() or not p.exists():
            return beside
        return p.resolve()


def _item_from(obj: Any, n: int) -> ManifestItem:
    if not isinstance(obj, dict):
        return ManifestItem(f"line-{n}", "", "", n, "line is not a JSON object")
    video, prompt = obj.get("video"), obj.get("prompt", obj.get("caption"))
    missing = [k for k, v in (("video", video), ("prompt", prompt)) if not isinstance(v, str) or not v.strip()]
    raw_id = obj.get("id")
    if raw_id is not None and not isinstance(raw_id, (str, int, float)):
        return ManifestItem(f"line-{n}", str(video or ""), str(prompt or ""), n, "'id' must be a string or number")
    if missing:
        ident = str(raw_id) if raw_id is not None else f"line-{n}"
        return ManifestItem(ident, str(video or ""), str(prompt or ""), n, f"missing or empty {' and '.join(missing)}")
    ident = str(raw_id) if raw_id is not None else item_id(video, prompt)
    return ManifestItem(ident, video, prompt, n)


def read_manifest(path: str | Path) -> Manifest:
    """Parse the whole manifest (one pass; items keep file order)."""
    p = Path(path)
    if not p.is_file():
        raise MediaNotFound(f"manifest not found: {p}", param="manifest")
    items: list[ManifestItem] = []
    seen: set[str] = set()
    duplicates = 0
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = _item_from(json.loads(line), n)
            except json.JSONDecodeError as exc:
                item = ManifestItem(f"line-{n}", "", "", n, f"not valid JSON ({exc.msg})")
            if item.id in seen:
                duplicates += 1
                continue
            seen.add(item.id)
            items.append(item)
    if not items:
        raise InvalidRequest(f"manifest has no items: {p}", param="manifest")
    return Manifest(p, items, duplicates)
