"""VILA-1.5's `mlp_downsample` projector, in plain torch (shared by the reference and the vLLM model).

mlp_downsample = DownSampleBlock (2x2 neighbouring tokens concatenated) -> LayerNorm(4C) -> Linear(4C, D)
-> GELU -> Linear(D, D). The checkpoint keys are those of VILA's `nn.Sequential`: layers.1 (LayerNorm),
layers.2 and layers.4 (Linear); layers.0 (the block) and layers.3 (GELU) have no weights.

The DownSampleBlock here is the one in the VILA-1.5 code LiFT trained with: NO trailing permute (newer
NVILA-era VILA added one), so tokens leave in column-major order. Using the newer block changes the logits.
"""

from __future__ import annotations

import torch
from torch import nn


def flat_square(x: torch.Tensor) -> torch.Tensor:
    """VILA-1.5's `DownSampleBlock.flat_square`: (n, w, h, c) -> (n, ceil(h/2), ceil(w/2), 4c).

    Odd grids get a zero row/column (SigLIP-384/14's 27x27 -> 28x28 -> 14x14 = 196 tokens). The padding is
    applied before the LayerNorm, so a padded token is not zero after it.
    """
    n, w, h, c = x.shape
    if w % 2 == 1:
        x = torch.cat([x, x.new_zeros(n, 1, h, c)], dim=1)
        w += 1
    if h % 2 == 1:
        x = torch.cat([x, x.new_zeros(n, w, 1, c)], dim=2)
        h += 1
    x = x.reshape(n, w, h // 2, 2 * c)  # neighbours along h -> channels
    x = x.permute(0, 2, 1, 3).contiguous()  # (n, h/2, w, 2c)
    return x.reshape(n, h // 2, w // 2, 4 * c)  # neighbours along w -> channels


def downsample_2x2(features: torch.Tensor) -> torch.Tensor:
    """(n, g*g, C) vision tokens -> (n, ceil(g/2)^2, 4C), as VILA-1.5's DownSampleBlock.forward."""
    n, length, c = features.shape
    g = int(round(length**0.5))
    if g * g != length:
        raise ValueError(f"mlp_downsample needs a square token grid, got {length} tokens")
    x = flat_square(features.reshape(n, g, g, c))
    return x.reshape(n, -1, 4 * c)


def num_output_tokens(grid: int) -> int:
    """Tokens per image after the 2x2 merge of a `grid` x `grid` patch grid."""
    return ((grid + 1) // 2) ** 2


class DownSampleBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample_2x2(x)


class MlpDownsampleProjector(nn.Module):
    """Same module tree (and so the same state-dict keys) as VILA's `MultimodalProjector.layers`."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            DownSampleBlock(),
            nn.LayerNorm(4 * vision_hidden_size),  # torch default eps 1e-5, as VILA
            nn.Linear(4 * vision_hidden_size, text_hidden_size),
            nn.GELU(),  # exact (erf) GELU, as VILA's nn.GELU()
            nn.Linear(text_hidden_size, text_hidden_size),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def projector_shapes(vision_hidden_size: int, text_hidden_size: int) -> dict[str, tuple[int, ...]]:
    """Expected tensor shapes of an mlp_downsample projector (the converter checks a checkpoint against them)."""
    c4 = 4 * vision_hidden_size
    return {
        "layers.1.weight": (c4,), "layers.1.bias": (c4,),
        "layers.2.weight": (text_hidden_size, c4), "layers.2.bias": (text_hidden_size,),
        "layers.4.weight": (text_hidden_size, text_hidden_size), "layers.4.bias": (text_hidden_size,),
    }


__all__ = ["DownSampleBlock", "MlpDownsampleProjector", "downsample_2x2", "flat_square", "num_output_tokens",
           "projector_shapes"]
