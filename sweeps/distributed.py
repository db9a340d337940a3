"""K processes per trial (`accelerate launch` / `torchrun`): rank 0 owns the study, every rank trains.

All ranks run the sweep command. Rank 0 runs the Optuna loop; before each trial it broadcasts the trial's
`TrialSpec` (params, run dir, W&B id), and a final `None` when the study is done. The other ranks loop on those
messages and train the same trial with no callback: `train()` broadcasts rank 0's prune decision, so every rank
stops at the same epoch, and only rank 0 ever touches the storage.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict

from omegaconf import DictConfig

from experiments.config import READS_CONFIG_ONLY
from sweeps.objective import TrainFn, TrialConfigs, TrialSpec, run_trial


def world_size() -> int:
    """Processes of this launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_process_group(base: DictConfig) -> None:
    """Start the process group the way train()'s Accelerator will (it then reuses it), so specs can be sent first."""
    from accelerate import PartialState

    from experiments.precision import check_process_group

    cpu = bool(base.trainer.cpu)
    check_process_group(PartialState(cpu=cpu), cpu=cpu)  # a ConfigError unless the launched processes form one group


def broadcast_spec(spec: TrialSpec | None) -> TrialSpec | None:
    """Rank 0 sends `spec` (None: the study is done); every other rank returns what rank 0 sent."""
    from accelerate.utils import broadcast_object_list

    payload = [asdict(spec) if spec is not None else None]
    broadcast_object_list(payload, from_process=0)
    return None if payload[0] is None else TrialSpec(**payload[0])


def follow(base: DictConfig, sweep: DictConfig, train_fn: TrainFn) -> int:
    """The loop of a non-main rank: train every trial rank 0 announces; returns how many it trained."""
    trained, configs = 0, TrialConfigs(base, sweep, reuse=getattr(train_fn, READS_CONFIG_ONLY, False))
    while (spec := broadcast_spec(None)) is not None:
        try:
            run_trial(configs, spec, train_fn, on_epoch_end=None)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # rank 0 records the failure; keep listening for the next trial
            print(f"[rank {rank()}] trial {spec.number} failed: {type(e).__name__}: {e}", file=sys.stderr)
        trained += 1
    return trained


def shutdown(barrier: bool = True) -> None:
    """Leave the process group cleanly (gloo may abort a rank at interpreter exit otherwise). `barrier=False` after
    Ctrl-C: the ranks stopped at different points, and waiting for each other could wait forever."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()
