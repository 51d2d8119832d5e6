"""Rated example -> supervised training features, built with the serving family's own prompt code.

Train-time prompts equal serve-time prompts token for token: the frames are sampled by
`service.media.decode_video` (as the service samples them) and the prompt is `family.hf_prompt`, the
same call the transformers engine makes. The target is the answer "<Label>. <reason>" plus the end of
turn, tokenized the way the engines score it (the label's own token ids first); loss on those only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finetune.critic.data import RatedExample
from service.media import MediaLimits, VideoFrames, decode_video
from service.rubric import DEFAULT_NUM_FRAMES

IGNORE_INDEX = -100  # positions the loss skips (prompt, video, padding)
# The tensors a family's hf_prompt returns that are per-video media, concatenated along dim 0 in a batch.
_MEDIA_KEYS = ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw")


def answer_token_ids(family: Any, label: str, reason: str) -> list[int]:
    """Token ids of "<Label>. <reason><end of turn>" split the way both engines produce them: the label's
    own ids (how labels are scored), then its "." (which the engines force, family.reason_prefix_ids), then the
    reason with its leading space as the text "<Label>. <reason>" tokenizes it (the engines generate it after
    the "."), then the end of turn so the critic learns to stop."""
    from service.families.base import tokens_after

    tokenizer = family.tokenizer
    ids = list(family.label_token_ids()[label])
    ids += family.reason_prefix_ids(label)
    if reason:
        tail = tokens_after(tokenizer, f"{label}.", f" {reason}", add_special_tokens=False)
        ids += tail if tail is not None else tokenizer(f" {reason}", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.append(int(eos))
    return ids


def build_features(family: Any, example: RatedExample, video: VideoFrames) -> dict[str, torch.Tensor]:
    """One example's input_ids / labels / attention_mask (1-D) and its media tensors."""
    inputs = family.hf_prompt(example.caption, example.dimension, video)
    prompt_ids = inputs["input_ids"][0]
    answer = torch.tensor(answer_token_ids(family, example.label, example.reason), dtype=prompt_ids.dtype)
    feats: dict[str, torch.Tensor] = {
        "input_ids": torch.cat([prompt_ids, answer]),
        "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer]),
    }
    feats["attention_mask"] = torch.ones_like(feats["input_ids"])
    # Other per-token inputs (e.g. transformers 5's `mm_token_type_ids` for M-RoPE): answer tokens are text, 0.
    for key, value in inputs.items():
        if key in feats or key in _MEDIA_KEYS or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 2 and value.shape == inputs["input_ids"].shape:
            feats[key] = torch.cat([value[0], value.new_zeros(answer.shape[0])])
    for key in _MEDIA_KEYS:
        if key in inputs and inputs[key] is not None:
            feats[key] = inputs[key]
    return feats


def collate(features: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the token sequences; concatenate media tensors (the model splits them by grid)."""
    longest = max(int(f["input_ids"].shape[0]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    token_keys = [k for k in features[0] if k not in _MEDIA_KEYS]
    for key in token_keys:
        pad = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
        rows = []
        for f in features:
            x = f[key]
            rows.append(torch.cat([x, x.new_full((longest - x.shape[0],), pad)]))
        batch[key] = torch.stack(rows)
    for key in _MEDIA_KEYS:
        if all(key in f for f in features):
            batch[key] = torch.cat([f[key] for f in features], dim=0)
    return batch


class FrameCache:
    """Decoded, sampled frames per video file: each video is asked three questions, decode it once."""

    def __init__(self, num_frames: int = DEFAULT_NUM_FRAMES, limits: MediaLimits | None = None,
                 max_videos: int = 256) -> None:
        self.num_frames = num_frames
        self.limits = limits or MediaLimits()
        self.max_videos = max_videos
        self._cache: OrderedDict[str, VideoFrames] = OrderedDict()

    def get(self, path: Path | str) -> VideoFrames:
        key = str(path)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        frames = decode_video(key, num_frames=self.num_frames, limits=self.limits)
        if self.max_videos > 0:
            self._cache[key] = frames
            while len(self._cache) > self.max_videos:
                self._cache.popitem(last=False)
        return frames


class RatedVideoDataset(torch.utils.data.Dataset):
    """Rated examples as training features, built lazily and kept in an LRU bounded in bytes.

    Features are deterministic (no augmentation), so epochs after the first skip decoding and the
    processor; `cache_mb=0` turns the cache off for data sets far larger than memory."""

    def __init__(self, examples: Sequence[RatedExample], family: Any, *, num_frames: int = DEFAULT_NUM_FRAMES,
                 limits: MediaLimits | None = None, cache_videos: int = 32, cache_mb: float = 2048.0) -> None:
        self.examples = list(examples)
        self.family = family
        self.frames = FrameCache(num_frames, limits, cache_videos)
        self.cache_bytes = int(cache_mb * 2**20)
        self._features: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        hit = self._features.get(i)
        if hit is not None:
            self._features.move_to_end(i)
            return hit
        ex = self.examples[i]
        feats = build_features(self.family, ex, self.frames.get(ex.video))
        size = sum(t.numel() * t.element_size() for t in feats.values())
        if size <= self.cache_bytes:
            self._features[i] = feats
            self._bytes += size
            while self._bytes > self.cache_bytes:
                _, old = self._features.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in old.values())
        return feats
