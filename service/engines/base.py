"""The engine contract: a started engine answers LiFT's questions about one decoded video.

Engines never see HTTP; they take frames + caption and return, per dimension, the label distribution and the
answer text. Both engines choose the label the same way (see `select_label`), so they can be held to each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from service.errors import EngineError
from service.families.base import ChatPrompt
from service.media import VideoFrames
from service.rubric import DIMENSION_NAMES, LABELS

DEFAULT_MAX_REASON_TOKENS = 64
# Bounded rationale: printable characters only (random or confused models otherwise emit control bytes).
REASON_CHARS = r"[^\x00-\x1f\x7f]"
REASON_UNPRINTABLE = r"[\x00-\x1f\x7f\ufffd]"  # what a reason never contains (control bytes, broken UTF-8)
_CONTROL = re.compile(REASON_UNPRINTABLE + "+")


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy
    seed: int | None = None
    max_reason_tokens: int = DEFAULT_MAX_REASON_TOKENS
    # True: the whole answer is generated freely after the prompt (LiFT's own decoding, for its substring rule);
    # False: the chosen label and ". " are forced, then the reason is generated (every answer parses).
    free_answer: bool = False
    # False: reward-only, the label round alone (no answer text is generated; DimensionAnswer.text is the label)
    reason: bool = True


@dataclass(frozen=True)
class CriticQuery:
    video: VideoFrames
    caption: str
    sampling: SamplingOptions = SamplingOptions()
    dimensions: tuple[str, ...] = DIMENSION_NAMES


@dataclass
class DimensionAnswer:
    dimension: str
    label: str
    probabilities: dict[str, float]  # over the three labels, sums to 1
    text: str  # the critic's whole answer, "<Label>. <reason>"
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (vLLM)
    extra: dict = field(default_factory=dict)


@dataclass
class ProbeResult:
    """Probabilities of candidate continuations of a prompt, each scored as its whole token sequence and
    renormalised over the candidates (softmax over just their log-probs)."""

    probabilities: dict[str, float]
    logprobs: dict[str, float]  # unconstrained (full-vocabulary) log-prob of each candidate's sequence
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class GeneratedText:
    """An answer generated after a prompt, with the full-vocabulary log-probs of chosen tokens at every step."""

    text: str
    token_ids: list[int]
    step_logprobs: list[dict[int, float]]  # per generated step: token id -> log-prob (the ids asked for)
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class PooledHidden:
    """The final hidden state (after the last norm) at the first position of each asked token id in a prompt:
    what a reward head reads (service.critics.spec.HeadChannel). No generation, no logits."""

    hidden: dict[int, np.ndarray]  # token id -> (hidden_size,) float32
    prompt_tokens: int = 0


@runtime_checkable
class CriticEngine(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def generate(self, query: CriticQuery) -> list[DimensionAnswer]:
        """LiFT's label channel: per dimension, the label round then the reason (service.critics.lift)."""
        ...

    # primitives any critic is built from (service.critics.runner); they know nothing of any one critic
    async def probe(self, chat: ChatPrompt, video: VideoFrames, candidates: dict[str, list[int]]) -> ProbeResult: ...

    async def generate_text(self, chat: ChatPrompt, video: VideoFrames, *, max_tokens: int, temperature: float = 0.0,
                            seed: int | None = None, logprob_token_ids: list[int] | None = None) -> GeneratedText: ...

    async def pool(self, chat: ChatPrompt, video: VideoFrames, token_ids: list[int]) -> PooledHidden:
        """The final hidden states at the (first) positions of `token_ids` in the prompt (a reward head's input)."""
        ...

    async def stop(self) -> None: ...


def select_label(probabilities: dict[str, float], sampling: SamplingOptions, dimension: str) -> str:
    """Greedy: the most probable label (ties broken in LABELS order). Sampling: draw from p^(1/T), seeded
    per dimension so the same request and seed give the same labels."""
    if sampling.temperature <= 0:
        return max(LABELS, key=lambda k: (probabilities[k], -LABELS.index(k)))
    logits = np.array([math.log(max(probabilities[k], 1e-30)) / sampling.temperature for k in LABELS])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    seed = None if sampling.seed is None else [sampling.seed, DIMENSION_NAMES.index(dimension)]
    return str(np.random.default_rng(seed).choice(LABELS, p=p))


def hidden_at(ids: list[int], states: Any, token_ids: list[int]) -> dict[int, Any]:
    """Each token id's first position in `ids` -> that row of `states` (one row per id), float32 numpy."""
    if len(states) != len(ids):
        raise EngineError(f"the engine returned {len(states)} hidden states for a prompt of {len(ids)} tokens")
    out: dict[int, Any] = {}
    for tok in token_ids:
        try:
            position = ids.index(tok)
        except ValueError:
            raise EngineError(f"token id {tok} is not in the prompt: nothing to read the head at") from None
        row = states[position]
        out[tok] = np.asarray(row.float().cpu().numpy() if hasattr(row, "cpu") else row, dtype=np.float32)
    return out


def clean_reason(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()
