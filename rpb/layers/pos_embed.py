"""Absolute position embeddings: learned (ViT) or fixed 2d sin-cos (MAE)."""

from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, embed_dim): [sin(p * w_i), cos(p * w_i)] with w_i = 1 / 10000^(i / (embed_dim / 2))."""
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (P, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: tuple[int, int], class_token: bool = False) -> torch.Tensor:
    """MAE's fixed 2d sin-cos embedding, (1, [1 +] Gh*Gw, embed_dim) in float32, tokens in row-major order.

    The first half of the channels encodes the column (x), the second half the row (y), as MAE's
    `get_2d_sincos_pos_embed`; a class token gets zeros. `embed_dim` must be divisible by 4.
    """
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, x.flatten()), sincos_1d(embed_dim // 2, y.flatten())], dim=1)
    if class_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)
    return emb.float().unsqueeze(0)
