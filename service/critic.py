"""The Python API: `Critic.from_pretrained(path, engine=...)` and `await critic.score(video, prompt)`.

One score = decode (off the event loop) -> the engine answers the three questions -> scoring. The HTTP layer
and the CLI both call this; it knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from service.engines import CriticEngine, CriticQuery, SamplingOptions, create_engine
from service.engines.base import DEFAULT_MAX_REASON_TOKENS
from service.errors import AnswerParseError, EngineDead, EngineNotReady, InvalidRequest
from service.media import MediaLimits, VideoFrames, decode_video, frames_from_array
from service.protocol import MAX_PROMPT_CHARS, DimensionScore, ModelCard, Provenance, ScoreOptions, ScoreResponse
from service.provenance import CriticIdentity
from service.rubric import (
    DEFAULT_NUM_FRAMES,
    DIMENSIONS,
    LABEL_SCORES,
    LIFT_MAX_NEW_TOKENS,
    LIFT_TEMPERATURE,
    ScoringRule,
    lift_substring_label,
    parse_answer,
)
from service.scoring import dimension_score, reward

VideoInput = bytes | str | os.PathLike[str] | VideoFrames | np.ndarray
THUMBNAIL_SIZE = 160


class Critic:
    def __init__(self, engine: CriticEngine, model_dir: str | Path, *, model_name: str | None = None,
                 limits: MediaLimits | None = None, num_frames: int = DEFAULT_NUM_FRAMES,
                 scoring: ScoringRule = "label") -> None:
        self.engine = engine
        self.scoring: ScoringRule = scoring  # the rule when a request does not name one (service.rubric)
        self.model_dir = Path(model_dir)
        self.model_name = model_name or self.model_dir.name
        self.limits = limits or MediaLimits()
        self.num_frames = num_frames
        self.parse_failures = 0
        self._identity: CriticIdentity | None = None  # provenance's fixed part, built once the engine started

    @classmethod
    def from_pretrained(cls, path: str | Path, engine: str = "vllm", *, model_name: str | None = None,
                        limits: MediaLimits | None = None, num_frames: int = DEFAULT_NUM_FRAMES,
                        scoring: ScoringRule = "label", **engine_options: Any) -> "Critic":
        """A critic on the checkpoint folder `path`, not started yet (call `await critic.start()`)."""
        return cls(create_engine(engine, path, **engine_options), path, model_name=model_name, limits=limits,
                   num_frames=num_frames, scoring=scoring)

    @property
    def ready(self) -> bool:
        return self.engine.ready

    @property
    def dead(self) -> bool:
        """The engine started and then died (vLLM's worker killed, ...); it does not come back."""
        return bool(getattr(self.engine, "dead", False))

    @property
    def family(self) -> str:
        return self.engine.family.name  # type: ignore[attr-defined]

    async def start(self) -> "Critic":
        await self.engine.start()
        await asyncio.to_thread(self.identity)  # the checkpoint digest reads files: once, here, off the loop
        return self

    def identity(self) -> CriticIdentity:
        """Which critic, rubric, engine and server answer (provenance's fixed part), built on first use."""
        if self._identity is None:
            family = self.engine.family  # type: ignore[attr-defined]
            self._identity = CriticIdentity.build(
                name=self.model_name, family=family.name, model_dir=self.model_dir, engine=self.engine.name,
                dtype=str(getattr(self.engine, "dtype", "unknown")),
                short_clip=getattr(family, "short_clip_rule", "repeat"))
        return self._identity

    def provenance(self, options: ScoreOptions, rule: ScoringRule, sampling: SamplingOptions) -> Provenance:
        """The provenance of one response: the critic's identity plus this request's frames and sampling."""
        return self.identity().provenance(
            num_frames=options.num_frames or self.num_frames, temperature=sampling.temperature, seed=sampling.seed,
            max_tokens=sampling.max_reason_tokens, scoring=rule, rationale=options.rationale)

    async def stop(self) -> None:
        await self.engine.stop()

    async def __aenter__(self) -> "Critic":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_name, family=self.family, engine=self.engine.name,
                         rubric={d.name: d.question.strip() for d in DIMENSIONS}, labels=dict(LABEL_SCORES),
                         num_frames=self.num_frames)

    def decode(self, video: VideoInput, num_frames: int | None = None, limits: MediaLimits | None = None) -> VideoFrames:
        """Blocking decode of any accepted video input to sampled frames."""
        n = num_frames or self.num_frames
        if isinstance(video, VideoFrames):
            return video if video.num_frames == n else frames_from_array(video.frames, n, video.fps)
        if isinstance(video, np.ndarray):
            return frames_from_array(video, n)
        return decode_video(video, n, limits or self.limits)

    async def score(self, video: VideoInput, prompt: str, options: ScoreOptions | None = None, *,
                    limits: MediaLimits | None = None, request_id: str | None = None) -> ScoreResponse:
        options = options or ScoreOptions()
        if not prompt or not prompt.strip():
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
        if self.dead:
            raise EngineDead("the critic engine died; start a new Critic")
        if not self.ready:
            raise EngineNotReady("the critic engine is not ready yet")
        t0 = time.perf_counter()
        frames = await asyncio.to_thread(self.decode, video, options.num_frames, limits)
        t1 = time.perf_counter()
        rule = options.scoring or self.scoring
        if rule == "lift" and not options.rationale:
            raise InvalidRequest("scoring 'lift' reads LiFT's label from the generated answer: it needs rationale "
                                 "true (this deployment's LIFT_SCORING is 'lift')", param="options.rationale")
        sampling = sampling_for(options, rule)
        answers = await self.engine.generate(CriticQuery(frames, prompt, sampling))
        t2 = time.perf_counter()
        dims: dict[str, DimensionScore] = {}
        for answer in answers:
            if not options.rationale:  # reward-only: no reason was generated
                dims[answer.dimension] = dimension_score(answer.label, answer.probabilities, None)
                continue
            if rule == "lift":  # LiFT's rule reads the whole free answer; it is the rationale as LiFT kept it
                dims[answer.dimension] = dimension_score(lift_substring_label(answer.text), answer.probabilities,
                                                         answer.text)
                continue
            try:
                rationale = parse_answer(answer.text).rationale
            except AnswerParseError:  # engines force the format; count it if a model ever slips through
                self.parse_failures += 1
                rationale = answer.text
            dims[answer.dimension] = dimension_score(answer.label, answer.probabilities, rationale)
        r, er = reward(dims)
        seen = self.engine.family.critic_frames(frames)  # type: ignore[attr-defined]  # what the critic was shown
        timings = {"decode": (t1 - t0) * 1000, "engine": (t2 - t1) * 1000, "total": (time.perf_counter() - t0) * 1000}
        return ScoreResponse(
            id=request_id or f"score-{uuid.uuid4().hex[:16]}", model=self.model_name, reward=r, expected_reward=er,
            num_frames=seen.num_frames, scoring=rule, rationale=options.rationale, dimensions=dims, timings_ms={k: round(v, 2) for k, v in timings.items()},
            frames=_thumbnails(seen) if options.return_frames else None,
            provenance=self.provenance(options, rule, sampling),
        )


def sampling_for(options: ScoreOptions, rule: ScoringRule) -> SamplingOptions:
    """The engine's decoding for a request: ours (greedy unless asked, bounded reason), or LiFT's (the whole
    answer sampled at T = 0.2 with up to 512 new tokens, unless the request says otherwise)."""
    if rule == "lift":
        temperature = LIFT_TEMPERATURE if options.temperature is None else options.temperature
        return SamplingOptions(temperature=temperature, seed=options.seed, free_answer=True,
                               max_reason_tokens=options.max_reason_tokens or LIFT_MAX_NEW_TOKENS)
    return SamplingOptions(temperature=options.temperature or 0.0, seed=options.seed, reason=options.rationale,
                           max_reason_tokens=options.max_reason_tokens or DEFAULT_MAX_REASON_TOKENS)


def _thumbnails(video: VideoFrames) -> list[str]:
    from PIL import Image

    out = []
    for frame in video.frames:
        image = Image.fromarray(frame)
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out
