"""LoRA on CogVideoX's transformer, saved in the format `CogVideoXPipeline.load_lora_weights` reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from service.errors import ModelLoadError

# diffusers' CogVideoX LoRA example targets the attention projections.
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config(rank: int, alpha: float | None = None):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=True,
                      target_modules=TARGET_MODULES)


def add_lora(transformer, rank: int, alpha: float | None = None) -> None:
    transformer.add_adapter(lora_config(rank, alpha))


def has_lora(transformer) -> bool:
    return bool(getattr(transformer, "peft_config", None))


def lora_state_dict(transformer) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def _read(lora_dir: str | Path) -> tuple[dict, dict | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(lora_dir) / WEIGHT_NAME
    if not path.is_file():
        raise ModelLoadError(f"no LoRA weights at {path}", param=str(lora_dir))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    sd = load_file(str(path))
    raw = meta.get("lora_adapter_metadata")
    # diffusers stores the adapter config flat, keys prefixed by component: {"transformer.r": 4, ...}
    cfg = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()} if raw else None
    return sd, cfg


def set_lora_weights(transformer, lora_dir: str | Path) -> None:
    """Load saved LoRA weights into the transformer's existing adapter."""
    from peft import set_peft_model_state_dict

    sd, _ = _read(lora_dir)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}
    result = set_peft_model_state_dict(transformer, sd, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ModelLoadError(f"LoRA at {lora_dir} does not fit this transformer: {unexpected[:3]}", param=str(lora_dir))


def load_lora_into(transformer, lora_dir: str | Path) -> None:
    """Add an adapter shaped like the saved one (rank/alpha from its metadata or weights), then load it."""
    sd, cfg = _read(lora_dir)
    if not has_lora(transformer):
        if cfg and "r" in cfg:
            rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
        else:  # weights from elsewhere without metadata: rank from a lora_A matrix, scale 1
            rank = next(v.shape[0] for k, v in sd.items() if "lora_A" in k)
            alpha = float(rank)
        add_lora(transformer, rank, alpha)
    set_lora_weights(transformer, lora_dir)


def save_lora(transformer, out_dir: str | Path, *, is_main_process: bool = True) -> None:
    """`save_lora_weights` format with the adapter's rank/alpha as metadata, so loading restores the scale."""
    from diffusers import CogVideoXPipeline

    cfg = transformer.peft_config["default"]
    meta = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}
    CogVideoXPipeline.save_lora_weights(out_dir, transformer_lora_layers=lora_state_dict(transformer),
                                        is_main_process=is_main_process, transformer_lora_adapter_metadata=meta)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; the previous one is removed only after the new one is there."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
