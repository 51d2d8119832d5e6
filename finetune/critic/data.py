"""Readers for human-rated videos: LiFT's released training format and a plain JSONL.

Both turn into the same `RatedExample`s: one per (video, caption, dimension). Nothing is guessed: an
unknown question, a video that is not there, a label that is not exactly Good/Normal/Bad or a broken
record is reported with its line, and all problems of a file are reported together.

- LiFT format (a JSON list, as LiFT's critic training used):
  `{"video": path, "conversations": [{"from": "human", "value": "<video>\\n<caption> <question>"},
                                     {"from": "gpt", "value": "<Good|Normal|Bad>. <reason>"}]}`
  one entry per video and dimension; the question says which dimension. Two prompt styles, mixed freely in
  one file, entry by entry:
  - "lift": the caption, then one of the rubric's three questions verbatim (LiFT's own inference prompt,
    CodeGoat24/LiFT LiFT-Critic/test/run_critic_13b.py; its VIDGEN-1K rows, dataset/VIDGEN/vidgen-data.json).
  - "hra": the LiFT-HRA rows (`{"video_id", "video", "conversations"}`): an instruction that asks to
    "identify the <semantic consistency|motion|fidelity> issues in this video", and the caption last, as
    `Text Prompt: [<caption>]`. The reader keys on those two phrases only, not on the rest of the wording,
    which could not be checked against the released file (see HRA_PREAMBLE).
- JSONL: one object per line `{"video", "prompt", "dimension", "label", "reason"?}`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.errors import InvalidRequest
from service.rubric import DIMENSION_NAMES, LABELS, dimension, dimension_of_question, format_answer, user_text

DataFormat = Literal["lift", "jsonl"]
PromptStyle = Literal["lift", "hra"]

# LiFT's human turn starts with the video placeholder; some exports use <image> instead.
_PLACEHOLDER_RE = re.compile(r"^\s*(?:<video>|(?:<image>\s*)+)\s*")
# Strict: the answer must *start* with a label followed by a period (or be the bare label).
_ANSWER_RE = re.compile(r"^(Good|Normal|Bad)(?:\.(?:\s+(.*))?)?\s*$", re.DOTALL)

# ---- the LiFT-HRA prompt style -------------------------------------------------------------------
# Each rubric question names its issue ("identify the motion issues in this video, ..."); the HRA rows ask
# for the same issue with the same focus sentence, so the names come from the rubric, not from a copy here.
def _issue_names() -> dict[str, str]:
    """{"semantic consistency": "semantic_consistency", "motion": ..., "fidelity": ...}, read off the rubric."""
    out = {}
    for name in DIMENSION_NAMES:
        m = re.search(r"identify the (.+?) issues in this video", dimension(name).question)
        if m is None:
            raise RuntimeError(f"rubric question of {name} names no issue")
        out[m.group(1).lower()] = name
    return out


_ISSUE_TO_DIMENSION = _issue_names()
_ISSUE_RE = re.compile(r"\bidentify\s+the\s+(" + "|".join(re.escape(k) for k in _ISSUE_TO_DIMENSION)
                       + r")\s+issues\b", re.IGNORECASE)
# The caption comes last, bracketed; it may itself hold brackets, so it runs to the text's final "]".
_TEXT_PROMPT_RE = re.compile(r"Text Prompt:\s*\[", re.IGNORECASE)

# The HRA wording our writer emits, NOT verified against LiFT-HRA-data.json: that file could not be read (an
# LFS object absent from the stored CodeGoat24/LiFT history; the Fudan-FUXI/LiFT-HRA-20K card shows only the folder
# layout). The parts follow the layout our issue describes; the opening sentence is the one the same authors'
# UnifiedReward video prompt uses. The reader depends on none of it beyond the two phrases above.
HRA_PREAMBLE = ("Suppose you are an expert in judging and evaluating the quality of AI-generated videos, "
                "please watch the frames of a given video and see the text prompt for generating the video.")
HRA_RATING = "Provide a rating evaluation: Good, Normal, or Bad, along with a concise explanation."


def hra_user_text(caption: str, dim: str) -> str:
    """The text part of an HRA-style human turn (after `<video>\\n`) for this caption and dimension."""
    ask = dimension(dim).question.strip()
    if not ask.startswith("Please identify"):
        raise ValueError(f"rubric question of {dim} does not start with 'Please identify': {ask[:40]!r}")
    ask = "Then identify" + ask[len("Please identify"):]
    return f"{HRA_PREAMBLE}\n{ask}\n{HRA_RATING}\nYour task is provided as follows: Text Prompt: [{caption.strip()}]"


def _place_human_turn(text: str) -> tuple[PromptStyle, str, str] | str:
    """(style, dimension, caption) of a human turn without its placeholder, or why it cannot be placed."""
    dim = dimension_of_question(text)
    prompt = _TEXT_PROMPT_RE.search(text)
    body = text.rstrip()
    if prompt is not None and body.endswith("]"):
        # HRA: the instruction before "Text Prompt: [", the caption inside the last brackets
        asked = {_ISSUE_TO_DIMENSION[m.group(1).lower()] for m in _ISSUE_RE.finditer(text, 0, prompt.start())}
        caption = body[prompt.end():-1].strip()
        if len(asked) == 1:
            if not caption:
                return "empty caption in 'Text Prompt: [...]'"
            return "hra", asked.pop(), caption
        if len(asked) > 1:
            return f"the prompt asks about several dimensions ({', '.join(sorted(asked))}); expected one"
        if dim is None:
            return (f"unknown question in {text[-80:]!r}: the prompt before 'Text Prompt: [...]' asks to identify "
                    f"none of the rubric's issues ({', '.join(_ISSUE_TO_DIMENSION)})")
    if dim is None:
        return (f"unknown question in {text[-80:]!r}: not one of the rubric's three questions, nor an "
                "HRA-style prompt ('identify the <issue> issues ... Text Prompt: [<caption>]')")
    caption = text[: text.find(dimension(dim).question.strip())].strip()
    if not caption:
        return "empty caption before the question"
    return "lift", dim, caption


@dataclass(frozen=True)
class RatedExample:
    """One human judgement: this video, this caption, this dimension -> label (+ reason)."""

    video: Path
    caption: str
    dimension: str
    label: str
    reason: str
    line: int = 0  # where it came from (1-based), for messages

    @property
    def answer(self) -> str:
        """The training target, in LiFT's answer format."""
        return format_answer(self.label, self.reason)


