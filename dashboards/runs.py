"""One run as the dashboards read it: `RunData`, the `RunReader` interface, and the reader of run folders.

The run folder layout is the contract with training (`experiments.run_dir.RunDir`): ``config.yaml``,
``metrics.jsonl`` (one epoch a line), ``summary.json``, ``bias/offset_maps.pt``. `LocalRunReader` reads run
folders; `dashboards.wandb_reader.WandbRunReader` reads the same fields through the W&B public API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import yaml

from experiments.run_dir import RunDir
from sweeps.record import TrialAttr


@dataclass
class RunData:
    """What the report needs from one run, whatever it was read from.

    Args:
        name: a short label (``trial-3``).
        config: the resolved, nested training config.
        history: the epoch metrics dicts, in epoch order.
        summary: the dict ``train()`` returned.
        run_dir: the local run folder, when there is one.
        heatmap_images: pre-rendered heatmap PNGs by block (the W&B reader's fallback for offset maps).
        study_wall_s: seconds from its trial's start to its end as the study recorded them (set by
            `dashboards.load.results`): the wall time of a run whose summary has no ``wall_s``.
    """

    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None = None
    heatmap_images: dict[int, Path] = field(default_factory=dict)
    study_wall_s: float | None = None
    _offset_maps: Callable[[], dict[int, Any] | None] | None = field(default=None, repr=False)

    def offset_maps(self) -> dict[int, Any] | None:
        """Block index -> (num_heads, 2Wh-1, 2Ww-1) tensor of the final model, or None when not saved."""
        return self._offset_maps() if self._offset_maps is not None else None


class RunReader(Protocol):
    """Turns one trial of a study into the data of its run (None when the run left nothing to read)."""

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None: ...


def read_run_dir(run_dir: Path, name: str | None = None) -> RunData:
    """Read one run folder written by ``experiments.train.train``."""
    run = RunDir(run_dir)
    run_dir = run.path
    config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    maps_path = run.offset_maps

    def offset_maps() -> dict[int, Any] | None:
        if not maps_path.is_file():
            return None
        import torch  # deferred on purpose: only a page that draws bias maps pays for torch

        return {int(k): v for k, v in torch.load(maps_path, map_location="cpu", weights_only=True).items()}

    return RunData(
        name=name or run_dir.name,
        config=config or {},
        history=run.read_metrics(),
        summary=run.read_summary(),
        run_dir=run_dir,
        heatmap_images=run.heatmaps(),
        _offset_maps=offset_maps,
    )


class LocalRunReader:
    """Reads each trial's run folder (``user_attrs["run_dir"]``), relative paths against `root`."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else Path.cwd()

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None:
        run_dir = trial.user_attrs.get(TrialAttr.RUN_DIR)
        if not run_dir:
            return None
        path = Path(run_dir)
        if not path.is_absolute():
            path = self.root / path
        if not path.is_dir():
            return None
        return read_run_dir(path, name=f"trial-{trial.number}")
