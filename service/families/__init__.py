"""Critic families: how each architecture turns a video and a question into model input."""

from __future__ import annotations

import json
from pathlib import Path

from service.errors import ModelLoadError
from service.families.base import CriticFamily, PromptInputs


def detect_family(model_dir: str | Path) -> str:
    """The family of a checkpoint folder, from its config.json."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{model_dir} has no config.json: not a critic checkpoint")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON: {exc}") from None
    archs = config.get("architectures") or []
    from service.families.qwen2_vl import ARCHITECTURES as QWEN_ARCHS

    if any(a in QWEN_ARCHS for a in archs):
        return "qwen2_vl"
    if config.get("lift_family") == "vila" or any("Vila" in a or "Llava" in a for a in archs):
        return "vila"
    raise ModelLoadError(f"unsupported critic architecture {archs or config.get('model_type')!r} in {model_dir}")


def load_family(model_dir: str | Path, name: str | None = None) -> CriticFamily:
    name = name or detect_family(model_dir)
    if name == "qwen2_vl":
        from service.families.qwen2_vl import Qwen2VLFamily

        return Qwen2VLFamily(model_dir)
    if name == "vila":
        from service.families.vila.family import VilaFamily  # written with the VILA-1.5 support

        return VilaFamily(model_dir)
    raise ModelLoadError(f"unknown critic family {name!r}")


__all__ = ["CriticFamily", "PromptInputs", "detect_family", "load_family"]
