"""Prometheus metrics of one app, in its own registry (several apps in one process stay apart).

Names are the contract with dashboards, alerts and the autoscaler (see the project's metrics list):
do not rename.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from service.groups import spreads_by_key
from service.protocol import GroupStats, ScoreResponse

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# LiFT's label scores are 0.05 / 0.2 / 0.9: buckets sit on and between them.
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lift_requests", "HTTP requests answered.", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "lift_request_duration_seconds", "Total time per HTTP request.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.decode_duration = Histogram(
            "lift_decode_duration_seconds", "Video decoding time per scored video.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.engine_duration = Histogram(
            "lift_engine_duration_seconds", "Engine (generation) time per scored video.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.inflight = Gauge("lift_inflight_requests", "Scoring calls in the engine.", registry=r)
        self.queued = Gauge("lift_queued_requests", "Scoring calls waiting for an engine slot.", registry=r)
        self.dimension_score = Histogram(
            "lift_dimension_score", "Per-dimension label score.", ["dimension"], buckets=_SCORE_BUCKETS, registry=r
        )
        self.reward = Histogram("lift_reward", "Reward per scored video (LiFT Eq. 2).", buckets=_SCORE_BUCKETS, registry=r)
        self.scored = Counter("lift_scored_videos", "Videos scored, by kind: with reasons or reward-only, and the "
                              "scoring rule.", ["rationale", "scoring"], registry=r)
        self.parse_failures = Counter("lift_parse_failures", "Critic answers that did not parse.", registry=r)
        self.engine_ready = Gauge("lift_engine_ready", "1 when the engine is loaded and serving.", registry=r)
        self.rejected = Counter("lift_rejected_requests", "Requests or batch items answered with an error.", ["reason"], registry=r)
        self.idempotent_replays = Counter(
            "lift_idempotent_replays", "Repeats (same idempotency key, same content) answered with the first result, "
            "not scored again; waited=true: the first was still being scored.", ["route", "waited"], registry=r)
        self.idempotency_conflicts = Counter(
            "lift_idempotency_conflicts", "Requests refused 409: an idempotency key reused with other content.",
            ["route"], registry=r)
        self.idempotency_store_errors = Counter(
            "lift_idempotency_store_errors", "Idempotency store (Redis) unreachable: requests scored without repeat "
            "detection.", registry=r)
        # Counters, not a gauge of the last batch's share: rate(zero_spread) / rate(groups) is the share over any
        # window, summed over replicas, and no batch's share is lost between two scrapes.
        self.groups = Counter("lift_groups", "Batch groups (items sharing a `group`) with at least 2 scored items, "
                              "per number summarised (key: reward, expected_reward, DIM.score, DIM.expected_score).",
                              ["key"], registry=r)
        self.zero_spread_groups = Counter("lift_zero_spread_groups", "Of lift_groups, those whose scored items all "
                                          "have the same value (no GRPO signal), per key.", ["key"], registry=r)

    def set_queue(self, inflight: int, queued: int) -> None:
        self.inflight.set(inflight)
        self.queued.set(queued)

    def observe_score(self, response: ScoreResponse) -> None:
        for name, dim in response.dimensions.items():
            self.dimension_score.labels(dimension=name).observe(dim.score)
        self.reward.observe(response.reward)
        self.scored.labels(rationale=str(response.rationale).lower(), scoring=response.scoring).inc()
        t = response.timings_ms
        decode = _first(t, ("decode", "decode_ms"))
        engine = _first(t, ("engine", "engine_ms", "generate", "generate_ms"))
        if decode is not None:
            self.decode_duration.observe(decode / 1000.0)
        if engine is not None:
            self.engine_duration.observe(engine / 1000.0)

    def observe_groups(self, groups: dict[str, GroupStats]) -> None:
        # A group of one scored sample has zero spread by construction: it says nothing about the critic.
        for stats in groups.values():
            if stats.scored < 2:
                continue
            for key, spread in spreads_by_key(stats).items():
                self.groups.labels(key=key).inc()
                if spread.zero_spread:
                    self.zero_spread_groups.labels(key=key).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _first(d: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if k in d:
            return float(d[k])
    return None
