"""The run folder: one training run's files, written and read through `RunDir` by training, sweeps and dashboards.

    <run_dir>/config.yaml          the resolved config (secrets masked); `rpb-train resume=<run_dir>` runs it again
    <run_dir>/metrics.jsonl        one JSON object per finished epoch ({"epoch", "train_loss", "val_accuracy", ...})
    <run_dir>/summary.json         what train() returns, kept current while the run goes on
    <run_dir>/checkpoints/last     the last complete state (a link to state-eNNNN/, see experiments.checkpoint)
    <run_dir>/checkpoints/best.pt  the best model by val accuracy
    <run_dir>/bias/                offset_maps.pt and block_<i>.png heatmaps, written once at the end
    <run_dir>/wandb/               W&B's offline runs (offline-run-<time>-<id>/), one per start of the run
    <run_dir>/wandb_run.json       {"id": W&B run id, "step": last W&B step}: a resumed run continues that W&B run
    <run_dir>/tensorboard/         TensorBoard event files

Only the standard library (and `experiments.result`, which imports nothing else) is imported here: dashboards read
run folders without torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.result import FINAL_STATUSES

__all__ = ["FINAL_STATUSES", "RunDir", "WandbRun", "atomic_write_text"]


TRAIN_STATE = "train_state.json"  # written last into a checkpoint folder: its presence marks the state complete


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """`<run_dir>/checkpoints/last` when it holds a complete state, else None (torch-free: sweeps ask it of every
    trial before anything imports torch)."""
    last = RunDir(run_dir).last_checkpoint
    return last if (last / TRAIN_STATE).is_file() else None


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename.

    `fsync=False` skips the flush to disk (a file rewritten often, where a crash may lose the latest version but
    never leaves a torn one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class WandbRun:
    """The W&B run of a run folder: its id and the last W&B step it logged (-1: none yet)."""

    id: str
    step: int = -1


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder (see the module docstring); paths are properties, reads forgive missing files."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    # --- layout ------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def bias(self) -> Path:
        return self.path / "bias"

    @property
    def offset_maps(self) -> Path:
        return self.bias / "offset_maps.pt"

    def heatmaps(self) -> dict[int, Path]:
        """{block index: bias/block_<i>.png} of the final heatmaps."""
        return {int(p.stem.split("_")[1]): p for p in sorted(self.bias.glob("block_*.png"))}

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    @property
    def wandb_run_file(self) -> Path:
        return self.path / "wandb_run.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    # --- reading and writing -----------------------------------------------------------------------------------
    def write_config(self, config_yaml: str) -> None:
        atomic_write_text(self.config, config_yaml)

    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict ({} when the run wrote none yet)."""
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def write_summary(self, result: Mapping[str, Any]) -> None:
        """summary.json from an `experiments.result.TrainResult` (or its dict)."""
        atomic_write_text(self.summary, json.dumps(dict(result), indent=2))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch records of metrics.jsonl; a torn last line (a run killed while appending) is skipped."""
        if not self.metrics.is_file():
            return []
        return [r for r in _json_lines(self.metrics.read_text().splitlines()) if "epoch" in r]

    def truncate_metrics(self, max_epoch: int) -> None:
        """Keep the records of epochs <= max_epoch (a resumed run rewrites what came after its checkpoint)."""
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines()
        kept = [line for line in lines if (r := _json_lines([line])) and r[0].get("epoch", 0) <= max_epoch]
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))

    def wandb_run(self) -> WandbRun | None:
        """The W&B run this folder's run logs to (None before its first start with W&B on)."""
        if not self.wandb_run_file.is_file():
            return None
        record = json.loads(self.wandb_run_file.read_text())
        return WandbRun(id=str(record["id"]), step=int(record.get("step", -1)))

    def forget_wandb_run(self) -> None:
        """Drop the W&B run record: the next tracker start opens a new W&B run (a fresh run in a used folder)."""
        self.wandb_run_file.unlink(missing_ok=True)

    def write_wandb_run(self, run: WandbRun) -> None:
        # Rewritten after every W&B log call (a few per epoch), flushed to disk each time: after a machine's death the
        # resumed run must start above the last step W&B holds, or W&B drops its first logs as out of order.
        atomic_write_text(self.wandb_run_file, json.dumps({"id": run.id, "step": run.step}))


def _json_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
