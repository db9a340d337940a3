"""rpb: a Vision Transformer with learnable relative position bias (torch only; plotting in rpb.plot)."""

from .inspect import bias_matrices, bias_offset_maps, bias_statistics, favoured_offsets, relative_position_biases
from .layers import (
    Attention,
    RelativePositionBias,
    gen_relative_position_index,
    resize_rel_pos_bias_in_state_dict,
    resize_relative_position_bias_table,
)
from .optim import param_groups_weight_decay
from .vit import Block, VisionTransformer

_PLOT_NAMES = ("plot_bias_offset_map", "render_bias_heatmaps", "save_bias_heatmaps", "visualize_relative_position_bias")

__all__ = [
    "Attention",
    "Block",
    "RelativePositionBias",
    "VisionTransformer",
    "bias_matrices",
    "bias_offset_maps",
    "bias_statistics",
    "favoured_offsets",
    "gen_relative_position_index",
    "param_groups_weight_decay",
    "relative_position_biases",
    "resize_rel_pos_bias_in_state_dict",
    "resize_relative_position_bias_table",
    *_PLOT_NAMES,
]


def __getattr__(name: str):
    # matplotlib is imported only when a plotting function is asked for.
    if name in _PLOT_NAMES:
        from . import plot

        return getattr(plot, name)
    raise AttributeError(f"module 'rpb' has no attribute {name!r}")
