"""Relative position bias (Swin / BEiT style): index functions, the bias module, table resizing.

The table holds one learnable scalar per (relative offset, head). A fixed integer index maps every
(query, key) pair of tokens to its offset's row, so the (num_heads, N, N) bias is one gather away.
Offsets are query minus key: for 2d, idx = (dy + Wh - 1) * (2 * Ww - 1) + (dx + Ww - 1).
With a class token (BEiT scheme) three extra rows follow the offset rows:
class-to-token (row -3), token-to-class (row -2) and class-to-class (row -1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..options import (
    BIAS_TYPE,
    BIAS_TYPES,
    INIT_STD,
    MODES,
    NUM_CLASS_TOKEN_ENTRIES,
    OptionError,
    check_choice,
    check_init_std,
    check_window,
    num_relative_distances,
    to_2tuple,
    window_length,
)

__all__ = [
    "RelativePositionBias",
    "gen_relative_position_index",
    "gen_relative_position_index_1d",
    "num_relative_distances",
    "resize_rel_pos_bias_in_state_dict",
    "resize_relative_position_bias_table",
]


def _add_class_token(index: torch.Tensor, num_offsets: int) -> torch.Tensor:
    """Pad an (N, N) token index to (N+1, N+1) with the BEiT class-token rows (class token first)."""
    n = index.shape[0]
    out = index.new_zeros(n + 1, n + 1)
    out[1:, 1:] = index
    out[0, :] = num_offsets  # class (query) to token (key)
    out[:, 0] = num_offsets + 1  # token to class
    out[0, 0] = num_offsets + 2  # class to class
    return out


def gen_relative_position_index(
    window_size: tuple[int, int] | int,
    class_token: bool = False,
    grid_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Index (N, N) (or (N+1, N+1) with a class token) into a 2d bias table of `window_size`.

    Args:
        window_size: (Wh, Ww) of the table; offsets span [-(Wh-1), Wh-1] x [-(Ww-1), Ww-1].
        class_token: prepend the BEiT class-token row and column.
        grid_size: token grid the index covers (defaults to the window). On a larger grid, offsets beyond
            the window are clipped to the table's edge entries.
    """
    wh, ww = to_2tuple(window_size)
    gh, gw = to_2tuple(grid_size, "grid_size") if grid_size is not None else (wh, ww)
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N), query minus key
    dy = rel[0].clamp(-(wh - 1), wh - 1) + wh - 1
    dx = rel[1].clamp(-(ww - 1), ww - 1) + ww - 1
    index = dy * (2 * ww - 1) + dx
    if class_token:
        index = _add_class_token(index, (2 * wh - 1) * (2 * ww - 1))
    return index


def gen_relative_position_index_1d(window: int, seq_len: int | None = None, class_token: bool = False) -> torch.Tensor:
    """Index (L, L) into a 1d table of 2W-1 offsets over sequence positions (clipped beyond the window)."""
    seq_len = window if seq_len is None else seq_len
    pos = torch.arange(seq_len)
    index = (pos[:, None] - pos[None, :]).clamp(-(window - 1), window - 1) + window - 1
    if class_token:
        index = _add_class_token(index, 2 * window - 1)
    return index


