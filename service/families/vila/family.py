"""The `vila` CriticFamily: LiFT's prompt for VILA-1.5 as engine inputs.

The frames go in as N images, each `<image>` followed by a newline, then caption + question, inside the
checkpoint's chat template (vicuna_v1 for 13B, hermes-2 for 40B: the converter records which in config.json).
Token ids are built the way VILA builds them
(piece by piece around the images) and given to vLLM as ids, so both engines see exactly the same sequence:
vLLM expands each `<image>` id into `tokens_per_image` slots itself; the transformers reference gets the
expanded ids.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError
from service.families.base import PromptInputs, tokens_after
from service.families.vila import (CHAT_TEMPLATE_KEY, IMAGE_TOKEN, is_converted, is_original_layout,
                                   read_config, vision_grid)
from service.families.vila.prompt import chat_template, lift_query, tokenize_with_images
from service.media import VideoFrames, distinct_frames
from service.rubric import LABELS


class VilaFamily:
    name = "vila"
    short_clip_rule = "distinct"  # see critic_frames (provenance names it)

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = str(model_dir)
        config = read_config(model_dir)
        if not is_converted(config):
            if is_original_layout(model_dir):
                raise ModelLoadError(f"{model_dir} is a VILA-1.5 folder in VILA's own layout; convert it first: "
                                     f"lift convert-vila --base {model_dir} [--lora LORA_DIR] --out OUT_DIR")
            raise ModelLoadError(f"{model_dir} is not a converted VILA checkpoint (architectures "
                                 f"{config.get('architectures')!r})")
        try:
            vision = config["vision_config"]
            self.image_token_id = int(config["image_token_index"])
            grid = vision_grid(vision)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{model_dir}/config.json lacks VILA fields: {exc}") from None
        self.template = chat_template(config.get(CHAT_TEMPLATE_KEY, "vicuna_v1"))
        # projector.num_output_tokens, without importing torch (a dropped CLS does not change the grid)
        self.tokens_per_image = ((grid + 1) // 2) ** 2

    # ---- tokenizer and image processor, as vLLM loads them from the same folder ----
    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_dir)
        if tok.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_token_id:
            raise ModelLoadError(f"{self.model_dir}: tokenizer's {IMAGE_TOKEN} id differs from config's "
                                 f"image_token_index {self.image_token_id}")
        return tok

    @cached_property
    def image_processor(self) -> Any:
        from transformers import LlavaProcessor

        # PIL backend: what VILA used, and what the vLLM model's processing info asks for too
        return LlavaProcessor.from_pretrained(self.model_dir, backend="pil").image_processor

    # ---- CriticFamily ----
    def prompt_ids(self, caption: str, dimension: str, num_frames: int) -> list[int]:
        """One `<image>` id per frame, VILA's piece-wise tokenization of the chat-templated LiFT query."""
        text = self.template.render(lift_query(caption, dimension, num_frames))
        return tokenize_with_images(text, self.tokenizer, self.image_token_id)

    def critic_frames(self, video: VideoFrames) -> VideoFrames:
        """A clip shorter than the frames asked: the n frames it has, one `<image>` each, as LiFT's loader gave
        them (not repeats)."""
        return distinct_frames(video)

    def vllm_prompt(self, caption: str, dimension: str, video: VideoFrames) -> PromptInputs:
        video = self.critic_frames(video)
        return PromptInputs(token_ids=self.prompt_ids(caption, dimension, video.num_frames),
                            vllm_mm_data={"image": frames_to_images(video)})

    def hf_prompt(self, caption: str, dimension: str, video: VideoFrames) -> dict[str, Any]:
        import torch

        video = self.critic_frames(video)
        ids: list[int] = []
        for t in self.prompt_ids(caption, dimension, video.num_frames):
            ids.extend([t] * self.tokens_per_image if t == self.image_token_id else [t])
        pixels = self.image_processor(frames_to_images(video), return_tensors="pt")["pixel_values"]
        input_ids = torch.tensor([ids], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels}

    def label_token_ids(self) -> dict[str, list[int]]:
        """Each label's ids as they follow the assistant turn start: tokenized in context (vicuna_v1 answers
        " Good" after "ASSISTANT:", one SentencePiece token "▁Good", not "Good" on its own)."""
        ctx = self.template.tail
        base = list(self.tokenizer(ctx).input_ids)
        out: dict[str, list[int]] = {}
        for label in LABELS:
            full = list(self.tokenizer(ctx + self.template.answer_lead + label).input_ids)
            if full[:len(base)] == base and len(full) > len(base):
                out[label] = full[len(base):]
            else:  # a merge across the boundary: fall back to the label on its own
                out[label] = list(self.tokenizer(self.template.answer_lead + label, add_special_tokens=False).input_ids)
        return out

    def reason_prefix_ids(self, label: str) -> list[int]:
        """In context: vicuna_v1's "▁Good" is followed by "." (one piece), where "." tokenized alone would be
        "▁." (or "▁", "."): VILA's training text "Good. The ..." continues with "▁The"."""
        ctx = self.template.tail + self.template.answer_lead + label
        ids = tokens_after(self.tokenizer, ctx, ".")
        if ids is None:
            raise ModelLoadError(f"{self.model_dir}: the '.' after {label!r} merges with the label in this tokenizer")
        return ids

    def mm_limits(self, max_num_frames: int) -> dict[str, int]:
        return {"image": max_num_frames}

    def load_hf_model(self, dtype: Any = None, device: str = "cpu") -> Any:
        import torch

        from service.families.vila.reference import load_reference

        return load_reference(self.model_dir, dtype=dtype or torch.float32, device=device)


def frames_to_images(video: VideoFrames) -> list[Any]:
    """uint8 (N, H, W, 3) -> N PIL images (VILA's processor path works on PIL)."""
    from PIL import Image

    return [Image.fromarray(frame) for frame in video.frames]
