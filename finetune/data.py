"""Files in, training samples out: prompt lists, labels (the labeler's JSONL or LiFT's scored file), real videos.

Also the one place that turns a label line into a sample weight (LiFT's reward, expected reward, a
weighted mean of dimensions, or the rejection-sampling ablation). Pure Python: no torch.

LiFT's scored file is what its `CogVideo/process_reward_score.py` writes and its `CogVideo/finetune/train.py`
reads (CodeGoat24/LiFT): a JSON list of `{"video", "caption", "score"}` (the critic's output entries with
`score` = the mean of the three label scores, rounded to 2 places; extra keys such as `video_id` or the answers
are kept by that script and ignored here). Which kind a labels file is, is read off its content.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

LabelsFormat = Literal["jsonl", "lift"]

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


def labels_format(path: str | Path) -> LabelsFormat:
    """Which kind of labels file: "lift" (LiFT's scored file, one JSON list: "[" first) or "jsonl" (the
    labeler's output, an object a line). Read off the content, not the name: LiFT calls its file data.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", param=str(path))
    with path.open("r", encoding="utf-8-sig") as fh:
        while chunk := fh.read(4096):
            head = chunk.lstrip()
            if head:
                return "lift" if head[0] == "[" else "jsonl"
    return "jsonl"  # empty: the JSONL reader says there is nothing in it


def read_labels(path: str | Path, mode: str = "reward", dimension_weights: Mapping[str, float] | None = None,
                dimension_score: str = "score") -> list[Sample]:
    """Training samples from a labels file of either kind (see `labels_format`).

    The labeler's JSONL: one line per id. Error lines (`"error"`) and unusable rewards are skipped; a later line
    for the same id replaces an earlier one (a relabel after a restart). LiFT's scored file: `read_lift_scores`."""
    path = Path(path)
    if labels_format(path) == "lift":
        return read_lift_scores(path, mode)
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


_MAX_LISTED = 10


def _json_list_entries(text: str) -> Iterator[tuple[int, Any]]:
    """(line, entry) of a top-level JSON list, so a bad entry can be named by its line too."""
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise json.JSONDecodeError("expected a JSON list ('[')", text, pos)
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        obj, end = decoder.raw_decode(text, pos)
        yield text.count("\n", 0, pos) + 1, obj
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            if text[pos + 1:].strip():
                raise json.JSONDecodeError("extra data after the list", text, pos + 1)
            return
        else:
            raise json.JSONDecodeError("expected ',' or ']' after a list entry", text, pos)


def _lift_score(value: Any) -> tuple[float | None, str | None]:
    """LiFT's trainer reads `float(data['score'])`, so a number or a numeric string; here also finite, in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, f"'score' must be a number, got {type(value).__name__}"
    try:
        score = float(value)
    except ValueError:
        return None, f"'score' must be a number, got {value!r}"
    if not math.isfinite(score):
        return None, f"'score' is not finite ({value!r})"
    if not 0.0 <= score <= 1.0:
        return None, (f"'score' {score:g} is out of range [0, 1] (LiFT's score is the mean of its label scores, "
                      "0.05..0.9)")
    return score, None


def _lift_video(ref: str, base: Path) -> tuple[Path | None, str | None]:
    """As given (absolute, or relative to the file's folder), else LiFT's own rule: its trainer opens
    `<data root>/videos/<the path's last two parts>` (CodeGoat24/LiFT CogVideo/finetune/train.py)."""
    given = _resolve(ref, base)
    if given.is_file():
        return given, None
    tail = Path(*Path(ref).parts[-2:])
    lift_rule = base / "videos" / tail
    if lift_rule.is_file():
        return lift_rule, None
    tried = given if lift_rule == given else f"{given} (nor {lift_rule})"
    return None, f"video not found: {tried}"


def read_lift_scores(path: str | Path, mode: str = "reward") -> list[Sample]:
    """LiFT's scored file (a JSON list of `{"video", "caption", "score"}`) as training samples, weight = score.

    Every entry is checked before any is used: fields present, a caption, a finite score in [0, 1] (a number or
    a numeric string, as LiFT's `float()` takes), the video there. All problems are reported at once, each with
    its entry number and line. The file holds only the reward, so only `--reward reward` can weight it."""
    path = Path(path)
    if mode != "reward":
        raise ConfigError(f"{path} is LiFT's scored file ({{video, caption, score}}): it holds the reward only, "
                          f"so --reward {mode} cannot weight it; use --reward reward", param="reward")
    text = path.read_text(encoding="utf-8-sig")
    problems: list[str] = []
    samples: list[Sample] = []
    seen_ids: set[str] = set()
    try:
        entries = list(_json_list_entries(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: LiFT's scored file is not a valid JSON list (line {exc.lineno}, column "
                          f"{exc.colno}: {exc.msg})", param="data") from exc
    for n, (line, entry) in enumerate(entries, 1):
        where = f"entry {n} (line {line})"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        missing = [k for k in ("video", "caption", "score") if k not in entry]
        if missing:
            problems.append(f"{where}: missing field(s): {', '.join(missing)}")
            continue
        bad: list[str] = []
        video, caption = entry["video"], entry["caption"]
        if not isinstance(caption, str) or not caption.strip():
            bad.append(f"'caption' must be a non-empty string, got {caption!r}")
        score, why = _lift_score(entry["score"])
        if why:
            bad.append(why)
        resolved = None
        if not isinstance(video, str) or not video.strip():
            bad.append(f"'video' must be a non-empty string, got {video!r}")
        else:
            resolved, why = _lift_video(video, path.parent)
            if why:
                bad.append(why)
        if bad or resolved is None or score is None:
            problems.extend(f"{where}: {b}" for b in bad)
            continue
        # ids seed each sample's noise; LiFT's video_id when it is there and unique, else the entry number
        vid = entry.get("video_id")
        sid = str(vid) if isinstance(vid, (str, int)) and str(vid) else f"entry{n}"
        sid = sid if sid not in seen_ids else f"entry{n}"
        seen_ids.add(sid)
        samples.append(Sample(id=sid, video=resolved, prompt=caption.strip(), weight=score))
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ConfigError(f"{path}: {len(problems)} problem(s) in LiFT's scored file: {listed}{more}", param="data")
    if not samples:
        raise ConfigError(f"{path}: LiFT's scored file has no entries", param="data")
    return samples


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
