"""rpb: a Vision Transformer with learnable relative position bias.

`rpb.options` (the model's allowed values, defaults and rules) is torch-free; everything else imports torch, and
is loaded on first use, so `import rpb.options` stays light (the training config imports it). Plotting is in
`rpb.plot` (matplotlib, loaded when a plotting function is asked for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Attention": ".layers",
    "Block": ".vit",
    "OptionError": ".options",
    "RelativePositionBias": ".layers",
    "VisionTransformer": ".vit",
    "bias_matrices": ".inspect",
    "bias_offset_maps": ".inspect",
    "bias_statistics": ".inspect",
    "favoured_offsets": ".inspect",
    "gen_relative_position_index": ".layers",
    "param_groups_weight_decay": ".optim",
    "relative_position_biases": ".inspect",
    "resize_rel_pos_bias_in_state_dict": ".layers",
    "resize_relative_position_bias_table": ".layers",
    "select_attn_impl": ".layers.attention",
    "plot_bias_offset_map": ".plot",
    "render_bias_heatmaps": ".plot",
    "save_bias_heatmaps": ".plot",
    "visualize_relative_position_bias": ".plot",
    "vision_transformer_from_timm": ".timm_convert",
}

__all__ = [
    "Attention",
    "Block",
    "OptionError",
    "RelativePositionBias",
    "VisionTransformer",
    "bias_matrices",
    "bias_offset_maps",
    "bias_statistics",
    "favoured_offsets",
    "gen_relative_position_index",
    "param_groups_weight_decay",
    "plot_bias_offset_map",
    "relative_position_biases",
    "render_bias_heatmaps",
    "resize_rel_pos_bias_in_state_dict",
    "resize_relative_position_bias_table",
    "save_bias_heatmaps",
    "select_attn_impl",
    "vision_transformer_from_timm",
    "visualize_relative_position_bias",
]

if TYPE_CHECKING:
    from .inspect import bias_matrices, bias_offset_maps, bias_statistics, favoured_offsets, relative_position_biases
    from .layers import (
        Attention,
        RelativePositionBias,
        gen_relative_position_index,
        resize_rel_pos_bias_in_state_dict,
        resize_relative_position_bias_table,
    )
    from .layers.attention import select_attn_impl
    from .optim import param_groups_weight_decay
    from .options import OptionError
    from .plot import plot_bias_offset_map, render_bias_heatmaps, save_bias_heatmaps, visualize_relative_position_bias
    from .timm_convert import vision_transformer_from_timm
    from .vit import Block, VisionTransformer


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rpb' has no attribute {name!r}")
