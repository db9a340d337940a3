"""Layers of the relative-position-bias ViT."""

from .attention import Attention, select_attn_impl, shifted_window_mask, window_partition, window_reverse
from .drop_path import DropPath, drop_path
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pos_embed import sincos_2d_pos_embed
from .relative_position import (
    RelativePositionBias,
    gen_relative_position_index,
    gen_relative_position_index_1d,
    resize_rel_pos_bias_in_state_dict,
    resize_relative_position_bias_table,
)

__all__ = [
    "Attention",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RelativePositionBias",
    "drop_path",
    "gen_relative_position_index",
    "gen_relative_position_index_1d",
    "resize_rel_pos_bias_in_state_dict",
    "resize_relative_position_bias_table",
    "select_attn_impl",
    "shifted_window_mask",
    "sincos_2d_pos_embed",
    "window_partition",
    "window_reverse",
]
