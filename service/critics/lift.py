"""LiFT-Critic as data: its three questions (service.rubric, verbatim from LiFT's code), Good/Normal/Bad scored
0.9 / 0.2 / 0.05, reward = the mean (LiFT Eq. 2).

Its answers run on the engines' label path (`engine.generate`: per question, the label tokens' probabilities,
then the reason after the chosen label), which shares the video's prefix across the three questions; the
scoring rules (ours, LiFT's substring rule) are in service.rubric. The family decides how frames are shown (VILA:
one image per frame; Qwen2-VL: one video).
"""

from __future__ import annotations

from service.critics.spec import CriticSpec, DimensionInfo, FrameRule, LabelChannel, MediaRule, Query
from service.rubric import DEFAULT_NUM_FRAMES, DIMENSIONS, LABEL_SCORES

_TITLES = {
    "semantic_consistency": "text-video alignment (subject, quantity, colour, scene, style)",
    "motion_smoothness": "continuity, smoothness and physics of motion",
    "video_fidelity": "realism: missing limbs, deformed hands or faces, other artefacts",
}

SPEC = CriticSpec(
    name="lift",
    title="LiFT-Critic",
    architectures=("LlavaLlamaModel", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    media=MediaRule(frames=FrameRule(kind="count", count=DEFAULT_NUM_FRAMES)),
    queries=tuple(Query(user="{caption}" + d.question, dimensions=(d.name,), channel=LabelChannel(LABEL_SCORES))
                  for d in DIMENSIONS),
    dimensions=tuple(DimensionInfo(d.name, _TITLES[d.name], (0.0, 1.0)) for d in DIMENSIONS),
    source="CodeGoat24/LiFT (LiFT-Critic/test/run_critic_13b.py, CogVideo/process_reward_score.py); paper Eq. 2",
    reward_doc="mean of the three label scores (LiFT Eq. 2); expected_reward: mean of the expected scores",
    rationale=True,
    notes="Questions verbatim from LiFT's code; the released 13B/40B checkpoints convert with `lift convert-vila`.",
)
