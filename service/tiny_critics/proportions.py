"""Where a critic's compute goes, counted in multiply-adds from its shape: for the realistic preset to spend its
time where LiFT-Critic-13B does (the vision tower a small share of a question's prefill), not only to have
its token counts.

Counts are forward FLOPs (2 per multiply-add) of the dense layers and attention; norms, activations and the
patch merger are left out (a few % at most).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TowerShape:
    """A ViT: `patches` patch embeddings of `patch_values` numbers each, attention within sequences of `seq`."""

    depth: int
    width: int
    mlp: int
    patches: int
    seq: int
    patch_values: int


@dataclass(frozen=True)
class LanguageShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    gated_mlp: bool = True  # Llama / Qwen2: gate, up and down projections


def tower_flops(t: TowerShape) -> float:
    embed = 2 * t.patches * t.patch_values * t.width
    dense = 2 * t.patches * t.depth * (4 * t.width * t.width + 2 * t.width * t.mlp)
    attention = 4 * t.patches * t.seq * t.width * t.depth  # QK^T and AV over each sequence
    return float(embed + dense + attention)


def prefill_flops(m: LanguageShape, tokens: int) -> float:
    head = m.hidden // m.heads
    proj = 2 * m.hidden * m.hidden + 2 * m.hidden * m.kv_heads * head
    mlp = (3 if m.gated_mlp else 2) * m.hidden * m.intermediate
    dense = 2 * tokens * m.layers * (proj + mlp)
    attention = 2 * tokens * tokens * m.hidden * m.layers  # causal: half of 4 * T^2 * d
    return float(dense + attention)


def vision_share(tower: TowerShape, language: LanguageShape, prompt_tokens: int) -> float:
    """The vision tower's share of one question's compute (the frames once, then the prompt's prefill)."""
    v = tower_flops(tower)
    return v / (v + prefill_flops(language, prompt_tokens))


# LiFT-Critic-13B (VILA-1.5-13B): SigLIP-so400m-patch14-384 (27 layers, width 1152, MLP 4304, 27x27 = 729
# patches per frame, each frame its own sequence) on 8 frames; Llama-2-13B (40 layers, 5120, 13824, 40 heads);
# a question's prompt: 8 x 196 visual tokens (mlp_downsample) + ~200 text tokens.
LIFT_CRITIC_13B_TOWER = TowerShape(depth=27, width=1152, mlp=4304, patches=8 * 729, seq=729, patch_values=3 * 14 * 14)
LIFT_CRITIC_13B_LANGUAGE = LanguageShape(layers=40, hidden=5120, intermediate=13824, heads=40, kv_heads=40)
LIFT_CRITIC_13B_PROMPT_TOKENS = 8 * 196 + 200


def lift_critic_13b_vision_share() -> float:
    return vision_share(LIFT_CRITIC_13B_TOWER, LIFT_CRITIC_13B_LANGUAGE, LIFT_CRITIC_13B_PROMPT_TOKENS)


__all__ = ["LanguageShape", "TowerShape", "lift_critic_13b_vision_share", "prefill_flops", "tower_flops",
           "vision_share"]
