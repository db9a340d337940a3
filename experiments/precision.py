"""The Accelerator of one run: mixed precision (no / fp16 with loss scaling / bf16), accumulation, seeding, and the
check that the processes a launcher started form one group.

The precision is the config's trainer.mixed_precision, else the launcher's (`accelerate launch --mixed_precision`
or its config file), else "no" (`experiments.config.resolve_mixed_precision`); it is always passed to the
Accelerator explicitly, and `accelerator.mixed_precision` is what the run trains in.

Gradient accumulation is done by `experiments.engine.train_epoch`, not by Accelerate: the Accelerator is made
with gradient_accumulation_steps=1 and carries K as `accelerator.grad_accum_steps` (see `make_accelerator`).

accelerate 1.x leaves `mixed_precision="fp16"` on a CPU silently in float32 (no autocast, no GradScaler).
PyTorch has fp16 autocast and a GradScaler for the CPU, so we switch accelerate's own machinery on for it:
`prepare` then wraps the forward in `torch.autocast("cpu", torch.float16)`, `backward` scales the loss,
`clip_grad_norm_` unscales and the optimizer step skips on inf/NaN gradients, exactly as on a GPU.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

from experiments.config import resolve_mixed_precision
from experiments.config_errors import ConfigError
from experiments.launch import launcher_name

__all__ = ["check_process_group", "make_accelerator"]

_SAID: set[str] = set()  # precision notes already printed by this process (a sweep makes one Accelerator a trial)


def make_accelerator(
    mixed_precision: str | None = None, *, cpu: bool = False, grad_accum_steps: int = 1, data_seed: int = 0
) -> Accelerator:
    """A fresh Accelerator for one training run (several runs may share a process, e.g. sweep trials).

    Args:
        mixed_precision: "no", "fp16" or "bf16"; None: the launcher's (`resolve_mixed_precision`). When both are
            given and differ, this one wins and the main process says so once.
        cpu: stay on the CPU even where a GPU is present.
        grad_accum_steps: micro-batches per optimizer step (K), kept as `accelerator.grad_accum_steps` for
            `train_epoch`, which weights each micro-batch by its share of the window's samples.
        data_seed: seed of the shuffling sampler; epoch e draws the order of seed + e on every process, which
            makes the order independent of the number of processes and restorable on resume.

    Raises:
        ConfigError: the launcher's precision is not one we train in, or its processes did not form one group
            (`check_process_group`).
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    precision, note = resolve_mixed_precision(mixed_precision)
    # Accelerate keeps global singletons; a new run may change precision or accumulation. The process group
    # (PartialState) is kept when distributed, dropped otherwise so that `cpu` can change between runs.
    distributed = PartialState._shared_state != {} and PartialState().use_distributed
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,  # explicit: ACCELERATE_MIXED_PRECISION is read only when this is None
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
    check_process_group(accelerator, cpu=cpu)
    accelerator.grad_accum_steps = grad_accum_steps  # K, read by experiments.engine.train_epoch
    if precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    if note and accelerator.is_main_process and note not in _SAID:
        _SAID.add(note)
        print(note, file=sys.stderr, flush=True)
    return accelerator


def check_process_group(accelerator: Accelerator | PartialState, *, cpu: bool) -> None:
    """Refuse a launch whose processes did not form one group: each would train the whole run alone (N copies).

    A launcher that starts N > 1 processes says so in WORLD_SIZE (accelerate launch, torchrun); the Accelerator
    joins them into one group only where it can, e.g. not for `--multi_gpu` on a host without a GPU unless told
    to stay on the CPU (trainer.cpu=true: gloo).

    Args:
        accelerator: the Accelerator of the run, or the PartialState a tool starts the group with (sweeps).
        cpu: whether the processes were told to stay on the CPU (trainer.cpu).

    Raises:
        ConfigError: WORLD_SIZE > 1 and the Accelerator's group has another size.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1 or accelerator.num_processes == launched:
        return
    launcher = launcher_name()
    if accelerator.device.type == "cpu" and not cpu:
        why = "there is no GPU here for them to share"
        fix = f"pass trainer.cpu=true to train on {launched} CPU processes, or launch one process"
    else:
        why = f"the group has {accelerator.num_processes}"
        fix = (
            "check the launcher's options (--num_machines, --machine_rank, the GPUs it may use), or launch one process"
        )
    raise ConfigError(f"{launcher} started {launched} processes but they did not form one group ({why}): {fix}.")
