"""What a critic family is: how (caption, dimension, frames) become an engine prompt for that architecture.

A family knows its chat template, where the frames go (one video, or N images) and how the answer's label
is tokenized right after the assistant turn starts. Engines stay architecture-agnostic: they call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # keep this package importable without numpy: `lift --help` loads it on client-only installs
    from service.media import VideoFrames


@dataclass
class PromptInputs:
    """One question about one video, as token ids (up to the start of the answer) plus the media."""

    token_ids: list[int]
    vllm_mm_data: dict[str, Any]  # vLLM multi_modal_data
    hf_inputs: dict[str, Any] | None = None  # processor outputs for the transformers engine (lazily built)


@dataclass(frozen=True)
class ChatPrompt:
    """A critic's question as a chat (service.critics): system text, the user's text, where the frames go."""

    user_text: str
    system: str | None = None  # None: the chat template's default system turn
    media_first: bool = True
    present_as: str = "video"  # "video": one video input; "images": one image per frame


class CriticFamily(Protocol):
    name: str
    short_clip_rule: str  # how critic_frames treats a clip shorter than the frames asked: repeat | distinct

    def vllm_prompt(self, caption: str, dimension: str, video: VideoFrames) -> PromptInputs:
        """Token ids with the family's media placeholders (vLLM expands them) and multi_modal_data."""
        ...

    def hf_prompt(self, caption: str, dimension: str, video: VideoFrames) -> dict[str, Any]:
        """Model inputs for a transformers forward: expanded `input_ids` (1, L) plus pixel tensors."""
        ...

    def label_token_ids(self) -> dict[str, list[int]]:
        """Each label's token ids as they follow the assistant turn start (several when the tokenizer splits it)."""
        ...

    def reason_prefix_ids(self, label: str) -> list[int]:
        """The tokens of the '.' that follows `label` in LiFT's answer "<Label>. <reason>", tokenized in the
        answer's context (SentencePiece splits a lone "." or ". " differently than after "▁Good"); the reason's
        own leading space is the model's first generated token, as in the text it was trained on."""
        ...

    def critic_frames(self, video: VideoFrames) -> VideoFrames:
        """The frames the critic is shown of a sampled video (a short clip's rule differs by family)."""
        ...


def tokens_after(tokenizer: Any, context: str, tail: str, *, add_special_tokens: bool = True) -> list[int] | None:
    """The ids `tail` adds after `context` when the two are tokenized together, or None when tokenizing them
    together changes the context's own ids (a merge across the boundary)."""
    base = list(tokenizer(context, add_special_tokens=add_special_tokens).input_ids)
    full = list(tokenizer(context + tail, add_special_tokens=add_special_tokens).input_ids)
    if full[:len(base)] == base and len(full) > len(base):
        return full[len(base):]
    return None


def label_prefixes(label_ids: dict[str, list[int]]) -> dict[tuple[int, ...], set[int]]:
    """For scoring labels as whole token sequences: each distinct proper prefix of a label's tokens -> the
    tokens that extend it. One forward per prefix gives p(next | prefix) for every label that goes that way."""
    out: dict[tuple[int, ...], set[int]] = {}
    for ids in label_ids.values():
        for k in range(len(ids)):
            out.setdefault(tuple(ids[:k]), set()).add(ids[k])
    return out


def sequence_probabilities(
    label_ids: dict[str, list[int]], logprobs: dict[tuple[int, ...], dict[int, float]]
) -> dict[str, float]:
    """p(label) restricted to the labels and renormalised, each label scored as its whole token sequence:
    log p(label) = sum_k log p(t_k | prompt, t_<k). `logprobs[prefix][token]` are unconstrained log-probs."""
    import math

    raw = {}
    for label, ids in label_ids.items():
        raw[label] = sum(logprobs[tuple(ids[:k])][ids[k]] for k in range(len(ids)))
    top = max(raw.values())
    weights = {k: math.exp(v - top) for k, v in raw.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}
