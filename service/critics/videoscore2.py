"""TIGER-Lab VideoScore2 as data, as its inference script runs it.

Source: TIGER-AI-Lab/VideoScore2@e6abe26bf694c293023cb3863bd6c657128766ac vs2_inference.py (query template,
regex, soft score `ll_based_soft_score_normed`); eval/eval_methods/vs2_float*.py; training limits from
training/SFT/vs2_qwen2_5vl_sft_27k_5e-5_2fps_960_720_8192.yaml and training/RL/run_grpo_with_sft.sh
(@2255171f8f9eb31ae70fc33d5fc1be9f2f535b01). Notes: docs/critics/videoscore2.md.

- Qwen2.5-VL-7B fine-tune; one user turn: the video (2 fps), then the query (a `string.Template`, the caption
  in `$t2v_prompt`; indented lines, en dashes and trailing spaces as in the file).
- It writes a rationale (a <think> block) and then "visual quality: N; text-to-video alignment: N;
  physical/common-sense consistency: N" (1-5), read by its regex (first match, case-insensitive, DOTALL; one
  change: a decimal such as 3.5 is read whole, where its `(\d+)` reads 3).
- Soft score per dimension (vs2_inference.py): at the step that wrote the dimension's digit (found as its code
  finds it: the dimension's name, optionally after "(k) " or a newline, then the first digit after it), the
  probabilities of "1".."5" (full-vocabulary, renormalised over the five); soft = best x p(best), rounded to 4
  places (its `normed` rule; eval's vs2_float_weighted takes the expected value instead). We read the five digits'
  full-vocabulary log-probs exactly (vLLM `logprob_token_ids`, not a top-k list: no truncation error); the source
  takes them from HF's processed scores, i.e. after its temperature 0.7.

Choices: frames at 2 fps capped by the training limits (SFT `video_maxlen: 10`, RL `--max_pixels 589824`),
qwen-vl-utils' frame and pixel rounding; greedy decoding by default (the script samples at T = 0.7 with up to
1,024 new tokens: a reward that changes between calls; a request's temperature restores it). When the official
regex finds nothing (e.g. "(1) visual quality – clarity, smoothness, artifacts: 4", reported of the released
weights), each dimension is looked for on its own after the </think>; a dimension still missing fails the sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.critics.spec import (
    CriticSpec,
    Decoding,
    DimensionInfo,
    FrameRule,
    GeneratedScoresChannel,
    MediaRule,
    ParsedScores,
    PixelRule,
    Query,
)

# vs2_inference.py's query, verbatim (a string.Template; `$t2v_prompt` is the caption's slot)
QUERY_TEMPLATE = '\n    You are an expert for evaluating AI-generated videos from three dimensions:\n    (1) visual quality – clarity, smoothness, artifacts;\n    (2) text-to-video alignment – fidelity to the prompt;\n    (3) physical/common-sense consistency – naturalness and physics plausibility.\n\n    Video prompt: $t2v_prompt\n\n    Please output in this format:\n    visual quality: <v_score>; \n    text-to-video alignment: <t_score>, \n    physical/common-sense consistency: <p_score>\n    '
DIMENSION_LABELS = {
    "visual_quality": "visual quality",
    "text_alignment": "text-to-video alignment",
    "physical_consistency": "physical/common-sense consistency",
}
# its regex, with one change: a decimal is read whole (its `(\d+)` reads "3.5" as 3)
_N = r"(\d+(?:\.\d+)?)"
OFFICIAL_PATTERN = re.compile(
    rf"visual quality:\s*{_N}.*?text-to-video alignment:\s*{_N}.*?physical/common-sense consistency:\s*{_N}",
    re.DOTALL | re.IGNORECASE)
DIGITS = ("1", "2", "3", "4", "5")


def parse_answer(text: str) -> ParsedScores:
    """Its regex first (values and, as its soft-score code does, each digit's position); else each dimension
    alone after the rationale ("<name> [descriptor]: N", decimals allowed). Missing ones are None."""
    m = OFFICIAL_PATTERN.search(text)
    if m:
        values = {dim: float(m.group(i + 1)) for i, dim in enumerate(DIMENSION_LABELS)}
        return ParsedScores(values, {dim: _digit_offset(text, label) for dim, label in DIMENSION_LABELS.items()})
    start = text.rfind("</think>")
    start = 0 if start < 0 else start + len("</think>")
    values: dict[str, float | None] = {}
    offsets: dict[str, int | None] = {}
    for dim, label in DIMENSION_LABELS.items():
        found = re.search(re.escape(label) + r"[^\n:]*:\s*(\d+(?:\.\d+)?)", text[start:], re.IGNORECASE)
        values[dim] = float(found.group(1)) if found else None
        offsets[dim] = start + found.start(1) if found else None
    return ParsedScores(values, offsets)


def _digit_offset(text: str, label: str) -> int | None:
    """vs2_inference.py's locator: the label (optionally after "(k) " or a newline), then the first digit after."""
    found = re.search(r"(?:\(\d+\)\s*|\n\s*)?" + re.escape(label), text, re.IGNORECASE)
    if not found:
        return None
    digit = re.search(r"\d", text[found.end():])
    return found.end() + digit.start() if digit else None


def normed_soft_score(probabilities: Mapping[str, float]) -> float:
    """`ll_based_soft_score_normed`: the likeliest digit times its (renormalised) probability, 4 places."""
    best = max(DIGITS, key=lambda d: (probabilities[d], -DIGITS.index(d)))  # first max, as argmax
    return round(float(best) * probabilities[best], 4)


SPEC = CriticSpec(
    name="videoscore2",
    title="VideoScore2",
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    media=MediaRule(
        frames=FrameRule(kind="fps", fps=2.0, min_frames=4, max_frames=10, multiple_of=2),
        pixels=PixelRule(min_pixels=128 * 28 * 28, max_pixels=589824, factor=28),
        present_as="video",
    ),
    queries=(Query(
        user=QUERY_TEMPLATE.replace("$t2v_prompt", "{caption}"),
        dimensions=tuple(DIMENSION_LABELS),
        channel=GeneratedScoresChannel(parse=parse_answer, scale=(1.0, 5.0), soft_digits=DIGITS,
                                       soft_score=normed_soft_score),
        decoding=Decoding(max_new_tokens=1024, temperature=0.0),
    ),),
    dimensions=(
        DimensionInfo("visual_quality", "visual quality: clarity, smoothness, artifacts", (1.0, 5.0)),
        DimensionInfo("text_alignment", "text-to-video alignment: fidelity to the prompt", (1.0, 5.0)),
        DimensionInfo("physical_consistency", "physical/common-sense consistency: naturalness, physics", (1.0, 5.0)),
    ),
    source="TIGER-AI-Lab/VideoScore2@e6abe26bf694c293023cb3863bd6c657128766ac vs2_inference.py",
    reward_doc="mean of the three scores mapped from 1-5 to [0, 1] (VideoScore2 defines no overall score); "
               "expected_reward: the same over its soft scores",
    rationale=True,
    notes="Greedy by default (the script samples at T=0.7); frames and pixels at the training limits.",
)
