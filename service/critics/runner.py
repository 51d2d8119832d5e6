"""Runs a critic's spec on an engine: the one place that turns queries and answer channels into scores.

The engines offer primitives (probe candidate continuations; generate text with the log-probs of chosen tokens)
and know nothing of any critic; the spec (service/critics/<name>.py) says what to ask and how to read the answer.
LiFT's label channel keeps its engine path (`engine.generate`: the label round then the reason, with its prefix
sharing across the three questions); `service.critic.Critic` takes it there.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from service.critics.spec import CriticSpec, GeneratedScoresChannel, HeadChannel, ProbeChannel, Query
from service.errors import UnparsableAnswer
from service.families.base import ChatPrompt
from service.media import VideoFrames
from service.protocol import DimensionScore


@dataclass(frozen=True)
class Decode:
    """A request's decoding for generated answers (the spec's unless the request says otherwise)."""

    temperature: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    keep_text: bool = True  # False: reward-only, the answer's text is not returned


def chat_for(spec: CriticSpec, query: Query, caption: str) -> ChatPrompt:
    return ChatPrompt(user_text=query.user_text(caption), system=query.system, media_first=query.media_first,
                      present_as=spec.media.present_as)


async def run_queries(spec: CriticSpec, engine: Any, video: VideoFrames, caption: str, decode: Decode,
                      failure_value: float | None) -> dict[str, DimensionScore]:
    """Every query of the spec about one video, concurrently; per dimension its score."""
    answers = await asyncio.gather(*(run_query(spec, q, engine, video, caption, decode, failure_value)
                                     for q in spec.queries))
    out: dict[str, DimensionScore] = {}
    for answer in answers:
        out.update(answer)
    return {name: out[name] for name in spec.dimension_names}


async def run_query(spec: CriticSpec, query: Query, engine: Any, video: VideoFrames, caption: str, decode: Decode,
                    failure_value: float | None) -> dict[str, DimensionScore]:
    chat = chat_for(spec, query, caption)
    family = engine.family
    channel = query.channel
    if isinstance(channel, ProbeChannel):
        candidates = {c: family.token_ids(c) for c in channel.candidates}
        probe = await engine.probe(chat, video, candidates)
        (name,) = query.dimensions
        value = float(probe.probabilities[channel.value_of])
        label = max(channel.candidates, key=lambda c: (probe.probabilities[c], -channel.candidates.index(c)))
        score = spec.normalised(name, value)
        return {name: DimensionScore(label=label, score=score, expected_score=score, value=value,
                                     probabilities={c: float(p) for c, p in probe.probabilities.items()},
                                     rationale=None)}
    if isinstance(channel, GeneratedScoresChannel):
        return await _generated_scores(spec, query, channel, engine, chat, video, decode, failure_value)
    if isinstance(channel, HeadChannel):  # a reward head on hidden states (service.critics.head)
        from service.critics.head import read_head

        return await read_head(spec, query, channel, engine, chat, video)
    raise TypeError(f"{spec.name}: the {type(channel).__name__} is served by the engine's label path, not here")


async def _generated_scores(spec: CriticSpec, query: Query, channel: GeneratedScoresChannel, engine: Any,
                            chat: ChatPrompt, video: VideoFrames, decode: Decode,
                            failure_value: float | None) -> dict[str, DimensionScore]:
    tokenizer = engine.family.tokenizer
    digits = {d: ids[0] for d in channel.soft_digits if len(ids := engine.family.token_ids(d)) == 1}
    temperature = query.decoding.temperature if decode.temperature is None else decode.temperature
    generated = await engine.generate_text(
        chat, video, max_tokens=decode.max_tokens or query.decoding.max_new_tokens, temperature=temperature,
        seed=decode.seed, logprob_token_ids=sorted(digits.values()) or None)
    parsed = channel.parse(generated.text)
    missing = [d for d in query.dimensions if parsed.values.get(d) is None]
    if missing and failure_value is None:
        raise UnparsableAnswer(
            f"{spec.name}'s answer has no {', '.join(missing)} score it could read (set LIFT_PARSE_FAILURE_VALUE to "
            f"score such answers with a fixed value instead): {generated.text[:600]!r}", text=generated.text)
    text = generated.text.strip() if decode.keep_text else None
    out: dict[str, DimensionScore] = {}
    for name in query.dimensions:
        value = parsed.values.get(name)
        if value is None:  # the deployment chose a failure value: stated, never passed off as read
            fail = float(failure_value)  # type: ignore[arg-type]
            out[name] = DimensionScore(label=None, value=fail, score=spec.normalised(name, fail), expected_score=None,
                                       probabilities=None, rationale=generated.text.strip(), parsed=False)
            continue
        probabilities = None
        expected = None
        offset = parsed.digit_offsets.get(name)
        if digits and offset is not None:
            step = step_at_offset(tokenizer, generated.token_ids, offset, set(digits.values()))
            if step is not None and step < len(generated.step_logprobs):
                probabilities = soft_probabilities(generated.step_logprobs[step], digits)
        if probabilities is not None:
            expected = spec.normalised(name, channel.soft(probabilities))
        out[name] = DimensionScore(label=None, value=float(value), score=spec.normalised(name, float(value)),
                                   expected_score=expected, probabilities=probabilities, rationale=text)
    return out


def soft_probabilities(step: dict[int, float], digits: dict[str, int]) -> dict[str, float] | None:
    """Softmax over just the digits' log-probs at one step (their full-vocabulary log-probs, renormalised)."""
    if not all(tok in step for tok in digits.values()):
        return None
    top = max(step[tok] for tok in digits.values())
    weights = {d: math.exp(step[tok] - top) for d, tok in digits.items()}
    total = sum(weights.values())
    return {d: w / total for d, w in weights.items()}


def step_at_offset(tokenizer: Any, token_ids: list[int], offset: int, digit_ids: set[int]) -> int | None:
    """The generated step whose token wrote the character at `offset` of the decoded answer, when that token is
    one of the digits (a digit merged into a longer token has no digit distribution: None)."""
    for k, tok in enumerate(token_ids):
        if tok not in digit_ids:
            continue
        start = len(tokenizer.decode(token_ids[:k], skip_special_tokens=True))
        if start == offset:
            return k
        if start > offset:
            return None
    return None
