"""Checkpoints and run-folder files, written so that a kill at any moment leaves the last good state readable.

<run_dir>/checkpoints/last      -> symlink to state-eNNNN/ (accelerator.save_state + train_state.json); the link
                                   is swapped atomically (os.replace) once the new state is complete
<run_dir>/checkpoints/best.pt   {"model": state_dict, "epoch": int, "metrics": dict}, torch.load(weights_only=True)
<run_dir>/summary.json, config.yaml: written to a temporary file and renamed over the old one
The folder's layout is `experiments.run_dir.RunDir`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.metrics import METRICS, better, metric_direction
from experiments.run_dir import TRAIN_STATE, RunDir, atomic_write_text, last_checkpoint

__all__ = ["TrainState", "last_checkpoint", "load_best", "load_last", "save_checkpoint", "save_last"]



@dataclass
class TrainState:
    """What the loop needs besides model/optimizer/scheduler/RNG to continue exactly where it stopped."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0
    # The best value so far of each metric of experiments.metrics.METRICS (max of an accuracy, min of a loss), the
    # epochs before a resume included; None before the first epoch. A train_state.json without them loads as None.
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_train_accuracy: float | None = None
    best_train_loss: float | None = None
    best_epoch: int = 0  # the epoch of best_val_accuracy (checkpoints/best.pt)
    best_monitor: float | None = None  # best value of trainer.early_stopping_monitor so far
    bad_epochs: int = 0  # epochs since the monitor last improved
    last_metrics: dict[str, float] = field(default_factory=dict)
    # Cost of the run so far, over all its sessions (a resumed run adds to them).
    train_images: int = 0  # images trained on, all processes
    train_s: float = 0.0  # seconds in training passes (no evaluation, no setup)
    wall_s: float = 0.0  # seconds from start to the last epoch's end

    @classmethod
    def read(cls, checkpoint: str | Path) -> TrainState:
        """The loop state saved in a complete checkpoint folder (`last_checkpoint`), without loading the model."""
        return cls(**json.loads((Path(checkpoint) / TRAIN_STATE).read_text()))

    def update_best(self, metrics: Mapping[str, float]) -> list[str]:
        """Keep the best value of each metric of METRICS in `metrics` (ties keep the earlier epoch); returns the
        names of those that improved."""
        improved = []
        for name in METRICS:
            if name in metrics and better(metrics[name], getattr(self, f"best_{name}"), metric_direction(name)):
                setattr(self, f"best_{name}", float(metrics[name]))
                improved.append(name)
        return improved

    def best_metrics(self) -> dict[str, float | None]:
        """{"best_<metric>": value or None} for every metric of METRICS."""
        return {f"best_{name}": getattr(self, f"best_{name}") for name in METRICS}


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    val_metrics: dict[str, float],
    path: str | Path,
    *,
    config: dict[str, Any] | None = None,
) -> Path:
    """The guide's `save_checkpoint`: {"model", "optimizer" (when given), "epoch", "metrics", "config" (when
    given: the resolved run config as plain dicts)}, written atomically.

    Readable with `torch.load(path, weights_only=True)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in val_metrics.items()},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if config is not None:
        payload["config"] = config
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_best(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (weights only: no code runs while loading)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_last(accelerator: Any, run_dir: str | Path, state: TrainState, config_yaml: str = "") -> Path:
    """`accelerator.save_state` of epoch `state.epoch` (plus train_state.json and the run's config.yaml) into a new
    folder, then point `checkpoints/last` at it.

    Every process takes part (each saves its RNG state); the main process swaps the link and removes the old
    folder. Until the swap, `last` still points at the previous complete state.
    """
    ckpt_dir = RunDir(run_dir).checkpoints
    target = ckpt_dir / f"state-e{state.epoch:04d}"
    if accelerator.is_main_process and target.exists():  # a stale folder from a run killed mid-save
        shutil.rmtree(target)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()  # every rank's files (its RNG state) are on disk before the state is published
    if accelerator.is_main_process:
        if config_yaml:
            RunDir(target).write_config(config_yaml)  # the state folder is self-describing
        atomic_write_text(target / TRAIN_STATE, json.dumps(asdict(state), indent=2))  # last: marks it complete
        last = ckpt_dir / "last"
        previous = last.resolve() if last.is_symlink() else None
        if last.is_dir() and not last.is_symlink():  # a copied run folder holds `last` as a real folder
            previous = ckpt_dir / f".last-copy-e{state.epoch:04d}"
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(last, previous)
        tmp_link = ckpt_dir / ".last.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, last)  # atomic: `last` is the old or the new state, never half of one
        if previous is not None and previous.resolve() != target.resolve() and previous.exists():
            shutil.rmtree(previous)
    accelerator.wait_for_everyone()
    return target


def load_last(accelerator: Any, run_dir: str | Path) -> TrainState:
    """Restore model, optimizer, scheduler, scaler and RNG states from `checkpoints/last`; return the loop state."""
    last = last_checkpoint(run_dir)
    if last is None:
        from experiments.config_errors import ConfigError

        raise ConfigError(
            f"resume={str(run_dir)!r} has no complete checkpoint (checkpoints/last/{TRAIN_STATE}): "
            "it stopped before its first epoch ended; start a new run instead."
        )
    accelerator.load_state(str(last.resolve()))
    state = TrainState.read(last)
    if None in state.best_metrics().values():  # saved before train_state.json kept every best_<metric>
        _best_from_records(state, RunDir(run_dir).read_metrics())
    return state


def _best_from_records(state: TrainState, records: list[dict[str, Any]]) -> None:
    """Fill the best_<metric> that `state` lacks from the run's epoch records up to its epoch (metrics.jsonl)."""
    replay = TrainState()
    for record in records:
        if record["epoch"] <= state.epoch:
            replay.update_best(record)
    for key, value in replay.best_metrics().items():
        if getattr(state, key) is None:
            setattr(state, key, value)
