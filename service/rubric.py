"""LiFT's rubric: the three dimensions, their questions verbatim, the labels and their scores.

One source of truth for the wording (LiFT's public code, paper Eq. 2). Family-specific prompt
formatting (chat templates, image/video placeholders) lives in `service.families`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from service.errors import AnswerParseError

LABELS: tuple[str, ...] = ("Good", "Normal", "Bad")
LABEL_SCORES: dict[str, float] = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
DEFAULT_NUM_FRAMES = 8

# How a dimension's label (and so its score) is read from the critic:
# - "label" (ours, the default): the label the engine chose from the label tokens' probabilities (the most probable;
#   drawn from p^(1/T) when sampling), followed by a generated reason: well defined, and what `probabilities` say.
# - "lift": exactly as LiFT's scripts did (CodeGoat24/LiFT LiFT-Critic/test/run_critic_13b.py generates the whole
#   answer freely, temperature 0.2, top_p None, max_new_tokens 512; CogVideo/process_reward_score.py `get_score`
#   then reads it by substring): "Normal" anywhere -> Normal, else "Bad" anywhere -> Bad, else Good, also when
#   the answer has no label at all.
ScoringRule = Literal["label", "lift"]
SCORING_RULES: tuple[str, ...] = ("label", "lift")
LIFT_TEMPERATURE = 0.2
LIFT_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class Dimension:
    name: str
    question: str  # starts with a space: LiFT appends it straight after the caption


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension(
        "semantic_consistency",
        " Please identify the semantic consistency issues in this video, focusing on the alignment between "
        "the text and the visual content. Specifically, point out any discrepancies regarding the subject "
        "(e.g., person or animal), quantity, color, scene description, style, and other relevant aspects.",
    ),
    Dimension(
        "motion_smoothness",
        " Please identify the motion issues in this video, focusing on the continuity and smoothness of "
        "actions, as well as their coherence and adherence to the laws of physics.",
    ),
    Dimension(
        "video_fidelity",
        " Please identify the fidelity issues in this video, assessing the realism of the content, including "
        "people, animals, and other objects. Highlight any problems such as missing limbs, deformed hands or "
        "faces, or other unrealistic elements.",
    ),
)
DIMENSION_NAMES: tuple[str, ...] = tuple(d.name for d in DIMENSIONS)
_BY_NAME = {d.name: d for d in DIMENSIONS}


def dimension(name: str) -> Dimension:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown dimension {name!r}; known: {', '.join(DIMENSION_NAMES)}") from None


def user_text(caption: str, dim: Dimension | str) -> str:
    """The text part of LiFT's prompt: caption followed directly by the question."""
    d = dimension(dim) if isinstance(dim, str) else dim
    return caption.strip() + d.question


def dimension_of_question(text: str) -> str | None:
    """Which dimension a LiFT-format human turn asks about (None when no question matches)."""
    for d in DIMENSIONS:
        if d.question.strip() in text:
            return d.name
    return None


@dataclass(frozen=True)
class ParsedAnswer:
    label: str
    rationale: str


_LABEL_RE = re.compile(r"\b(good|normal|bad)\b", re.IGNORECASE)
_LEADING_LABEL_RE = re.compile(r"^\W*(good|normal|bad)\b[\s.:,;!\"'*-]*", re.IGNORECASE)


def parse_answer(text: str) -> ParsedAnswer:
    """`"<Good|Normal|Bad>. <reason>"` -> label and rationale.

    Tolerates what real critics emit: any case, surrounding whitespace or quotes, a missing period,
    another label word later inside the reason (the leading one wins; LiFT's own substring rule,
    `lift_substring_label`, would take a "Normal" or "Bad" anywhere in the reason over a leading "Good").
    Falls back to the first label word anywhere.
    """
    stripped = text.strip()
    m = _LEADING_LABEL_RE.match(stripped)
    if m:
        return ParsedAnswer(m.group(1).capitalize(), stripped[m.end():].strip())
    m = _LABEL_RE.search(stripped)
    if m:
        return ParsedAnswer(m.group(1).capitalize(), stripped.strip())
    raise AnswerParseError(f"no label (Good/Normal/Bad) in critic answer {stripped[:80]!r}")


def lift_substring_label(text: str) -> str:
    """LiFT's scoring rule (CogVideo/process_reward_score.py, `get_score`), case-sensitive as there: "Normal"
    anywhere in the answer -> Normal; else "Bad" anywhere -> Bad; else Good (also for an answer with no label)."""
    if "Normal" in text:
        return "Normal"
    if "Bad" in text:
        return "Bad"
    return "Good"


def format_answer(label: str, rationale: str) -> str:
    """The answer string in LiFT's training format."""
    return f"{label}. {rationale}".rstrip()