@dataclass(frozen=True)
class DataProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class RatedDataError(InvalidRequest):
    """A rated-data file has problems; `.problems` lists every one of them with its line."""

    code = "invalid_rated_data"

    def __init__(self, path: Path, problems: Sequence[DataProblem], *, max_listed: int = 20) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        listed = "; ".join(str(p) for p in self.problems[:max_listed])
        more = len(self.problems) - max_listed
        tail = f"; ... and {more} more" if more > 0 else ""
        super().__init__(f"{path}: {len(self.problems)} problem(s): {listed}{tail}", param="data")


@dataclass
class ReadReport:
    """Everything a reader found: the usable examples and the problems, each with its line."""

    path: Path
    format: DataFormat
    examples: list[RatedExample] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise RatedDataError(self.path, self.problems)

    def label_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {d: Counter() for d in DIMENSION_NAMES}
        for ex in self.examples:
            counts[ex.dimension][ex.label] += 1
        return {d: {label: c[label] for label in LABELS} for d, c in counts.items()}


# ---- format detection --------------------------------------------------------------------------
def detect_format(path: Path) -> DataFormat:
    """`.jsonl` -> jsonl, `.json` -> lift; otherwise sniff: a JSON list is LiFT's format."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "lift"
    with path.open("r", encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    return "lift" if head.startswith("[") else "jsonl"


# ---- helpers -----------------------------------------------------------------------------------
def _resolve_video(value: Any, videos_dir: Path | None, line: int, problems: list[DataProblem],
                   check_exists: bool) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(DataProblem(line, f"'video' must be a non-empty string, got {value!r}"))
        return None
    p = Path(value)
    if not p.is_absolute() and videos_dir is not None:
        p = videos_dir / p
    if check_exists and not p.is_file():
        problems.append(DataProblem(line, f"video not found: {p}"))
        return None
    return p


def _parse_label_answer(text: Any, line: int, problems: list[DataProblem]) -> tuple[str, str] | None:
    if not isinstance(text, str):
        problems.append(DataProblem(line, f"answer must be a string, got {type(text).__name__}"))
        return None
    m = _ANSWER_RE.match(text.strip())
    if not m:
        problems.append(DataProblem(
            line, f"malformed answer {text.strip()[:60]!r}: expected '<Good|Normal|Bad>. <reason>'"))
        return None
    return m.group(1), (m.group(2) or "").strip()


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _iter_json_list(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, element) of a top-level JSON list, so problems can name the entry's line.

    Raises json.JSONDecodeError (which carries line/column) when the file is not a JSON list.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise json.JSONDecodeError("expected a JSON list ('[') of entries", text, pos)
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        obj, end = decoder.raw_decode(text, pos)
        yield _line_of(text, pos), obj
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            raise json.JSONDecodeError("expected ',' or ']' after a list entry", text, pos)


# ---- LiFT's format -----------------------------------------------------------------------------
def _lift_entry(entry: Any, line: int, videos_dir: Path | None, problems: list[DataProblem],
                check_exists: bool) -> RatedExample | None:
    if not isinstance(entry, dict):
        problems.append(DataProblem(line, f"entry must be an object, got {type(entry).__name__}"))
        return None
    n_before = len(problems)
    ref = entry.get("video")
    if ref is None and isinstance(entry.get("video_id"), str) and entry["video_id"].strip():
        # LiFT's loader takes "video", else "<video_id>.mp4" (CodeGoat24/LiFT llava/data/dataset.py)
        ref = entry["video_id"].strip() + ".mp4"
    video = _resolve_video(ref, videos_dir, line, problems, check_exists)
    conv = entry.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        problems.append(DataProblem(line, "'conversations' must be a list of a human turn and a gpt turn"))
        return None
    human, gpt = conv[0], conv[1]
    if not (isinstance(human, dict) and human.get("from") == "human" and isinstance(human.get("value"), str)):
        problems.append(DataProblem(line, "first turn must be {'from': 'human', 'value': str}"))
        return None
    if not (isinstance(gpt, dict) and gpt.get("from") == "gpt"):
        problems.append(DataProblem(line, "second turn must be {'from': 'gpt', 'value': str}"))
        return None
    if len(conv) > 2:
        problems.append(DataProblem(line, f"expected one question and one answer, got {len(conv)} turns"))
    text = _PLACEHOLDER_RE.sub("", human["value"], count=1)
    placed = _place_human_turn(text)
    dim = caption = None
    if isinstance(placed, str):
        problems.append(DataProblem(line, placed))
    else:
        _, dim, caption = placed
    parsed = _parse_label_answer(gpt.get("value"), line, problems)
    if len(problems) > n_before or video is None or parsed is None or dim is None or caption is None:
        return None
    label, reason = parsed
    return RatedExample(video=video, caption=caption, dimension=dim, label=label, reason=reason, line=line)


def read_lift(path: Path | str, videos_dir: Path | str | None = None, *,
              check_videos: bool = True) -> ReadReport:
    """Read LiFT's released training format (a JSON list, either prompt style per entry); never raises for
    bad entries."""
    path = Path(path)
    vdir = Path(videos_dir) if videos_dir is not None else None
    report = ReadReport(path=path, format="lift")
    text = path.read_text(encoding="utf-8")
    try:
        for line, entry in _iter_json_list(text):
            ex = _lift_entry(entry, line, vdir, report.problems, check_videos)
            if ex is not None:
                report.examples.append(ex)
    except json.JSONDecodeError as exc:
        report.problems.append(DataProblem(exc.lineno, f"invalid JSON (column {exc.colno}): {exc.msg}"))
    return report


# ---- JSONL -------------------------------------------------------------------------------------
def _jsonl_record(obj: Any, line: int, videos_dir: Path | None, problems: list[DataProblem],
                  check_exists: bool) -> RatedExample | None:
    if not isinstance(obj, dict):
        problems.append(DataProblem(line, f"line must be a JSON object, got {type(obj).__name__}"))
        return None
    n_before = len(problems)
    missing = [k for k in ("video", "prompt", "dimension", "label") if k not in obj]
    if missing:
        problems.append(DataProblem(line, f"missing field(s): {', '.join(missing)}"))
        return None
    video = _resolve_video(obj["video"], videos_dir, line, problems, check_exists)
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(DataProblem(line, f"'prompt' must be a non-empty string, got {prompt!r}"))
    dim = obj["dimension"]
    if dim not in DIMENSION_NAMES:
        problems.append(DataProblem(line, f"unknown dimension {dim!r}; known: {', '.join(DIMENSION_NAMES)}"))
    label = obj["label"]
    if label not in LABELS:
        problems.append(DataProblem(line, f"malformed label {label!r}: expected one of {', '.join(LABELS)}"))
    reason = obj.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        problems.append(DataProblem(line, f"'reason' must be a string, got {type(reason).__name__}"))
    if len(problems) > n_before or video is None:
        return None
    return RatedExample(video=video, caption=prompt.strip(), dimension=dim, label=label,
                        reason=reason.strip(), line=line)


def read_jsonl(path: Path | str, videos_dir: Path | str | None = None, *,
               check_videos: bool = True) -> ReadReport:
    """Read the plain JSONL format; never raises for bad lines."""
    path = Path(path)
    vdir = Path(videos_dir) if videos_dir is not None else None
    report = ReadReport(path=path, format="jsonl")
    with path.open("r", encoding="utf-8") as fh:
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                report.problems.append(DataProblem(line, f"invalid JSON (column {exc.colno}): {exc.msg}"))
                continue
            ex = _jsonl_record(obj, line, vdir, report.problems, check_videos)
            if ex is not None:
                report.examples.append(ex)
    return report


# ---- entry points ------------------------------------------------------------------------------
def scan_rated_data(path: Path | str, videos_dir: Path | str | None = None, *,
                    format: DataFormat | None = None, check_videos: bool = True) -> ReadReport:
    """Read either format into a report (examples + problems); raises only if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise RatedDataError(path, [DataProblem(0, "file not found")])
    fmt = format or detect_format(path)
    reader = read_lift if fmt == "lift" else read_jsonl
    report = reader(path, videos_dir, check_videos=check_videos)
    if not report.examples and not report.problems:
        report.problems.append(DataProblem(0, "no rated examples in the file"))
    return report


