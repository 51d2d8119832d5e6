"""Client side of lift-reward: HTTP clients, batch labeling, reward functions for training loops.

Imports neither torch nor vllm (directly or indirectly): a training job installs only the base package.
From `service` it uses only the pure wire models (`service.protocol`) and error types (`service.errors`).
"""

from __future__ import annotations

from service.errors import LiftError

from .balancing import RetryPolicy
from .client import AsyncRewardClient, RewardClient
from .errors import ServiceUnreachable, UnexpectedResponse
from .rewards import AsyncRewardFunction, RewardFunction, async_reward_fn, reward_fn, reward_value
from .video import ServerPath

__all__ = [
    "AsyncRewardClient",
    "AsyncRewardFunction",
    "LiftError",
    "RetryPolicy",
    "RewardClient",
    "RewardFunction",
    "ServerPath",
    "ServiceUnreachable",
    "UnexpectedResponse",
    "async_reward_fn",
    "reward_fn",
    "reward_value",
]
