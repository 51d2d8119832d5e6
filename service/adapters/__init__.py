"""Trainer adapters (issue 19): route sets in the wire formats RL trainers already speak, each a thin layer over
`ScoringService` (the same decoding, limits, admission and batched engine path as /v1/score).

    LIFT_ADAPTERS=flow-factory,cosmos-rl      or      lift serve --adapter flow-factory --adapter cosmos-rl

- `flow-factory`: `POST /compute` (`GET /health` is the service's own), see `service.adapters.flow_factory`;
- `cosmos-rl`: `POST /api/reward/enqueue`, `POST /api/reward/pull`, see `service.adapters.cosmos_rl`;
- `unirl`: `POST /score`, `GET /rewards`, and `GET /health` with its reward roster, see `service.adapters.unirl`.

Which number a trainer gets: LIFT_ADAPTER_REWARD (`service.adapters.selection`).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter


ADAPTER_NAMES = ("flow-factory", "cosmos-rl", "unirl")


class Adapter(Protocol):
    name: str
    router: APIRouter

    async def aclose(self) -> None: ...


def build_adapters(service: Any) -> list[Adapter]:
    """The adapters the service's settings switch on, in the order named."""
    selection = service.reward_selection(service.settings.adapter_reward)
    out: list[Adapter] = []
    for name in service.settings.adapters:
        if name == "flow-factory":
            from service.adapters.flow_factory import FlowFactoryAdapter

            out.append(FlowFactoryAdapter(service, selection))
        elif name == "cosmos-rl":
            from service.adapters.cosmos_rl import CosmosRLAdapter

            out.append(CosmosRLAdapter(service, selection))
        elif name == "unirl":
            from service.adapters.unirl import UniRLAdapter

            out.append(UniRLAdapter(service, selection))
        else:  # settings validate the names; this guards direct construction
            raise ValueError(f"unknown adapter {name!r}; known: {', '.join(ADAPTER_NAMES)}")
    return out
