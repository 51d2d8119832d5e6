"""The `vila` critic family: LiFT-Critic's own architecture, VILA-1.5 (`llava_llama`).

VILA-1.5 = a vision tower (SigLIP-so400m-384 for 13B, InternViT-6B-448 for 40B) -> `mlp_downsample` projector
(2x2 neighbouring tokens merged) -> a Llama-family language model (Llama-2-13B, Yi-34B); each frame is one
`<image>` in the prompt. vLLM does not ship it, so this package carries:
  convert.py      VILA folders (+ LiFT's LoRA, merged) -> one checkpoint both engines load
  reference.py    a transformers implementation to hold vLLM to (and the transformers engine's model)
  vllm_model.py   the vLLM model + multimodal processor, registered by plugin.py (a vLLM entry point)
  intern_vit.py   the 40B's InternViT tower: what VILA's source says it takes, name/config translations
  projector.py    mlp_downsample
  prompt.py       chat templates (vicuna_v1 / hermes-2) and VILA's piece-wise tokenization
  family.py       the CriticFamily the engines call
Tiny random VILAs for tests and demos live in `service.tiny_critics`, which this package never imports.
This module stays import-light (no torch): `service.families.detect_family` and the plugin read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Architecture name of a *converted* checkpoint. Deliberately not "VilaForConditionalGeneration" so that a
# future upstream vLLM model of that name can never shadow (or be shadowed by) ours.
ARCHITECTURE = "LiftVilaForConditionalGeneration"
VLLM_MODEL_PATH = "service.families.vila.vllm_model:LiftVilaForConditionalGeneration"

# Keys the converter writes into the converted config.json (a LlavaConfig plus these).
FAMILY_KEY = "lift_family"  # == "vila"
CHAT_TEMPLATE_KEY = "vila_chat_template"  # "vicuna_v1" | "hermes-2"
TEXT_VOCAB_KEY = "vila_text_vocab_size"  # the LM's real vocabulary; rows above it are padding, masked
PROJECTOR_KEY = "mm_projector_type"  # only "mlp_downsample"

IMAGE_TOKEN = "<image>"


def _side(value: Any) -> int:
    # SigLIP's config holds ints, transformers' InternVLVisionConfig [h, w] pairs; VILA's towers are square
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square size {value!r}")
        return int(value[0])
    return int(value)


def vision_image_size(vision_config: Any) -> int:
    """Side in pixels that every frame is resized to (a dict from config.json or a transformers config)."""
    get = vision_config.get if isinstance(vision_config, dict) else lambda k: getattr(vision_config, k)
    return _side(get("image_size"))


def vision_grid(vision_config: Any) -> int:
    """Patches per side of the tower's input: image_size // patch_size."""
    get = vision_config.get if isinstance(vision_config, dict) else lambda k: getattr(vision_config, k)
    return vision_image_size(vision_config) // _side(get("patch_size"))


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    from service.errors import ModelLoadError

    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


def is_converted(config: dict[str, Any]) -> bool:
    """A checkpoint written by `lift convert-vila` (loadable by both engines)."""
    return ARCHITECTURE in (config.get("architectures") or [])


def is_original_layout(model_dir: str | Path) -> bool:
    """VILA's own release layout (config.json + llm/ + vision_tower/ + mm_projector/): needs converting first."""
    d = Path(model_dir)
    return all((d / sub).is_dir() for sub in ("llm", "vision_tower", "mm_projector"))
