"""The `qwen2_vl` family: vLLM-native video VLMs (Qwen2-VL, Qwen2.5-VL) that take the frames as one video."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from service.families.base import ChatPrompt, PromptInputs, tokens_after
from service.media import VideoFrames
from service.rubric import LABELS, user_text

ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")


class Qwen2VLFamily:
    name = "qwen2_vl"
    short_clip_rule = "repeat"  # see critic_frames (provenance names it)

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = str(model_dir)

    @cached_property
    def processor(self) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model_dir)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def chat_text(self, caption: str, dimension: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text(caption, dimension)}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def critic_frames(self, video: VideoFrames) -> VideoFrames:
        """All sampled frames, repeats of a short clip included: Qwen2-VL's video input merges frames in pairs
        (temporal patch 2), so the count stays the even N asked rather than a short clip's own (odd) length."""
        return video

    def vllm_prompt(self, caption: str, dimension: str, video: VideoFrames) -> PromptInputs:
        ids = self.tokenizer(self.chat_text(caption, dimension), add_special_tokens=False).input_ids
        return PromptInputs(token_ids=list(ids), vllm_mm_data={"video": (video.frames, self._video_meta(video))})

    def hf_prompt(self, caption: str, dimension: str, video: VideoFrames) -> dict[str, Any]:
        return dict(self.processor(text=[self.chat_text(caption, dimension)], videos=[video.frames],
                                   do_sample_frames=False, return_tensors="pt"))

    # ---- any critic's chat (service.critics): system, media as a video or as images, the user's text ----
    def chat_messages(self, chat: ChatPrompt, num_frames: int) -> list[dict[str, Any]]:
        media = [{"type": "video"}] if chat.present_as == "video" else [{"type": "image"}] * num_frames
        text = [{"type": "text", "text": chat.user_text}]
        messages = [] if chat.system is None else [{"role": "system", "content": chat.system}]
        messages.append({"role": "user", "content": media + text if chat.media_first else text + media})
        return messages

    def chat_template_text(self, chat: ChatPrompt, num_frames: int) -> str:
        return self.processor.apply_chat_template(self.chat_messages(chat, num_frames), add_generation_prompt=True,
                                                  tokenize=False)

    def vllm_chat(self, chat: ChatPrompt, video: VideoFrames) -> PromptInputs:
        ids = self.tokenizer(self.chat_template_text(chat, video.num_frames), add_special_tokens=False).input_ids
        if chat.present_as == "video":
            return PromptInputs(token_ids=list(ids), vllm_mm_data={"video": (video.frames, self._video_meta(video))})
        return PromptInputs(token_ids=list(ids), vllm_mm_data={"image": _images(video)})

    def hf_chat(self, chat: ChatPrompt, video: VideoFrames) -> dict[str, Any]:
        text = [self.chat_template_text(chat, video.num_frames)]
        if chat.present_as == "video":
            fps = video.extra.get("sampled_fps") or video.fps or 8.0
            return dict(self.processor(text=text, videos=[video.frames], do_sample_frames=False, fps=fps,
                                       return_tensors="pt"))
        return dict(self.processor(text=text, images=_images(video), return_tensors="pt"))

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    @staticmethod
    def _video_meta(video: VideoFrames) -> dict[str, Any]:
        # frames are already sampled: tell the processor not to sample again (Qwen2.5-VL needs the metadata)
        fps = video.extra.get("sampled_fps") or video.fps or 8.0
        return {"total_num_frames": video.num_frames, "fps": fps, "duration": video.duration_s,
                "video_backend": "decord", "frames_indices": list(range(video.num_frames)), "do_sample_frames": False}

    def label_token_ids(self) -> dict[str, list[int]]:
        return {label: self.tokenizer(label, add_special_tokens=False).input_ids for label in LABELS}

    def reason_prefix_ids(self, label: str) -> list[int]:
        ids = tokens_after(self.tokenizer, label, ".", add_special_tokens=False)
        return ids if ids is not None else list(self.tokenizer(".", add_special_tokens=False).input_ids)


def _images(video: VideoFrames) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(frame) for frame in video.frames]
