"""Small models shared by the rpb tests."""

import torch

from rpb import VisionTransformer


def tiny(**kw) -> VisionTransformer:
    """A 16x16 image, 4x4 token grid, width 32, 2 blocks, 4 heads ViT; keyword arguments override."""
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    return VisionTransformer(**{**args, **kw})