def load_rated_data(path: Path | str, videos_dir: Path | str | None = None, *,
                    format: DataFormat | None = None, check_videos: bool = True) -> list[RatedExample]:
    """Read either format; raises `RatedDataError` listing every problem, or returns the examples."""
    report = scan_rated_data(path, videos_dir, format=format, check_videos=check_videos)
    report.raise_for_problems()
    return report.examples


# ---- writers (for tests, the synthetic maker and conversions) -----------------------------------
def to_lift_entry(ex: RatedExample, video_ref: str | None = None) -> dict[str, Any]:
    return {
        "video": video_ref if video_ref is not None else str(ex.video),
        "conversations": [
            {"from": "human", "value": "<video>\n" + user_text(ex.caption, ex.dimension)},
            {"from": "gpt", "value": ex.answer},
        ],
    }


def to_hra_entry(ex: RatedExample, video_ref: str | None = None, video_id: str | None = None) -> dict[str, Any]:
    """One entry in the LiFT-HRA layout (`video_id`, `video`, the HRA prompt style)."""
    ref = video_ref if video_ref is not None else str(ex.video)
    return {
        "video_id": video_id if video_id is not None else Path(ref).stem,
        "video": ref,
        "conversations": [
            {"from": "human", "value": "<video>\n" + hra_user_text(ex.caption, ex.dimension)},
            {"from": "gpt", "value": ex.answer},
        ],
    }


