"""Looking inside the learned biases: per-block offset maps, (N, N) matrices and per-head statistics."""

from __future__ import annotations

import re

import torch
from torch import nn

from .layers.relative_position import RelativePositionBias

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def relative_position_biases(model: nn.Module) -> list[tuple[int, RelativePositionBias]]:
    """(block index, bias module) for every RelativePositionBias in `model`, in block order."""
    found = []
    for position, (name, module) in enumerate(
        (n, m) for n, m in model.named_modules() if isinstance(m, RelativePositionBias)
    ):
        match = _BLOCK.search(f".{name}.")
        found.append((int(match.group(1)) if match else position, module))
    return sorted(found, key=lambda item: item[0])


def offset_map(module: RelativePositionBias) -> torch.Tensor:
    """The table as a per-head map over offsets: (nh, 2Wh-1, 2Ww-1) for 2d, (nh, 1, 2W-1) for 1d.

    Row dy + Wh - 1, column dx + Ww - 1 holds the bias for query-minus-key offset (dy, dx).
    """
    table = module.relative_position_bias_table.detach()[: module.num_offsets]  # (offsets, nh)
    if module.bias_type == "2d":
        wh, ww = module.window_size
        return table.T.reshape(module.num_heads, 2 * wh - 1, 2 * ww - 1).clone()
    return table.T.reshape(module.num_heads, 1, -1).clone()


def bias_offset_maps(model: nn.Module) -> dict[int, torch.Tensor]:
    """block -> (num_heads, 2Wh-1, 2Ww-1) offset map (1d: (num_heads, 1, 2W-1)), on CPU in float32."""
    return {i: offset_map(m).float().cpu() for i, m in relative_position_biases(model)}


def bias_matrices(model: nn.Module) -> dict[int, torch.Tensor]:
    """block -> the (num_heads, N, N) bias added to attention logits (N counts the class token)."""
    with torch.no_grad():
        # a float32 CPU copy, detached from the model
        return {i: m().to("cpu", torch.float32, copy=True) for i, m in relative_position_biases(model)}


def bias_statistics(model: nn.Module) -> dict[str, float]:
    """Flat per-head statistics of the offset entries: "block_{i}/head_{h}/{mean,std,min,max}"."""
    stats: dict[str, float] = {}
    for i, maps in bias_offset_maps(model).items():
        flat = maps.flatten(1)  # (nh, offsets)
        std = flat.std(dim=1) if flat.shape[1] > 1 else torch.zeros(flat.shape[0])
        for h in range(flat.shape[0]):
            for key, value in (
                ("mean", flat[h].mean()),
                ("std", std[h]),
                ("min", flat[h].min()),
                ("max", flat[h].max()),
            ):
                stats[f"block_{i}/head_{h}/{key}"] = float(value)
    return stats


def favoured_offsets(offset_map: torch.Tensor, k: int = 3) -> list[list[tuple[int, int, float]]]:
    """Per head, the k offsets (dy, dx, bias) with the largest bias, highest first.

    Args:
        offset_map: (nh, 2Wh-1, 2Ww-1) as from `bias_offset_maps` (1d maps give dy = 0).
    """
    nh, rows, cols = offset_map.shape
    values, flat_idx = offset_map.reshape(nh, -1).topk(min(k, rows * cols), dim=1)
    cy, cx = rows // 2, cols // 2
    return [
        [(int(j) // cols - cy, int(j) % cols - cx, float(v)) for v, j in zip(values[h], flat_idx[h])] for h in range(nh)
    ]
