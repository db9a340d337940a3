"""Bias heatmaps for trackers, drawn with numpy: milliseconds per epoch instead of a matplotlib figure per block.

Same conventions as `rpb.plot` (diverging RdBu_r colormap, white = zero bias, symmetric limits shared by the heads
of a block, one panel per head) without axes or colorbar; the labelled figures are still written once at the end
of a run (`rpb.plot.save_bias_heatmaps`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

CMAP = "RdBu_r"


@functools.cache
def _colormap_lut(name: str = CMAP) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colormap (matplotlib imported once, here only)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def heatmap_tiles(maps: np.ndarray, scale: int = 8, gap: int = 4) -> np.ndarray:
    """Heads side by side: `maps` (nh, H, W) -> (H * scale, nh * (W * scale + gap) - gap, 3) uint8 RGB."""
    nh, h, w = maps.shape
    limit = float(np.abs(maps).max()) or 1e-8  # symmetric limits: white is exactly zero bias
    index = np.clip(np.rint((maps / limit + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rgb = _colormap_lut()[index].repeat(scale, axis=1).repeat(scale, axis=2)  # (nh, H*s, W*s, 3)
    width = w * scale
    canvas = np.full((h * scale, nh * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for head in range(nh):
        canvas[:, head * (width + gap) : head * (width + gap) + width] = rgb[head]
    return canvas


def bias_heatmap_images(model: nn.Module, scale: int = 8) -> dict[str, np.ndarray]:
    """`{"bias/block_{i}": (H, W, 3) uint8}` for every block with a relative position bias, ready for `log_images`.

    Offsets are drawn as `rpb.inspect.bias_offset_maps` gives them: (num_heads, 2Wh-1, 2Ww-1), 1d as one row.
    """
    from rpb.inspect import bias_offset_maps

    return {
        f"bias/block_{block}": heatmap_tiles(offset_map.detach().float().cpu().numpy(), scale=scale)
        for block, offset_map in bias_offset_maps(model).items()
    }
