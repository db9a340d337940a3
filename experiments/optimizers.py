"""Optimizer (AdamW / SGD over rpb's weight-decay parameter groups) and the per-step learning-rate schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from rpb import param_groups_weight_decay

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; biases, norms and relative position bias tables get no weight decay."""
    groups = param_groups_weight_decay(model, optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float, cosine: bool):
    """Multiplier of the base lr after `step` optimizer steps: linear warmup from `start_factor` to 1 (like the
    guide's LinearLR), then cosine down to `min_factor` (its CosineAnnealingLR) or constant; clamped at the end."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule_cfg: DictConfig, *, base_lr: float, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """Warmup + cosine (or constant) schedule stepped once per optimizer step."""
    total_steps = max(1, steps_per_epoch * epochs)
    warmup_steps = min(total_steps, round(schedule_cfg.warmup_epochs * steps_per_epoch))
    factor = partial(
        lr_factor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        start_factor=schedule_cfg.warmup_start_factor,
        min_factor=schedule_cfg.min_lr / base_lr,
        cosine=schedule_cfg.name == "warmup_cosine",
    )
    return LambdaLR(optimizer, factor)
