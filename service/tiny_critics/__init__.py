"""Tiny random critics built offline (no hub), for tests, demos and benchmarks: one home for every family's.

Same files for the same seed; they exercise every real code path (processor, chat template, both engines) in
seconds on a CPU, with the real releases' tensor names and layouts at tiny sizes:
  qwen2_vl.py   Qwen2-VL, a checkpoint both engines load as is
  vila.py       VILA-1.5 in VILA's release layout (+ LiFT's LoRA layout): 13B-shaped (SigLIP, vicuna_v1) or
                40B-shaped (InternViT, Yi-like LLM, hermes-2); `lift convert-vila` makes it servable
  corpus.py     the text their tokenizers are trained on
Dependencies point one way: this package uses the families (converter, projector), the families never import it.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("qwen2_vl", "vila")
PRESETS = ("tiny", "realistic")


def build_tiny_critic(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0, *, vision: str | None = None,
                      with_lora: bool = False, preset: str = "tiny") -> Path:
    """Build a tiny random critic of `family` into `out_dir`; returns the folder written.

    qwen2_vl: a servable checkpoint. vila: VILA's release layout (`vision` "siglip" = 13B-shaped, the default,
    or "internvit" = 40B-shaped; `with_lora` adds LiFT's LoRA release under lora/), to be converted.
    `preset`: "tiny" (seconds to build and run) or "realistic" (LiFT-Critic-13B's token proportions: 8 frames x
    196 visual tokens, LiFT's questions, on a small LLM; for benchmarks)."""
    if family == "qwen2_vl":
        if vision is not None or with_lora:
            raise ValueError("vision and with_lora apply to the vila family only")
        from service.tiny_critics.qwen2_vl import build_tiny_qwen2_vl

        return build_tiny_qwen2_vl(out_dir, seed=seed, preset=preset)
    if family == "vila":
        from service.tiny_critics.vila import build_tiny_vila

        return build_tiny_vila(out_dir, seed=seed, with_lora=with_lora, vision=vision or "siglip", preset=preset)
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")


def build_tiny_vila_critic(out_dir: str | Path, seed: int = 0, with_lora: bool = True, vision: str = "siglip",
                          preset: str = "tiny") -> Path:
    """A tiny VILA built under `out_dir/vila-src` and converted into `out_dir/critic` (returned): servable."""
    from service.tiny_critics.vila import build_tiny_vila_critic as build

    return build(out_dir, seed=seed, with_lora=with_lora, vision=vision, preset=preset)


__all__ = ["FAMILIES", "PRESETS", "build_tiny_critic", "build_tiny_vila_critic"]
