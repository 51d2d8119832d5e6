"""Files in, training samples out: prompt lists, the labeler's labels JSONL, real-video lists.

Also the one place that turns a label line into a sample weight (LiFT's reward, expected reward, a
weighted mean of dimensions, or the rejection-sampling ablation). Pure Python: no torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import DIMENSIONS, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class Sample:
    id: str
    video: Path
    prompt: str
    weight: float


def _resolve(video: str, base: Path) -> Path:
    p = Path(video).expanduser()
    return p if p.is_absolute() else (base / p)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (a writer killed mid-line) is dropped, any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", param=str(path))
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):
                log.warning("%s: ignoring a torn last line", path)
                continue
            raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})", param=str(path)) from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: expected a JSON object", param=str(path))
        rows.append(row)
    return rows


def read_prompts(path: str | Path) -> list[Prompt]:
    """A .txt (one prompt a line; blank lines and '#' comments skipped) or .jsonl ({"prompt", "id"?})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such prompts file: {path}", param="prompts")
    prompts: list[Prompt] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for i, row in enumerate(read_jsonl(path)):
            text = row.get("prompt") or row.get("caption")
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{path}: line {i + 1} has no 'prompt'", param="prompts")
            prompts.append(Prompt(id=str(row.get("id", f"p{i:05d}")), text=text.strip()))
    else:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        for line in lines:
            if line and not line.startswith("#"):
                prompts.append(Prompt(id=f"p{len(prompts):05d}", text=line))
    if not prompts:
        raise ConfigError(f"{path}: no prompts", param="prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: prompt ids are not unique", param="prompts")
    return prompts


def sample_weight(row: Mapping[str, Any], mode: str, dimension_weights: Mapping[str, float] | None = None,
                  dimension_score: str = "score") -> float | None:
    """The weight w(x, z) of one labelled sample in Eq. 3, or None when the sample is not used.

    reward: LiFT's reward (mean of label scores, 0.05..0.9) used raw, as the paper does.
    rejection: LiFT's ablation, 1 for samples Good on every dimension, else dropped.
    """
    if mode == "reward":
        value = row.get("reward")
    elif mode == "expected_reward":
        value = row.get("expected_reward")
    elif mode in ("dimensions", "rejection"):
        dims = row.get("dimensions")
        if not isinstance(dims, Mapping) or not dims:
            return None
        if mode == "rejection":
            labels = [d.get("label") for d in dims.values() if isinstance(d, Mapping)]
            return 1.0 if labels and all(lbl == "Good" for lbl in labels) else None
        weights = dict(dimension_weights) if dimension_weights else {d: 1.0 for d in DIMENSIONS if d in dims}
        total = num = 0.0
        for name, w in weights.items():
            d = dims.get(name)
            if not isinstance(d, Mapping) or not isinstance(d.get(dimension_score), (int, float)):
                return None
            num += w * float(d[dimension_score])
            total += w
        value = num / total if total > 0 else None
    else:
        raise ConfigError(f"unknown reward mode {mode!r}", param="reward")
    if not isinstance(value, (int, float)) or value != value or value < 0:  # NaN or negative: unusable
        return None
    return float(value)


def read_labels(path: str | Path, mode: str = "reward", dimension_weights: Mapping[str, float] | None = None,
                dimension_score: str = "score") -> list[Sample]:
    """The labeler's output: one line per id. Error lines (`"error"`) and unusable rewards are skipped;
    a later line for the same id replaces an earlier one (a relabel after a restart)."""
    path = Path(path)
    by_id: dict[str, Sample] = {}
    skipped = 0
    for n, row in enumerate(read_jsonl(path), 1):
        if "error" in row:
            by_id.pop(str(row.get("id", n)), None)  # a later failure replaces an earlier result
            skipped += 1
            continue
        video, prompt = row.get("video"), row.get("prompt")
        if not isinstance(video, str) or not isinstance(prompt, str):
            raise ConfigError(f"{path}:{n}: a label line needs 'video' and 'prompt'", param="data")
        weight = sample_weight(row, mode, dimension_weights, dimension_score)
        if weight is None:
            skipped += 1
            continue
        sid = str(row.get("id", n))
        by_id[sid] = Sample(id=sid, video=_resolve(video, path.parent), prompt=prompt, weight=weight)
    if skipped:
        log.info("%s: %d lines skipped (errors or not selected by --reward %s)", path, skipped, mode)
    return list(by_id.values())


def read_real(path: str | Path) -> list[Sample]:
    """Real videos for the lambda term: JSONL {"video", "prompt" | "caption"}; weight 1."""
    path = Path(path)
    out: list[Sample] = []
    for n, row in enumerate(read_jsonl(path), 1):
        video, prompt = row.get("video"), row.get("prompt", row.get("caption"))
        if not isinstance(video, str) or not isinstance(prompt, str):
            raise ConfigError(f"{path}:{n}: a real-data line needs 'video' and 'prompt'", param="real")
        out.append(Sample(id=str(row.get("id", f"real{n}")), video=_resolve(video, path.parent), prompt=prompt, weight=1.0))
    if not out:
        raise ConfigError(f"{path}: no real samples", param="real")
    return out
