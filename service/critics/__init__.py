"""Critics as data: one module per critic (what it asks, what it sees, how its answers become numbers).

    lift            LiFT-Critic (VILA-1.5 / Qwen2-VL fine-tunes): three questions, Good/Normal/Bad + reason
    cosmos-reason1  NVIDIA Cosmos-Reason1-7B-Reward: P("No" anomaly) at the answer's first token
    videoscore2     TIGER-Lab VideoScore2: a rationale, then three 1-5 scores, soft scores from digit probabilities
    unifiedreward   CodeGoat24 UnifiedReward 2.0, pointwise video: three 1-5 scores from 16 frames as images
    videoalign      KwaiVGI VideoReward (VideoAlign): a reward head at three reward tokens, VQ/MQ/TA + Overall

`load_spec(name)` gives a critic's `CriticSpec` (service.critics.spec); `service.critics.runner` runs it.
"""

from __future__ import annotations

from importlib import import_module

from service.critics.spec import CriticSpec

CRITICS: dict[str, str] = {
    "lift": "service.critics.lift",
    "cosmos-reason1": "service.critics.cosmos_reason1",
    "videoscore2": "service.critics.videoscore2",
    "unifiedreward": "service.critics.unifiedreward",
    "videoalign": "service.critics.videoalign",
}
CRITIC_NAMES: tuple[str, ...] = tuple(CRITICS)
DEFAULT_CRITIC = "lift"


def load_spec(name: str, variant: str | None = None) -> CriticSpec:
    """A critic's spec; `variant` picks one of its documented alternatives (cosmos-reason1: caption, question)."""
    try:
        module = import_module(CRITICS[name])
    except KeyError:
        raise ValueError(f"unknown critic {name!r}; choose from {', '.join(CRITIC_NAMES)}") from None
    if variant is None:
        return module.SPEC
    variants = getattr(module, "VARIANTS", {})
    if variant not in variants:
        raise ValueError(f"critic {name!r} has no variant {variant!r}"
                         + (f"; it has {', '.join(variants)}" if variants else "; it has none"))
    return variants[variant]


__all__ = ["CRITICS", "CRITIC_NAMES", "DEFAULT_CRITIC", "CriticSpec", "load_spec"]
