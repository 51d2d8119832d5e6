"""CodeGoat24 UnifiedReward 2.0, pointwise video scoring, as data.

Sources: CodeGoat24/UnifiedReward@ff6f520247a2d36e2aff7b2ba53a935afd437f66
inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py (prompt, frames, request) with
vllm_qwen/vllm_request.py (message layout); how its users read the answer: CodeGoat24/Pref-GRPO@
3e787f6dd5a3051b40d61f07e9578468ac26130a fastvideo/rewards/unifiedreward.py. Notes: docs/critics/unifiedreward.md.

- Qwen2.5-VL / Qwen3-VL fine-tunes (UnifiedReward-2.0-qwen-*, -qwen3vl-*); one user turn: 16 frames as 16
  images (indices int(i x N / 16): from the first frame, never the last), then the prompt, the caption in
  "Text Caption: [{prompt}]"; no system turn; no resize (the checkpoint's processor decides).
- Answer: "Alignment Score (1-5): X / Physics Score (1-5): Y / Style Score (1-5): Z" (decimals occur: the
  script's own example is 2.4036 / 3.0987 / 3.3889), read with Pref-GRPO's pattern
  `(\w+) Score \(1-5\):\s*([0-5](?:\.\d+)?)`, the last match per name winning.

Choices: greedy (the script sends `do_sample: False`, which vLLM's server ignores, and no temperature); up to 512
new tokens (the script allows 4,096; the answer is three short lines). Frames reach the model as decoded pixels
(the script writes each as JPEG and re-encodes at quality 95). A dimension the answer lacks fails the sample
(Pref-GRPO substitutes the batch's mean of that score, or 0.0; LIFT_PARSE_FAILURE_VALUE sets a fixed value).
Reward: UnifiedReward defines none; ours is the mean of the three mapped to [0, 1]. Pref-GRPO standardises each
score within its group and sums them with weights (alignment 1.4, style 0.7 in its scripts):
LIFT_ADAPTER_REWARD=alignment=1.4,style=0.7 gives the weighted sum of the soft scores, the trainer standardises.
"""

from __future__ import annotations

import re

from service.critics.spec import (
    CriticSpec,
    Decoding,
    DimensionInfo,
    FrameRule,
    GeneratedScoresChannel,
    MediaRule,
    ParsedScores,
    Query,
)

# point_score_APS_video_generation.py's prompt, verbatim; "{prompt}" is the caption's slot there
PROMPT_TEMPLATE = 'You are presented with a generated video and its associated text caption. Your task is to analyze the video across multiple dimensions in relation to the caption. Specifically:\nProvide overall assessments for the video along the following axes (each rated from 1 to 5):\n- Alignment Score: How well the video matches the caption in terms of content.\n- Physics Score: How well the gravity, movements, collisions, and interactions make physical sense.\n- Style Score: How visually appealing the video looks, regardless of caption accuracy.\n\nOutput your evaluation using the format below:\n\nAlignment Score (1-5): X\nPhysics Score (1-5): Y\nStyle Score (1-5): Z\n\nYour task is provided as follows:\nText Caption: [{prompt}]'
NUM_FRAMES = 16
# Pref-GRPO fastvideo/rewards/unifiedreward.py
SCORE_PATTERN = re.compile(r"(\w+) Score \(1-5\):\s*([0-5](?:\.\d+)?)")
DIMENSIONS = {"alignment": "Alignment", "physics": "Physics", "style": "Style"}
DIGITS = ("1", "2", "3", "4", "5")


def parse_answer(text: str) -> ParsedScores:
    """Every "<Name> Score (1-5): X" (the last one per name wins, as Pref-GRPO's dict does); missing ones None."""
    found: dict[str, tuple[float, int]] = {}
    for m in SCORE_PATTERN.finditer(text):
        found[m.group(1)] = (float(m.group(2)), m.start(2))
    values = {dim: found[name][0] if name in found else None for dim, name in DIMENSIONS.items()}
    offsets = {dim: found[name][1] if name in found else None for dim, name in DIMENSIONS.items()}
    return ParsedScores(values, offsets)


SPEC = CriticSpec(
    name="unifiedreward",
    title="UnifiedReward 2.0 (pointwise video)",
    architectures=("Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration"),
    media=MediaRule(frames=FrameRule(kind="floor", count=NUM_FRAMES), pixels=None, present_as="images"),
    queries=(Query(
        user=PROMPT_TEMPLATE.replace("{prompt}", "{caption}"),
        dimensions=tuple(DIMENSIONS),
        channel=GeneratedScoresChannel(parse=parse_answer, scale=(1.0, 5.0), soft_digits=DIGITS),
        decoding=Decoding(max_new_tokens=512, temperature=0.0),
    ),),
    dimensions=(
        DimensionInfo("alignment", "how well the video matches the caption in content", (1.0, 5.0)),
        DimensionInfo("physics", "gravity, movements, collisions and interactions make physical sense", (1.0, 5.0)),
        DimensionInfo("style", "how visually appealing the video looks, regardless of the caption", (1.0, 5.0)),
    ),
    source="CodeGoat24/UnifiedReward@ff6f520247a2d36e2aff7b2ba53a935afd437f66 "
           "inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py; parsed as "
           "CodeGoat24/Pref-GRPO@3e787f6dd5a3051b40d61f07e9578468ac26130a fastvideo/rewards/unifiedreward.py",
    reward_doc="mean of the three scores mapped from 1-5 to [0, 1] (UnifiedReward defines no overall score); "
               "expected_reward: the same over the expected values of the first digit written",
    rationale=True,
    notes="Greedy, 16 frames as images; soft scores are ours (the expected value of the digit's probabilities).",
)
