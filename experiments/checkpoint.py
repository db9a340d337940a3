"""Checkpoints and run-folder files, written so that a kill at any moment leaves the last good state readable.

<run_dir>/checkpoints/last      -> symlink to state-eNNNN/ (accelerator.save_state + train_state.json); the link
                                   is swapped atomically (os.replace) once the new state is complete
<run_dir>/checkpoints/best.pt   {"model": state_dict, "epoch": int, "metrics": dict}, torch.load(weights_only=True)
<run_dir>/summary.json, config.yaml: written to a temporary file and renamed over the old one
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TrainState",
    "append_jsonl",
    "atomic_write_text",
    "last_checkpoint",
    "load_best",
    "load_last",
    "save_checkpoint",
    "save_last",
    "truncate_jsonl",
]

TRAIN_STATE = "train_state.json"


@dataclass
class TrainState:
    """What the loop needs besides model/optimizer/scheduler/RNG to continue exactly where it stopped."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    best_monitor: float | None = None  # best value of trainer.early_stopping_monitor so far
    bad_epochs: int = 0  # epochs since the monitor last improved
    last_metrics: dict[str, float] = field(default_factory=dict)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: str | Path, max_epoch: int) -> None:
    """Keep the records of epochs <= max_epoch (a resumed run rewrites what came after its checkpoint).

    Lines that are not a JSON object are dropped: a run killed while appending leaves a torn last line.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("epoch", 0) <= max_epoch:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


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


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """`<run_dir>/checkpoints/last` when it holds a complete state, else None."""
    last = Path(run_dir) / "checkpoints" / "last"
    return last if (last / TRAIN_STATE).is_file() else None


def save_last(accelerator: Any, run_dir: str | Path, state: TrainState, config_yaml: str = "") -> Path:
    """`accelerator.save_state` of epoch `state.epoch` (plus train_state.json and the run's config.yaml) into a new
    folder, then point `checkpoints/last` at it.

    Every process takes part (each saves its RNG state); the main process swaps the link and removes the old
    folder. Until the swap, `last` still points at the previous complete state.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    target = ckpt_dir / f"state-e{state.epoch:04d}"
    if accelerator.is_main_process and target.exists():  # a stale folder from a run killed mid-save
        shutil.rmtree(target)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()  # every rank's files (its RNG state) are on disk before the state is published
    if accelerator.is_main_process:
        if config_yaml:
            atomic_write_text(target / "config.yaml", config_yaml)
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
    return TrainState(**json.loads((last / TRAIN_STATE).read_text()))
