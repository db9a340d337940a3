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

BIAS_TYPES = ("2d", "1d")
MODES = ("clip", "local")
NUM_CLASS_TOKEN_ENTRIES = 3  # class-to-token, token-to-class, class-to-class


def to_2tuple(x: int | tuple[int, int] | list[int], name: str = "window_size", minimum: int = 1) -> tuple[int, int]:
    """An int or a pair as a (height, width) tuple of ints >= `minimum` (1: sizes; 0: shifts, as Swin's (3, 0))."""
    if isinstance(x, int):
        pair = (x, x)
    else:
        pair = tuple(int(v) for v in x)
    if len(pair) != 2 or min(pair) < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be an int or a pair of ints {what}, got {x!r}.")
    return pair  # type: ignore[return-value]


def num_relative_distances(window_size: tuple[int, int] | int, bias_type: str = "2d", class_token: bool = False) -> int:
    """Rows of the bias table: (2Wh-1)*(2Ww-1) for 2d, 2W-1 for 1d, plus 3 with a class token."""
    if bias_type == "2d":
        wh, ww = to_2tuple(window_size)
        n = (2 * wh - 1) * (2 * ww - 1)
    else:
        n = 2 * _window_length(window_size) - 1
    return n + (NUM_CLASS_TOKEN_ENTRIES if class_token else 0)


def _window_length(window_size: int | tuple[int, int]) -> int:
    """A 1d window given as an int, or as a (Wh, Ww) pair meaning Wh * Ww sequence positions."""
    if isinstance(window_size, int):
        return window_size
    wh, ww = to_2tuple(window_size)
    return wh * ww


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

    Args:
        num_heads: attention heads (one column of the table each).
        window_size: (Wh, Ww) extent of the table; for bias_type="1d" an int W (or a pair meaning Wh*Ww positions).
        bias_type: "2d" (offsets on the token grid) or "1d" (offsets along the flattened sequence).
        init_std: std of the truncated normal init (cut at +-2 std); 0 gives zeros.
        learnable: False keeps the table fixed (requires_grad=False; still saved in the state_dict).
        class_token: add the three BEiT class-token entries (the class token is token 0).
        grid_size: token grid (Gh, Gw) attention runs on; defaults to the window. For "1d" an int sequence
            length is accepted too. A "2d" bias needs a grid: an int must be a perfect square.
        mode: "clip" (global attention, offsets beyond the window share the edge entries) or "local" (the bias
            covers one window; attention is split into windows by the Attention layer).
    """

    def __init__(
        self,
        num_heads: int,
        window_size: tuple[int, int] | int,
        bias_type: str = "2d",
        init_std: float = 0.02,
        learnable: bool = True,
        class_token: bool = False,
        grid_size: tuple[int, int] | int | None = None,
        mode: str = "clip",
    ) -> None:
        super().__init__()
        if bias_type not in BIAS_TYPES:
            raise ValueError(f"bias_type must be one of {BIAS_TYPES}, got {bias_type!r}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}.")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std!r}.")
        self.num_heads = num_heads
        self.bias_type = bias_type
        self.mode = mode
        self.class_token = class_token
        self.init_std = init_std
        self.learnable = learnable
        if bias_type == "2d":
            self.window_size = to_2tuple(window_size)
            self.grid_size = self._check_2d_grid(grid_size)
            if mode == "local" and class_token:
                raise ValueError(
                    "mode='local' splits tokens into windows and has no place for a class token; "
                    "set class_token=False (global_pool='avg')."
                )
            # In local mode the bias covers one window; the attention layer partitions the grid.
            index_grid = self.window_size if mode == "local" else self.grid_size
            index = gen_relative_position_index(self.window_size, class_token, index_grid)
        else:
            if mode == "local":
                raise ValueError("mode='local' uses 2d windows; set bias_type='2d' or mode='clip'.")
            self.window_size = _window_length(window_size)
            seq_len = self.window_size if grid_size is None else _window_length(grid_size)
            if self.window_size > seq_len:
                raise ValueError(
                    f"1d window_size {self.window_size} is longer than the sequence of {seq_len} tokens; "
                    f"use a window of at most {seq_len}."
                )
            self.grid_size = grid_size if grid_size is None or isinstance(grid_size, int) else to_2tuple(grid_size)
            index = gen_relative_position_index_1d(self.window_size, seq_len, class_token)
        self.num_relative_distances = num_relative_distances(self.window_size, bias_type, class_token)
        self.num_tokens = index.shape[0]
        self.register_buffer("relative_position_index", index, persistent=False)
        table = torch.zeros(self.num_relative_distances, num_heads)
        self.relative_position_bias_table = nn.Parameter(table, requires_grad=learnable)
        self.reset_parameters()

    def _check_2d_grid(self, grid_size: tuple[int, int] | int | None) -> tuple[int, int]:
        if grid_size is None:
            return self.window_size
        if isinstance(grid_size, int):  # a sequence length: must be a square grid
            side = math.isqrt(grid_size)
            if side * side != grid_size:
                raise ValueError(
                    f"a 2d bias needs a square token grid but the sequence has {grid_size} tokens; "
                    "pass grid_size=(Gh, Gw) or use bias_type='1d'."
                )
            grid_size = (side, side)
        grid = to_2tuple(grid_size, "grid_size")
        wh, ww = self.window_size
        if wh > grid[0] or ww > grid[1]:
            raise ValueError(
                f"window_size {self.window_size} is larger than the {grid[0]}x{grid[1]} token grid; "
                f"use a window_size of at most {grid}."
            )
        if self.mode == "local" and (grid[0] % wh or grid[1] % ww):
            raise ValueError(
                f"mode='local' needs the {grid[0]}x{grid[1]} token grid to be divisible by window_size "
                f"{self.window_size}; pick a window that divides the grid or use mode='clip'."
            )
        return grid

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
            f"mode={self.mode!r}, grid_size={self.grid_size}, class_token={self.class_token}, "
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
        old_shape, new_shape = (1, 2 * _window_length(old_window) - 1), (1, 2 * _window_length(new_window) - 1)
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
