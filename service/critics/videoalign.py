"""VideoAlign's VideoReward (KwaiVGI/VideoAlign; weights KwaiVGI/VideoReward, now KlingTeam/VideoReward) as data.

Source: KwaiVGI/VideoAlign@219ab9db64c045e5181a2202d11f686439351292: inference.py (`VideoVLMRewardInference`),
trainer.py (`Qwen2VLRewardModelBT`), prompt_template.py (`DETAILED_PROMPT_WITH_SPECIAL_TOKEN`, `build_prompt`),
vision_process.py (`smart_nframes`, `fetch_video`), train_reward.py (`create_model_and_processor`). Notes:
docs/critics/videoalign.md.

- Qwen2-VL-2B-Instruct + LoRA (merged by `lift convert-videoalign`) + `rm_head`, a bias-free Linear(hidden,
  output_dim); the tokenizer gains three special tokens, `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`, which
  the prompt itself carries (template "detailed_special"): no generation, one forward.
- The user turn: the video, then the prompt with the caption in `{text_prompt}`; no system turn (the chat
  template's default). The head is read on the final hidden state at each reward token; with the release's
  output_dim 1 every dimension reads output 0 (output_dim 3 would read the diagonal: output i at token i).
- Values as its inference returns them (`use_norm=True`, the default): (raw - mean) / std with the release's
  `inference_config`; `Overall` = VQ + MQ + TA of those values, which is the reward here (it is not read from
  the model: a sum its inference adds, so it is the reward rather than a fourth dimension).
- Positions: its forward calls transformers 4.45's text model with position_ids None, so every token, the
  frames' too, sits at its own index in all three M-RoPE sections (1-D RoPE); trained and run that way, so
  HeadChannel(positions="sequential") (service/families/videoalign/vllm_model.py on vLLM).
- Frames: 2 fps, at least 4, at most 768 and the video's length, rounded to an even count (its own
  smart_nframes rounds half-to-even; qwen-vl-utils floors), spread by torch.linspace(...).round(); each frame
  smart_resize'd (factor 28) between 128*28*28 pixels and the release's max_frame_pixels (200,704), bicubic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.critics.spec import (
    CriticSpec,
    DimensionInfo,
    FrameRule,
    HeadChannel,
    MediaRule,
    PixelRule,
    Query,
)

# prompt_template.py, extracted with ast (tests/fixtures/critics/videoalign_detailed_prompt_with_special_token.txt)
DETAILED_PROMPT_WITH_SPECIAL_TOKEN = (
    '\n'
    'You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.\n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:\n'
    '- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.\n'
    '- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. \n'
    '\n'
    'Please provide the ratings of Visual Quality: <|VQ_reward|>\n'
    'END\n'
    '\n'
    '**Motion Quality:**  \n'
    'Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:\n'
    '- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).\n'
    '- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).\n'
    '- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.\n'
    '- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.\n'
    '- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.\n'
    '- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.\n'
    '\n'
    'Please provide the ratings of Motion Quality: <|MQ_reward|>\n'
    'END\n'
    '\n'
    '**Text Alignment:**  \n'
    'Assess how well the video matches the textual prompt across the following sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.\n'
    '- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.\n'
    '- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  \n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.\n'
    '- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.\n'
    '\n'
    'Textual prompt - {text_prompt}\n'
    'Please provide the ratings of Text Alignment: <|TA_reward|>\n'
    'END\n'
)

TEXT_SLOT = "{text_prompt}"  # the template's only field (`.format(text_prompt=prompt)`)
REWARD_TOKENS = {"vq": "<|VQ_reward|>", "mq": "<|MQ_reward|>", "ta": "<|TA_reward|>"}  # train_reward.py order
EVAL_DIMS = {"vq": "VQ", "mq": "MQ", "ta": "TA"}  # its names (inference's reward dict, inference_config keys)
# the release's model_config.json inference_config (VQ_mean, VQ_std, ...): _norm() divides (raw - mean) by std
NORMALISATION = {"vq": (3.6757, 2.2476), "mq": (1.1646, 1.3811), "ta": (2.8105, 2.5121)}
OUTPUT_DIM = 1  # the release's model_config.output_dim: one head output, read at each of the three tokens
# the release's data_config: fps 2.0, max_frame_pixels 200704, sample_type "uniform", num_frames null
FPS = 2.0
MAX_FRAME_PIXELS = 200704
VIDEO_MIN_PIXELS = 128 * 28 * 28  # vision_process.py
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
FRAME_FACTOR = 2


@dataclass(frozen=True)
class VideoAlignFrames(FrameRule):
    """vision_process.py's `smart_nframes` + uniform sampling, which differ from qwen-vl-utils' in rounding: the
    count is round(n / 2) * 2 (Python's half-to-even) after clamping to [4, min(768, total) floored to even],
    then capped at the video's length; a request's num_frames ("nframes") is rounded the same way. Indices are
    torch.linspace(0, total - 1, n).round() (float32, as there)."""

    def indices(self, total: int, video_fps: float, requested: int | None = None) -> list[int]:
        from service.errors import InvalidVideo

        if total < 1:
            raise ValueError("a video with no frames")
        m = self.multiple_of
        if requested:
            n = round(requested / m) * m
        else:
            lo = math.ceil(self.min_frames / m) * m
            hi = math.floor(min(self.max_frames, total) / m) * m
            n = round(min(max(total / (video_fps or 1.0) * self.fps, lo), hi) / m) * m
        n = min(n, total)
        if not m <= n <= total:
            raise InvalidVideo(f"VideoAlign reads at least {m} frames; the video has {total}", param="video")
        import torch

        return torch.linspace(0, total - 1, n).round().long().tolist()


# positions "sequential": its forward calls transformers 4.45's text model with position_ids None, which puts
# every token at its own index in all three M-RoPE sections (service/families/videoalign/vllm_model.py)
CHANNEL = HeadChannel(tokens=REWARD_TOKENS, outputs={d: 0 for d in REWARD_TOKENS}, norms=NORMALISATION,
                      normalised=True, positions="sequential")

_QUERY = Query(
    user=DETAILED_PROMPT_WITH_SPECIAL_TOKEN.replace(TEXT_SLOT, "{caption}"),
    dimensions=tuple(REWARD_TOKENS),
    channel=CHANNEL,
    system=None,
    media_first=True,
)

# values are z-scores over the release's calibration, unbounded; the card's (worst, best) is a nominal +-3 std
# (JSON has no infinity). The [0, 1] score is sigmoid(value), never this scale (HeadChannel.score).
NOMINAL_SCALE = (-3.0, 3.0)


def overall(values: dict[str, float]) -> float:
    """inference.py: rewards[i]['Overall'] = VQ + MQ + TA (after _norm)."""
    return float(values["vq"] + values["mq"] + values["ta"])


SPEC = CriticSpec(
    name="videoalign",
    title="VideoReward (VideoAlign)",
    architectures=("Qwen2VLForConditionalGeneration",),
    media=MediaRule(
        frames=VideoAlignFrames(kind="fps", fps=FPS, min_frames=FPS_MIN_FRAMES, max_frames=FPS_MAX_FRAMES,
                                multiple_of=FRAME_FACTOR),
        pixels=PixelRule(min_pixels=VIDEO_MIN_PIXELS, max_pixels=MAX_FRAME_PIXELS, factor=28),
        present_as="video",
    ),
    queries=(_QUERY,),
    dimensions=(
        DimensionInfo("vq", "Visual Quality: clarity, detail, aesthetics, single-frame reasonableness (rm_head at "
                      "<|VQ_reward|>, normalised by the release's VQ mean and std: a z-score, unbounded; the scale "
                      "is a nominal +-3 std)", NOMINAL_SCALE),
        DimensionInfo("mq", "Motion Quality: stability, naturalness, smoothness, amplitude (rm_head at "
                      "<|MQ_reward|>, normalised: a z-score, unbounded)", NOMINAL_SCALE),
        DimensionInfo("ta", "Text Alignment: subject, motion, environment, style and camera against the prompt "
                      "(rm_head at <|TA_reward|>, normalised: a z-score, unbounded)", NOMINAL_SCALE),
    ),
    source="KwaiVGI/VideoAlign@219ab9db64c045e5181a2202d11f686439351292 inference.py, trainer.py, "
           "prompt_template.py, vision_process.py",
    reward=overall,
    reward_over="value",
    reward_alias="overall",
    reward_doc="Overall = VQ + MQ + TA of the normalised values, as its inference.py computes it; each "
               "dimension's score is sigmoid(value)",
    notes="Values are z-scores over the release's calibration (inference_config), not bounded; score = "
          "sigmoid(value) is a [0, 1] view only. Frames resized with PIL bicubic (its code: torchvision bicubic "
          "with antialias on uint8 tensors: within a grey level). float32 head on the engine's hidden states "
          "(its inference: bf16 throughout).",
)
