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

from service.critics import DEFAULT_CRITIC, load_spec
from service.critics.runner import Decode, run_queries
from service.critics.spec import CriticSpec, HeadChannel, LabelChannel, PixelRule
from service.engines import CriticEngine, CriticQuery, SamplingOptions, create_engine
from service.engines.base import DEFAULT_MAX_REASON_TOKENS
from service.errors import AnswerParseError, EngineDead, EngineNotReady, InvalidRequest
from service.media import FrameSampler, MediaLimits, VideoFrames, decode_video, frames_from_array
from service.protocol import (
    MAX_PROMPT_CHARS,
    DimensionCard,
    DimensionScore,
    ModelCard,
    Provenance,
    ScoreOptions,
    ScoreResponse,
)
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
                 limits: MediaLimits | None = None, num_frames: int | None = None,
                 scoring: ScoringRule = "label", critic: str | CriticSpec = DEFAULT_CRITIC,
                 parse_failure_value: float | None = None) -> None:
        self.spec: CriticSpec = load_spec(critic) if isinstance(critic, str) else critic
        # LiFT's label path (engine.generate) or the runner over the engine's primitives (service.critics.runner)
        self._label_path = all(isinstance(q.channel, LabelChannel) for q in self.spec.queries)
        # a failed parse fails the sample unless the deployment (or the critic's own default) sets a value
        self.parse_failure_value = (self.spec.parse_failure_value if parse_failure_value is None
                                    else parse_failure_value)
        if num_frames is None:  # the critic's count, or at most this many (a rule by fps or stride)
            frames = self.spec.media.frames
            num_frames = frames.count if frames.kind in ("count", "floor") else frames.max_frames
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
                        limits: MediaLimits | None = None, num_frames: int | None = None,
                        scoring: ScoringRule = "label", critic: str | CriticSpec = DEFAULT_CRITIC,
                        critic_variant: str | None = None, parse_failure_value: float | None = None,
                        **engine_options: Any) -> "Critic":
        """A critic on the checkpoint folder `path`, not started yet (call `await critic.start()`). `critic` names
        what the checkpoint is (service.critics: lift, cosmos-reason1, videoscore2, unifiedreward)."""
        spec = load_spec(critic, critic_variant) if isinstance(critic, str) else critic
        if spec.media.present_as == "images" and "limit_mm_per_prompt" not in engine_options and engine == "vllm":
            frames = spec.media.frames
            engine_options["limit_mm_per_prompt"] = {"video": 0, "image": max(frames.count, frames.max_frames
                                                                               if frames.kind != "floor" else 0)}
        heads = [q.channel for q in spec.queries if isinstance(q.channel, HeadChannel)]
        if heads:  # a reward head on hidden states
            from service.critics.head import check_head

            check_head(path, spec)  # the head file beside the checkpoint, before any engine starts
            if engine == "vllm":  # runs as a pooling model: hidden states out, no generation
                from service.engines.vllm_engine import pooling_engine_args

                engine_options["extra_engine_args"] = {**pooling_engine_args(heads[0].positions),
                                                       **(engine_options.get("extra_engine_args") or {})}
            else:
                engine_options.setdefault("positions", heads[0].positions)
        return cls(create_engine(engine, path, **engine_options), path, model_name=model_name, limits=limits,
                   num_frames=num_frames, scoring=scoring, critic=spec, parse_failure_value=parse_failure_value)

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
                short_clip=getattr(family, "short_clip_rule", "repeat"), spec=self.spec)
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
        spec = self.spec
        if self._label_path:
            rubric = {d.name: d.question.strip() for d in DIMENSIONS}
            labels = dict(LABEL_SCORES)
        else:
            rubric = {d: (q.system + "\n\n" if q.system else "") + q.user for q in spec.queries for d in q.dimensions}
            labels = {}
        return ModelCard(id=self.model_name, family=self.family, engine=self.engine.name, critic=spec.name,
                         dimensions={d.name: DimensionCard(description=d.description, scale=d.scale)
                                     for d in spec.dimensions},
                         reward=spec.reward_doc, source=spec.source, rubric=rubric, labels=labels,
                         num_frames=self.num_frames)

    def decode(self, video: VideoInput, num_frames: int | None = None, limits: MediaLimits | None = None) -> VideoFrames:
        """Blocking decode of any accepted video input to the frames the critic sees (its frame and pixel rules)."""
        n = num_frames or self.num_frames
        sampler = self.frame_sampler(num_frames)
        if isinstance(video, VideoFrames):
            already = video.extra.get("sampled_by") == self.spec.media.frames.kind  # the service applied the rule
            if (sampler is None and video.num_frames == n) or (sampler is not None and already):
                out = video
            else:
                out = frames_from_array(video.frames, n, video.fps, sampler=sampler)
        elif isinstance(video, np.ndarray):
            out = frames_from_array(video, n, sampler=sampler)
        else:
            out = decode_video(video, n, limits or self.limits, sampler=sampler)
        if sampler is not None and out.extra.get("sampled_fps") is None:
            # the frames' own rate, as the critic's code tells the model (Qwen2.5-VL's temporal positions)
            out.extra["sampled_fps"] = self.spec.media.frames.sampled_fps(out.total_frames, out.fps, out.num_frames)
        return resized(out, self.spec.media.pixels)

    def frame_sampler(self, num_frames: int | None = None) -> FrameSampler | None:
        """The critic's frame rule as a sampler (None: LiFT's linspace over `num_frames`, the media default);
        a request's num_frames overrides a count."""
        rule = self.spec.media.frames
        if rule.kind == "count":
            return None

        def sampler(total: int, fps: float) -> list[int]:
            return rule.indices(total, fps, num_frames)

        sampler.rule = rule.kind  # type: ignore[attr-defined]
        return sampler

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
        if options.critics and any(name != self.model_name for name in options.critics):
            other = next(name for name in options.critics if name != self.model_name)
            raise InvalidRequest(f"no critic named {other!r} here; this deployment serves {self.model_name!r}",
                                 param="model")
        rule = self.spec.media.frames
        if self.spec.media.present_as == "images" and options.num_frames and options.num_frames > rule.count:
            raise InvalidRequest(f"{self.spec.name} is shown at most {rule.count} frames (as images); "
                                 f"num_frames {options.num_frames} is more", param="options.num_frames")
        t0 = time.perf_counter()
        frames = await asyncio.to_thread(self.decode, video, options.num_frames, limits)
        t1 = time.perf_counter()
        rule = options.scoring or self.scoring
        if rule == "lift" and not options.rationale:
            raise InvalidRequest("scoring 'lift' reads LiFT's label from the generated answer: it needs rationale "
                                 "true (this deployment's LIFT_SCORING is 'lift')", param="options.rationale")
        if not self._label_path:
            return await self._score_with_runner(frames, prompt, options, rule, t0, t1, request_id)
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
        for d in dims.values():  # LiFT's own scale is its label scores
            d.value = d.score
        r, er = reward(dims)
        seen = self.engine.family.critic_frames(frames)  # type: ignore[attr-defined]  # what the critic was shown
        timings = {"decode": (t1 - t0) * 1000, "engine": (t2 - t1) * 1000, "total": (time.perf_counter() - t0) * 1000}
        return ScoreResponse(
            id=request_id or f"score-{uuid.uuid4().hex[:16]}", model=self.model_name, reward=r, expected_reward=er,
            num_frames=seen.num_frames, scoring=rule, rationale=options.rationale, dimensions=dims, timings_ms={k: round(v, 2) for k, v in timings.items()},
            frames=_thumbnails(seen) if options.return_frames else None,
            provenance=self.provenance(options, rule, sampling),
        )


    async def _score_with_runner(self, frames: VideoFrames, prompt: str, options: ScoreOptions, rule: ScoringRule,
                                 t0: float, t1: float, request_id: str | None) -> ScoreResponse:
        """Any critic other than LiFT's label path: its queries through the engine's primitives."""
        if options.scoring == "lift":
            raise InvalidRequest(f"scoring 'lift' is LiFT-Critic's substring rule; this deployment serves "
                                 f"{self.spec.name}", param="options.scoring")
        decode = Decode(temperature=options.temperature, seed=options.seed, max_tokens=options.max_reason_tokens,
                        keep_text=options.rationale)
        try:
            dims = await run_queries(self.spec, self.engine, frames, prompt.strip(), decode, self.parse_failure_value)
        except AnswerParseError:
            self.parse_failures += 1
            raise
        t2 = time.perf_counter()
        scores = {d: s.score for d, s in dims.items()}
        expected = {d: s.expected_score for d, s in dims.items()}
        # a critic whose reward is over its own values (VideoAlign's Overall = VQ + MQ + TA) gets those
        r = self.spec.reward({d: s.value for d, s in dims.items()} if self.spec.reward_over == "value" else scores)
        er = self.spec.reward(expected) if all(v is not None for v in expected.values()) else None  # type: ignore[arg-type]
        timings = {"decode": (t1 - t0) * 1000, "engine": (t2 - t1) * 1000, "total": (time.perf_counter() - t0) * 1000}
        query = self.spec.queries[0]
        sampling = SamplingOptions(
            temperature=query.decoding.temperature if options.temperature is None else options.temperature,
            seed=options.seed, max_reason_tokens=options.max_reason_tokens or query.decoding.max_new_tokens,
            reason=options.rationale)
        return ScoreResponse(
            id=request_id or f"score-{uuid.uuid4().hex[:16]}", model=self.model_name, critic=self.spec.name,
            reward=r, expected_reward=er, num_frames=frames.num_frames, scoring=rule, rationale=options.rationale,
            dimensions=dims, timings_ms={k: round(v, 2) for k, v in timings.items()},
            frames=_thumbnails(frames) if options.return_frames else None,
            provenance=self.identity().provenance(
                num_frames=frames.num_frames, temperature=sampling.temperature, seed=sampling.seed,
                max_tokens=sampling.max_reason_tokens, scoring=rule, rationale=options.rationale))


def resized(video: VideoFrames, rule: PixelRule | None) -> VideoFrames:
    """Frames at the critic's pixel rule (Qwen-VL's smart_resize, bicubic as qwen-vl-utils), so that both engines
    see the same pixels and the checkpoint's processor has nothing left to resize."""
    if rule is None:
        return video
    from PIL import Image

    n, h, w = video.frames.shape[:3]
    new_h, new_w = rule.frame_size(h, w, n)
    if (new_h, new_w) == (h, w):
        return video
    frames = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BICUBIC)) for f in video.frames])
    return VideoFrames(frames=frames, indices=video.indices, total_frames=video.total_frames, fps=video.fps,
                       duration_s=video.duration_s, codec=video.codec, extra=dict(video.extra))


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