class RelativePositionBias(nn.Module):
    """A learnable (num_relative_distances, num_heads) table and the index that expands it to (num_heads, N, N).

    The module knows its table and its index only: which tokens attend to which (global attention, Swin windows,
    shifted windows) is the attention layer's business (`rpb.layers.Attention`).

    Args:
        num_heads: attention heads (one column of the table each).
        window_size: (Wh, Ww) extent of the table; for bias_type="1d" an int W (or a pair meaning Wh*Ww positions).
        bias_type: "2d" (offsets on the token grid) or "1d" (offsets along the flattened sequence).
        init_std: std of the truncated normal init (cut at +-2 std); 0 gives zeros.
        learnable: False keeps the table fixed (requires_grad=False; still saved in the state_dict).
        class_token: add the three BEiT class-token entries (the class token is token 0).
        grid_size: the token grid (Gh, Gw) the index covers; None: one window (what local attention needs). On a
            grid larger than the window, offsets beyond it share the table's edge entries ("clip"). For "1d" an
            int sequence length is accepted too; for "2d" an int must be a perfect square.
        mode: kept for callers that predate windowing in the attention layer: "local" is grid_size=None after
            checking that the windows tile `grid_size`. Prefer grid_size=None.

    Raises:
        OptionError (a ValueError): an option that breaks a rule of `rpb.options`.
    """

    def __init__(
        self,
        num_heads: int,
        window_size: tuple[int, int] | int,
        bias_type: str = BIAS_TYPE,
        init_std: float = INIT_STD,
        learnable: bool = True,
        class_token: bool = False,
        grid_size: tuple[int, int] | int | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("bias_type", bias_type, BIAS_TYPES)
        if not isinstance(num_heads, int) or num_heads < 1:
            raise OptionError("<num_heads=> must be a positive int.", "num_heads", num_heads=num_heads)
        self.num_heads = num_heads
        self.bias_type = bias_type
        self.class_token = class_token
        self.init_std = check_init_std(init_std, "init_std")
        self.learnable = learnable
        if mode is not None:
            check_choice("mode", mode, MODES)
        if mode == "local":  # the windows must tile the grid; the index covers one window
            check_window(window_size, self._grid(grid_size, window_size), bias_type=bias_type, window_mode="local",
                         class_token=class_token)  # fmt: skip
            grid_size = None
        if bias_type == "2d":
            self.window_size = to_2tuple(window_size)
            self.grid_size = self._grid(grid_size, self.window_size)
            check_window(self.window_size, self.grid_size, bias_type="2d")
            index = gen_relative_position_index(self.window_size, class_token, self.grid_size)
        else:
            self.window_size = window_length(window_size)
            seq_len = self.window_size if grid_size is None else window_length(grid_size)
            check_window(self.window_size, (1, seq_len), bias_type="1d")
            self.grid_size = grid_size if grid_size is None or isinstance(grid_size, int) else to_2tuple(grid_size)
            index = gen_relative_position_index_1d(self.window_size, seq_len, class_token)
        self.num_relative_distances = num_relative_distances(self.window_size, bias_type, class_token)
        self.num_tokens = index.shape[0]
        self.register_buffer("relative_position_index", index, persistent=False)
        table = torch.zeros(self.num_relative_distances, num_heads)
        self.relative_position_bias_table = nn.Parameter(table, requires_grad=learnable)
        self.reset_parameters()

    @staticmethod
    def _grid(grid_size: tuple[int, int] | int | None, window_size: tuple[int, int] | int) -> tuple[int, int]:
        """The (Gh, Gw) token grid; None means one window, an int a square grid of that many tokens."""
        if grid_size is None:
            return to_2tuple(window_size)
        if isinstance(grid_size, int):
            side = math.isqrt(grid_size)
            if side * side != grid_size:
                raise OptionError(
                    f"a 2d bias needs a square token grid but the sequence has {grid_size} tokens; "
                    "pass grid_size=(Gh, Gw) or use <bias_type='1d'>.",
                    "grid_size",
                )
            return (side, side)
        return to_2tuple(grid_size, "grid_size")

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init_std > 0:
                std = self.init_std  # truncated at two standard deviations
                nn.init.trunc_normal_(self.relative_position_bias_table, std=std, a=-2 * std, b=2 * std)
            else:
                self.relative_position_bias_table.zero_()

    @property
    def num_offsets(self) -> int:
        """Rows of the table that hold offsets (the class-token entries excluded)."""
        return self.num_relative_distances - (NUM_CLASS_TOKEN_ENTRIES if self.class_token else 0)

    def forward(self) -> torch.Tensor:
        """The bias (num_heads, N, N) to add to attention logits; N counts the class token.

        Gathered from the table on every call, never cached: a cache keyed on the table's version counter served a
        stale bias after writes it cannot see (through `.data`, an EMA copy into `.data`). The gather is
        num_heads * N * N reads per block and forward.
        """
        n = self.num_tokens
        table = self.relative_position_bias_table
        return table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, window_size={self.window_size}, bias_type={self.bias_type!r}, "
            f"grid_size={self.grid_size}, class_token={self.class_token}, "
            f"learnable={self.learnable}"
        )