def to_jsonl_record(ex: RatedExample, video_ref: str | None = None) -> dict[str, Any]:
    return {"video": video_ref if video_ref is not None else str(ex.video), "prompt": ex.caption,
            "dimension": ex.dimension, "label": ex.label, "reason": ex.reason}


def write_lift(path: Path | str, examples: Iterable[RatedExample], *, relative_to: Path | None = None,
               style: PromptStyle = "lift") -> Path:
    """A JSON list in LiFT's layout; `style` picks the prompt: "lift" (caption + question) or "hra"."""
    if style not in ("lift", "hra"):
        raise ValueError(f"unknown prompt style {style!r}; known: lift, hra")
    path = Path(path)
    make = to_lift_entry if style == "lift" else to_hra_entry
    entries = [make(ex, _ref(ex.video, relative_to)) for ex in examples]
    path.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path | str, examples: Iterable[RatedExample], *, relative_to: Path | None = None) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(to_jsonl_record(ex, _ref(ex.video, relative_to)), ensure_ascii=False) + "\n")
    return path


def _ref(video: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return str(Path(video).relative_to(relative_to))
        except ValueError:
            pass
    return str(video)


def example_as_dict(ex: RatedExample) -> dict[str, Any]:
    d = asdict(ex)
    d["video"] = str(ex.video)
    return d


__all__ = [
    "DataFormat", "DataProblem", "PromptStyle", "RatedDataError", "RatedExample", "ReadReport", "detect_format",
    "hra_user_text", "load_rated_data", "read_jsonl", "read_lift", "scan_rated_data", "to_hra_entry",
    "to_jsonl_record", "to_lift_entry", "write_jsonl", "write_lift", "example_as_dict",
]
