"""NVIDIA Cosmos-Reason1-7B-Reward as data, as Cosmos-RL's reward service runs it.

Source: nvidia-cosmos/cosmos-rl@89f2e5b5c817d99a240f1194ce37239ceb6f058a,
reward_service/cosmos_rl_reward/model/cosmos_reason1.py (`CosmosReason1Reward`; prompts byte-identical to
nvidia-cosmos/cosmos-cookbook scripts/evaluation/cosmos-reason1-reward-7b/inference.py). Notes: docs/critics/.

- Qwen2.5-VL-7B fine-tune; a system prompt (an anomaly checklist ending 'Begin your response with a single word:
  "Yes" or "No".'), then the user turn: the video, then the text.
- Frames: every k-th frame with the smallest k that keeps at most 160, an odd count drops its last frame; the
  frames' fps is the video's / k; each frame resized (smart_resize, factor 28, min 25,088 pixels, at most
  9,216 x 28 x 28 x 2 // frames pixels: about 9,216 visual tokens for the clip), bicubic.
- No generation: one forward; softmax over just the logits of "Yes" and "No" (each the first token of the bare
  word) at the answer's first position; the reward is P("No"): no anomaly.

The user text. The service sends the request's caption (`prompts[0]`) although the file defines USER_PROMPT
(below) and never uses it; the cookbook script, "same as training", sends USER_PROMPT. We default to the caption,
so a trainer moving from Cosmos-RL's reward service gets its numbers; `LIFT_CRITIC_VARIANT=question` asks the
fixed question the model was trained with (a score that does not depend on the caption).
Not reproduced: qwen_vl_utils >= 0.0.13 (unpinned there) re-rounds frames to multiples of 56, lifts them to
>= 100,352 pixels and reports fps 2.0 whatever the sampling; we follow the service's own resize and true fps
(what qwen_vl_utils <= 0.0.11, and the cookbook, do). The service runs bf16; the engine's dtype is a setting.
"""

from __future__ import annotations

from dataclasses import replace

from service.critics.spec import (
    CriticSpec,
    DimensionInfo,
    FrameRule,
    MediaRule,
    PixelRule,
    ProbeChannel,
    Query,
)

SYSTEM_PROMPT = (
    'You are a helpful video analyzer. The goal is to identify artifacts and anomalies in the video. Watch carefully and focus on the following aspects:\n'
    '\n'
    '* Gravity (e.g. a ball cannot fly in the air)\n'
    '* Collision (e.g. two objects cannot penetrate each other)\n'
    '* Object interaction (e.g. an object cannot move without any apparent reason)\n'
    '* Fluid dynamics (e.g. a liquid cannot flow through a solid object)\n'
    '* Object permanence (e.g. an object cannot suddenly appear, disappear or change its shape)\n'
    '* Common sense (e.g. an object should be functional and useful)\n'
    '* Cause-and-effect (e.g. a door cannot open without any apparent reason)\n'
    "* Human motion (e.g. a person's body cannot morph and the joints cannot move in impossible ways)\n"
    '\n'
    'Here are some examples of non-artifacts you should not include in your analysis:\n'
    '\n'
    '* Being an animated video, such as a cartoon, does not automatically make it artifacts.\n'
    '* The video has no sound. Do not make any conclusions based on sound.\n'
    '* Ignore any lighting, shadows, blurring, and camera effects.\n'
    '* Avoid judging based on overall impression, artistic style, or background elements.\n'
    '\n'
    'Begin your response with a single word: "Yes" or "No".'
)
USER_PROMPT = 'Does the video contain any anomalies or artifacts?'
TARGET_NUM_TOKENS = 9216
MAX_FRAMES = 160

_QUERY = Query(
    system=SYSTEM_PROMPT,
    user="{caption}",
    dimensions=("no_anomaly",),
    channel=ProbeChannel(candidates=("Yes", "No"), value_of="No"),
    media_first=True,
)

SPEC = CriticSpec(
    name="cosmos-reason1",
    title="Cosmos-Reason1-7B-Reward",
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    media=MediaRule(
        frames=FrameRule(kind="stride", max_frames=MAX_FRAMES, multiple_of=2),
        pixels=PixelRule(min_pixels=16 * 28 * 28 * 2, max_pixels=TARGET_NUM_TOKENS * 28 * 28 * 2,
                         total_pixels=TARGET_NUM_TOKENS * 28 * 28 * 2, factor=28),
        present_as="video",
    ),
    queries=(_QUERY,),
    dimensions=(DimensionInfo("no_anomaly", 'P("No") to the anomaly checklist: no physical or common-sense '
                              "artefact (gravity, collision, object permanence, human motion, ...)", (0.0, 1.0)),),
    source="nvidia-cosmos/cosmos-rl@89f2e5b5c817d99a240f1194ce37239ceb6f058a "
           "reward_service/cosmos_rl_reward/model/cosmos_reason1.py",
    reward_doc='P("No"): softmax over the "Yes" and "No" logits at the answer\'s first token (its `no_score`)',
    notes="User text: the caption, as the service sends (variant 'question': its unused USER_PROMPT, as the "
          "cookbook and training). Frames and pixels as the service's own code (qwen_vl_utils <= 0.0.11).",
)

VARIANTS = {
    "caption": SPEC,
    "question": replace(SPEC, queries=(replace(_QUERY, user=USER_PROMPT),),
                        notes="User text: the fixed question USER_PROMPT (the cookbook's, as in training)."),
}
