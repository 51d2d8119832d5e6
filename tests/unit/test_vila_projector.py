"""VILA-1.5's mlp_downsample: the 2x2 merge's token order, channel order and odd-grid padding."""

from __future__ import annotations

import pytest
import torch

from service.families.vila.projector import (MlpDownsampleProjector, downsample_2x2, num_output_tokens,
                                             projector_shapes)


def explicit_downsample(features: torch.Tensor) -> torch.Tensor:
    """The same operation written as loops over the patch grid (row-major patches r*g + c).

    Output token j*G + i (column-major) = [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)], zero beyond the grid.
    """
    n, length, c = features.shape
    g = int(length**0.5)
    big = g + g % 2
    grid = torch.zeros(n, big, big, c, dtype=features.dtype)
    grid[:, :g, :g] = features.reshape(n, g, g, c)
    half = big // 2
    out = torch.empty(n, half * half, 4 * c, dtype=features.dtype)
    for j in range(half):
        for i in range(half):
            out[:, j * half + i] = torch.cat([grid[:, 2 * i, 2 * j], grid[:, 2 * i, 2 * j + 1],
                                              grid[:, 2 * i + 1, 2 * j], grid[:, 2 * i + 1, 2 * j + 1]], dim=-1)
    return out


@pytest.mark.parametrize("grid", [4, 5, 9, 27])
def test_downsample_matches_explicit_definition(grid: int) -> None:
    x = torch.randn(3, grid * grid, 6)
    got = downsample_2x2(x)
    assert got.shape == (3, num_output_tokens(grid), 24)
    torch.testing.assert_close(got, explicit_downsample(x), rtol=0, atol=0)


def test_siglip_384_gives_196_tokens_per_frame() -> None:
    assert num_output_tokens(384 // 14) == 196
    assert 8 * num_output_tokens(27) == 1568


def test_no_trailing_permute_tokens_are_column_major() -> None:
    # NVILA-era VILA added a final permute (row-major output); LiFT's VILA-1.5 did not. Tell them apart.
    x = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)  # 4x4 grid, value = patch index r*4 + c
    out = downsample_2x2(x)[0]
    assert out[0].tolist() == [0, 1, 4, 5]  # top-left block
    assert out[1].tolist() == [8, 9, 12, 13]  # next token goes DOWN (column-major), not right
    assert out[2].tolist() == [2, 3, 6, 7]


def test_odd_grid_pads_with_zeros_before_layernorm() -> None:
    x = torch.ones(1, 9, 2)  # 3x3 grid -> padded 4x4
    out = downsample_2x2(x)[0]
    assert out[3].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # bottom-right block: only x(2,2) is real


def test_projector_keys_and_shapes_are_vilas() -> None:
    proj = MlpDownsampleProjector(vision_hidden_size=8, text_hidden_size=16)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == projector_shapes(8, 16)
    y = proj(torch.randn(2, 25, 8))
    assert y.shape == (2, 9, 16)
    assert isinstance(proj.layers[3], torch.nn.GELU) and proj.layers[3].approximate == "none"
