"""Several critics in one deployment (`lift serve --critic lift=DIR --critic videoscore2=DIR`).

A `CriticSet` looks like one `Critic` to the service (ready, dead, start, stop, score, model_card, ...), the first
critic being the default; a request picks others by `model` (`options.critics`), and a request naming several is
answered by each, the video decoded once: the union of the frames every critic's rule picks is decoded, then each
critic gets exactly its own frames (its rule, its count), as if it had decoded the file alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.critic import Critic, VideoInput
from service.errors import EngineDead, EngineNotReady, InvalidRequest
from service.media import MediaLimits, VideoFrames, decode_video, frames_from_array
from service.protocol import ModelCard, ScoreOptions, ScoreResponse


class CriticSet:
    def __init__(self, critics: Sequence[Critic]) -> None:
        if not critics:
            raise ValueError("a CriticSet needs at least one critic")
        self.by_name: dict[str, Critic] = {}
        for critic in critics:
            if critic.model_name in self.by_name:
                raise InvalidRequest(f"two critics are named {critic.model_name!r}; name each once")
            self.by_name[critic.model_name] = critic
        self.default = critics[0]

    # ---- what the service reads of a critic ----
    @property
    def critics(self) -> list[Critic]:
        return list(self.by_name.values())

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self.critics)

    @property
    def dead(self) -> bool:
        """One critic's engine died: the process goes down as with one critic (its supervisor restarts it)."""
        return any(c.dead for c in self.critics)

    @property
    def spec(self) -> Any:
        return self.default.spec

    @property
    def limits(self) -> MediaLimits:
        return self.default.limits

    @property
    def num_frames(self) -> int:
        return self.default.num_frames

    @property
    def parse_failures(self) -> int:
        return sum(c.parse_failures for c in self.critics)

    @property
    def model_name(self) -> str:
        return self.default.model_name

    def frame_sampler(self, num_frames: int | None = None) -> Any:
        return self.default.frame_sampler(num_frames)

    def model_card(self) -> ModelCard:
        return self.default.model_card()

    def model_cards(self) -> list[ModelCard]:
        return [c.model_card() for c in self.critics]

    def names(self) -> list[str]:
        return list(self.by_name)

    def dimensions_of(self, name: str) -> tuple[str, ...]:
        return self.by_name[name].spec.dimension_names

    async def start(self) -> "CriticSet":
        # one after another: engines sizing their memory at start see what the others took
        for critic in self.critics:
            await critic.start()
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.critics), return_exceptions=True)

    # ---- scoring ----
    def chosen(self, options: ScoreOptions | None) -> list[Critic]:
        names = (options.critics if options is not None else None) or [self.default.model_name]
        unknown = [n for n in names if n not in self.by_name]
        if unknown:
            raise InvalidRequest(f"no critic named {unknown[0]!r} here; this deployment serves "
                                 f"{', '.join(self.by_name)}", param="model")
        return [self.by_name[n] for n in dict.fromkeys(names)]

    async def score(self, video: VideoInput, prompt: str, options: ScoreOptions | None = None, *,
                    limits: MediaLimits | None = None, request_id: str | None = None) -> ScoreResponse:
        chosen = self.chosen(options)
        if len(chosen) == 1:
            return await chosen[0].score(video, prompt, options, limits=limits, request_id=request_id)
        for critic in chosen:  # the request's own checks first, before decoding anything
            if critic.dead:
                raise EngineDead(f"the {critic.model_name} critic's engine died")
            if not critic.ready:
                raise EngineNotReady(f"the {critic.model_name} critic is not ready yet")
        t0 = time.perf_counter()
        frames = await asyncio.to_thread(decode_for_all, chosen, video, options, limits)
        decode_ms = (time.perf_counter() - t0) * 1000
        own = [(options or ScoreOptions()).model_copy(update={"critics": [c.model_name]}) for c in chosen]
        results = await asyncio.gather(*(c.score(f, prompt, o, limits=limits, request_id=request_id)
                                         for c, f, o in zip(chosen, frames, own)))
        for r in results:
            r.timings_ms["decode_shared"] = round(decode_ms, 2)
        first = results[0]
        return first.model_copy(update={"by_critic": {c.model_name: r for c, r in zip(chosen, results)}})


def decode_for_all(critics: Sequence[Critic], video: VideoInput, options: ScoreOptions | None,
                   limits: MediaLimits | None) -> list[VideoFrames]:
    """The video decoded once: the union of every critic's frames, then each critic's own, marked as sampled by its
    rule (or with exactly its count for a linspace-count critic) so that its decode keeps them as they are."""
    n_asked = options.num_frames if options is not None else None
    picks: list[list[int]] = []

    def union(total: int, fps: float) -> list[int]:
        for critic in critics:
            sampler = critic.frame_sampler(n_asked)
            picks.append(sampler(total, fps) if sampler is not None
                         else np.linspace(0, total - 1, n_asked or critic.num_frames, dtype=int).tolist())
        return sorted({i for p in picks for i in p})

    if isinstance(video, VideoFrames):
        decoded = frames_from_array(video.frames, fps=video.fps, sampler=union)
    elif isinstance(video, np.ndarray):
        decoded = frames_from_array(video, sampler=union)
    else:
        decoded = decode_video(video, limits=limits or critics[0].limits, sampler=union)
    where = {index: k for k, index in enumerate(decoded.indices)}
    out = []
    for critic, indices in zip(critics, picks):
        frames = VideoFrames(frames=decoded.frames[[where[i] for i in indices]], indices=list(indices),
                             total_frames=decoded.total_frames, fps=decoded.fps, duration_s=decoded.duration_s,
                             codec=decoded.codec)
        if critic.spec.media.frames.kind != "count":
            frames.extra["sampled_by"] = critic.spec.media.frames.kind
        out.append(frames)
    return out
