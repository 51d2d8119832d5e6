"""Critic engines: `vllm` (AsyncLLM, the production path) and `transformers` (the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.engines.base import CriticEngine, CriticQuery, DimensionAnswer, SamplingOptions

ENGINES = ("vllm", "transformers")


def create_engine(name: str, model_dir: str | Path, **options: Any) -> CriticEngine:
    from service.families import load_family

    family = load_family(model_dir, options.pop("family", None))
    if name == "vllm":
        from service.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, family, **options)
    if name == "transformers":
        from service.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_dir, family, **options)
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


__all__ = ["CriticEngine", "CriticQuery", "DimensionAnswer", "SamplingOptions", "ENGINES", "create_engine"]
