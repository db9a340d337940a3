"""The Accelerator of one run: mixed precision (no / fp16 with loss scaling / bf16), accumulation, seeding.

Gradient accumulation is done by `experiments.engine.train_epoch`, not by Accelerate: the Accelerator is made
with gradient_accumulation_steps=1 and carries K as `accelerator.grad_accum_steps` (see `make_accelerator`).

accelerate 1.x leaves `mixed_precision="fp16"` on a CPU silently in float32 (no autocast, no GradScaler).
PyTorch has fp16 autocast and a GradScaler for the CPU, so we switch accelerate's own machinery on for it:
`prepare` then wraps the forward in `torch.autocast("cpu", torch.float16)`, `backward` scales the loss,
`clip_grad_norm_` unscales and the optimizer step skips on inf/NaN gradients, exactly as on a GPU.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

__all__ = ["make_accelerator"]


def make_accelerator(
    mixed_precision: str = "no", *, cpu: bool = False, grad_accum_steps: int = 1, data_seed: int = 0
) -> Accelerator:
    """A fresh Accelerator for one training run (several runs may share a process, e.g. sweep trials).

    Args:
        mixed_precision: "no", "fp16" or "bf16".
        cpu: stay on the CPU even where a GPU is present.
        grad_accum_steps: micro-batches per optimizer step (K), kept as `accelerator.grad_accum_steps` for
            `train_epoch`, which weights each micro-batch by its share of the window's samples.
        data_seed: seed of the shuffling sampler; epoch e draws the order of seed + e on every process, which
            makes the order independent of the number of processes and restorable on resume.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    # Accelerate keeps global singletons; a new run may change precision or accumulation. The process group
    # (PartialState) is kept when distributed, dropped otherwise so that `cpu` can change between runs.
    distributed = PartialState._shared_state != {} and PartialState().use_distributed
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        # Accelerate's accumulation stays off (1): its `backward` divides every micro-batch's loss by K, which
        # under-weights a short last window (fewer micro-batches or samples), and under `accumulate` its
        # optimizer skips `step()` until K micro-batches went by. train_epoch weights each micro-batch by its
        # samples / the window's samples (all processes) and steps once per window instead. An explicit plugin
        # also keeps ACCELERATE_GRADIENT_ACCUMULATION_STEPS (`accelerate launch --gradient_accumulation_steps`)
        # from turning the division back on; K comes from the config alone.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
        # We step the scheduler once per optimizer step ourselves (accelerate would step it num_processes times).
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=data_seed),
    )
    accelerator.grad_accum_steps = grad_accum_steps  # K, read by experiments.engine.train_epoch
    if mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator
