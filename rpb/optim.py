"""Optimizer parameter groups: no weight decay on biases, norms and relative position bias tables (Swin-style)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay_list: Iterable[str] = ()
) -> list[dict]:
    """Two groups, "decay" and "no_decay" (key "name"), for torch.optim optimizers.

    No decay for: 1-d parameters (biases, norm weights, tokens), names ending in "bias" or
    "relative_position_bias_table", names in `no_weight_decay_list` and in `model.no_weight_decay()`.
    Frozen parameters (requires_grad=False) are left out.
    """
    skip = set(no_weight_decay_list)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith((".bias", "relative_position_bias_table")) or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
