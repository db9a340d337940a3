"""Image to patch tokens with one strided convolution."""

from __future__ import annotations

import torch
from torch import nn

from ..options import to_2tuple


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, Gh*Gw, dim) with a patch_size-strided conv."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size, "img_size")
        if patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}.")
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size={patch_size}; "
                "pick a patch_size that divides the image size."
            )
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.img_size:
            raise ValueError(f"expected images of size {self.img_size}, got {tuple(x.shape[-2:])}; resize the input.")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)