def resize_relative_position_bias_table(
    table: torch.Tensor,
    old_window: tuple[int, int] | int,
    new_window: tuple[int, int] | int,
    num_extra: int = 0,
    bias_type: str = "2d",
) -> torch.Tensor:
    """Bicubic resize of a bias table to another window size; the `num_extra` trailing rows are carried over.

    The offset grid (2Wh-1, 2Ww-1) is interpolated with align_corners=True so the zero offset and the edge
    offsets map onto each other; resizing to the same window returns an unchanged copy.
    """
    if bias_type == "2d":
        old, new = to_2tuple(old_window), to_2tuple(new_window)
        old_shape, new_shape = (2 * old[0] - 1, 2 * old[1] - 1), (2 * new[0] - 1, 2 * new[1] - 1)
    else:
        old_shape, new_shape = (1, 2 * window_length(old_window) - 1), (1, 2 * window_length(new_window) - 1)
    offsets, extra = (table[:-num_extra], table[-num_extra:]) if num_extra else (table, table[:0])
    num_heads = table.shape[-1]
    if offsets.shape[0] != old_shape[0] * old_shape[1]:
        raise ValueError(
            f"table has {offsets.shape[0]} offset rows but old window {old_window} needs "
            f"{old_shape[0] * old_shape[1]}; pass the window size the table was trained with."
        )
    if old_shape == new_shape:
        return table.clone()
    grid = offsets.T.reshape(1, num_heads, *old_shape).float()
    resized = F.interpolate(grid, size=new_shape, mode="bicubic", align_corners=True)
    resized = resized.reshape(num_heads, -1).T.to(table.dtype)
    return torch.cat([resized, extra], dim=0)


def _old_window_from_rows(rows: int, bias_type: str) -> tuple[int, int] | int:
    """Guess the window a table was trained with from its offset rows (square windows for 2d)."""
    if bias_type == "1d":
        return (rows + 1) // 2
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise ValueError(
            f"cannot infer a square window from a 2d table with {rows} offset rows; "
            "pass old_window_size=(Wh, Ww) to resize_rel_pos_bias_in_state_dict."
        )
    return ((side + 1) // 2, (side + 1) // 2)


def resize_rel_pos_bias_in_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    old_window_size: tuple[int, int] | int | None = None,
) -> dict[str, torch.Tensor]:
    """Adapt a checkpoint's bias tables to `model`'s window sizes so `model.load_state_dict` accepts it.

    Tables whose shape already matches are kept; others are resized bicubically (class-token entries carried
    over). The old window is `old_window_size` or, if None, inferred from the table (square windows).
    """
    out = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, RelativePositionBias):
            continue
        key = f"{name}.relative_position_bias_table" if name else "relative_position_bias_table"
        if key not in out:
            continue
        table = out[key]
        target = module.relative_position_bias_table
        if table.shape == target.shape:
            continue
        if table.shape[1] != target.shape[1]:
            raise ValueError(
                f"{key} has {table.shape[1]} heads but the model has {target.shape[1]}; use num_heads={table.shape[1]}."
            )
        extra = NUM_CLASS_TOKEN_ENTRIES if module.class_token else 0
        old = old_window_size or _old_window_from_rows(table.shape[0] - extra, module.bias_type)
        out[key] = resize_relative_position_bias_table(table, old, module.window_size, extra, module.bias_type)
    return out
