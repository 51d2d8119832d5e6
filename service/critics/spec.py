"""What a critic is, as data: the model it binds to, the frames it sees, the questions it is asked, and how each
answer becomes a number.

A critic module (`service/critics/<name>.py`) builds one `CriticSpec` from these types; the engines never see
it (they offer primitives: probe candidate continuations, generate text with the log-probs of chosen tokens),
and `service.critics.runner` drives them from the spec. Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


# ---- media ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRule:
    """Which frames of a decoded video the critic sees.

    kind "count": `count` frames at linspace(0, total - 1) rounded down (LiFT's rule; a request's num_frames
    overrides the count). kind "fps": frames at `fps` per second of video, as qwen-vl-utils' `smart_nframes`
    counts them (total / video_fps * fps, clamped to [min_frames, max_frames] and the video's length, rounded to a
    multiple of `multiple_of`), also spread by linspace. kind "stride": every k-th frame with the smallest k that
    keeps at most `max_frames` (Cosmos-Reason1's reward service). kind "floor": `count` frames at
    int(i * total / count), i = 0..count-1: from the first frame, never the last (UnifiedReward's reader).
    """

    kind: Literal["count", "floor", "fps", "stride"] = "count"
    count: int = 8
    fps: float = 2.0
    min_frames: int = 1
    max_frames: int = 768
    multiple_of: int = 1  # Qwen-VL's video input merges frame pairs: 2

    def indices(self, total: int, video_fps: float, requested: int | None = None) -> list[int]:
        if total < 1:
            raise ValueError("a video with no frames")
        if self.kind == "count":
            return np.linspace(0, total - 1, requested or self.count, dtype=int).tolist()
        if self.kind == "floor":
            n = requested or self.count
            return [int(i * total / n) for i in range(n)]
        if self.kind == "stride":
            stride = max(1, math.ceil(total / self.max_frames))
            picked = list(range(0, total, stride))
            if self.multiple_of > 1 and len(picked) % self.multiple_of:
                picked = picked[: len(picked) - len(picked) % self.multiple_of] or picked[:1] * self.multiple_of
            return picked
        # "fps": qwen-vl-utils (0.0.14) smart_nframes: clamp to [ceil(min), floor(min(max, total))], floor to
        # the factor; then torch.linspace(0, total - 1, n).round()
        if requested:
            n = requested
        else:
            m = self.multiple_of
            lo = math.ceil(self.min_frames / m) * m
            hi = math.floor(min(self.max_frames, total) / m) * m
            n = min(max(total / (video_fps or 1.0) * self.fps, lo), hi, total)
            n = max(m, math.floor(n / m) * m)
        return np.linspace(0, total - 1, n).round().astype(int).tolist()


    def sampled_fps(self, total: int, video_fps: float, picked: int) -> float:
        """The frame rate of the frames kept, as the critic's code tells the model (Qwen2.5-VL's temporal
        positions): the video's over the stride (Cosmos-Reason1), frames kept per second of video (qwen-vl-utils)."""
        if self.kind == "stride":
            return video_fps / max(1, math.ceil(total / self.max_frames))
        if self.kind == "fps":
            return picked / max(total, 1e-6) * video_fps
        return video_fps


@dataclass(frozen=True)
class PixelRule:
    """How big each frame is when it reaches the model: Qwen-VL's `smart_resize` (each side a multiple of
    `factor`, the area within [min_pixels, max_pixels]). With `total_pixels`, the per-frame maximum is
    total_pixels // frames (Cosmos-Reason1's reward service: a video budget of 9,216 visual tokens)."""

    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    total_pixels: int | None = None
    factor: int = 28

    def frame_size(self, height: int, width: int, num_frames: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        max_pixels = self.max_pixels
        if self.total_pixels is not None:
            max_pixels = min(max_pixels, self.total_pixels // max(num_frames, 1))
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=max_pixels)


@dataclass(frozen=True)
class MediaRule:
    frames: FrameRule = FrameRule()
    pixels: PixelRule | None = None  # None: the checkpoint's own processor decides
    present_as: Literal["video", "images"] = "video"  # one video input, or one image per frame


# ---- answers ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelChannel:
    """A label from a fixed set, chosen by the label tokens' probabilities, then a generated reason (LiFT)."""

    scores: Mapping[str, float]  # label -> its score on [0, 1]


@dataclass(frozen=True)
class ProbeChannel:
    """No generation: the probabilities of candidate answers at the answer's first position (softmax over just
    their logits); the dimension's value is the probability of `value_of`."""

    candidates: tuple[str, ...]
    value_of: str


@dataclass(frozen=True)
class ParsedScores:
    """What a parser found in one generated answer: each dimension's number, and where in the text its digit
    stands (character offset, for the soft score), None for a dimension the text lacks."""

    values: dict[str, float | None]
    digit_offsets: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedScoresChannel:
    """Numbers written in a generated answer, read by the critic's own parser. With `soft_digits`, each
    dimension also gets a soft score: the expected value over those digit tokens' probabilities at the step that
    wrote the dimension's digit (softmax over just their log-probs)."""

    parse: Callable[[str], ParsedScores]
    scale: tuple[float, float]  # (worst, best) on the critic's own scale
    soft_digits: tuple[str, ...] = ()
    # the digits' renormalised probabilities -> the soft score, on the critic's scale (default: expected value)
    soft_score: Callable[[Mapping[str, float]], float] | None = None

    def soft(self, probabilities: Mapping[str, float]) -> float:
        if self.soft_score is not None:
            return float(self.soft_score(probabilities))
        return expected_value(probabilities)


def expected_value(probabilities: Mapping[str, float]) -> float:
    """sum d x p(d) over digit strings d."""
    return float(sum(float(d) * p for d, p in probabilities.items()))


@dataclass(frozen=True)
class HeadChannel:
    """No generation: a linear reward head read on the final hidden state at reward tokens the prompt itself
    carries (VideoAlign: its `rm_head` at `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>`). The engine returns
    the hidden states at those tokens' (first) positions; the runner applies the checkpoint's head (`head_file`,
    beside the weights) in float32. Per dimension: the token, the head output read there, and (mean, std);
    `value` is (raw - mean) / std when `normalised`, else the raw output; the [0, 1] score is sigmoid(value)."""

    tokens: Mapping[str, str]  # dimension -> the reward token whose position the head is read at
    outputs: Mapping[str, int]  # dimension -> the head's output index read at that position
    norms: Mapping[str, tuple[float, float]]  # dimension -> (mean, std)
    normalised: bool = True
    head_file: str = "rm_head.safetensors"
    # "sequential": every token at its own index in all three M-RoPE sections (no 3-D positions for the frames'
    # tokens), as the critic's own forward computed them when it was trained and run (VideoAlign)
    positions: Literal["mrope", "sequential"] = "mrope"

    def value(self, dimension: str, raw: float) -> float:
        if not self.normalised:
            return float(raw)
        mean, std = self.norms[dimension]
        return float((raw - mean) / std)

    @staticmethod
    def score(value: float) -> float:
        return float(1.0 / (1.0 + math.exp(-value))) if value >= 0 else float(math.exp(value) / (1.0 + math.exp(value)))


Channel = LabelChannel | ProbeChannel | GeneratedScoresChannel | HeadChannel


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy


@dataclass(frozen=True)
class Query:
    """One prompt about one video and the dimensions its answer gives."""

    user: str  # template; "{caption}" is the caption's slot
    dimensions: tuple[str, ...]
    channel: Channel
    system: str | None = None  # None: the chat template's default
    media_first: bool = True  # media before the text in the user turn (so every query shares the frames' prefix)
    decoding: Decoding = Decoding()

    def user_text(self, caption: str) -> str:
        return self.user.replace("{caption}", caption)


RewardRule = Callable[[Mapping[str, float]], float]


def mean_reward(scores: Mapping[str, float]) -> float:
    return float(sum(scores.values()) / len(scores))


@dataclass(frozen=True)
class DimensionInfo:
    name: str
    description: str
    scale: tuple[float, float]  # the critic's own (worst, best)


@dataclass(frozen=True)
class CriticSpec:
    name: str
    title: str
    architectures: tuple[str, ...]  # the checkpoint's config.json `architectures` it runs on
    media: MediaRule
    queries: tuple[Query, ...]
    dimensions: tuple[DimensionInfo, ...]
    source: str  # repository@commit and file(s) the data was read from
    # reward from the dimensions' [0, 1] scores, and from their expected scores
    reward: RewardRule = mean_reward
    reward_doc: str = "mean of the dimensions' scores"
    parse_failure_value: float | None = None  # None: a failed parse fails the sample (with the text)
    rationale: bool = False  # whether answers carry a rationale (generated text)
    reward_alias: str | None = None  # the critic's own name for its reward (VideoAlign: "overall"), for selections
    reward_over: Literal["score", "value"] = "score"  # `reward` takes the dimensions' [0, 1] scores, or values
    notes: str = ""  # what is unverified without the real weights, choices made

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def dimension(self, name: str) -> DimensionInfo:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(f"{self.name} has no dimension {name!r}; it has {', '.join(self.dimension_names)}")

    def normalised(self, name: str, value: float) -> float:
        """A value on the critic's own scale -> [0, 1] (1 best)."""
        worst, best = self.dimension(name).scale
        return float(min(1.0, max(0.0, (value - worst) / (best - worst))))
