"""Read a study and its runs: the Optuna storage plus each trial's run folder (no network).

The run folder layout is the contract with training (see `experiments.train`):
``config.yaml``, ``metrics.jsonl`` (one epoch a line), ``summary.json``, ``bias/offset_maps.pt``.
A reader turns one finished trial into a `RunData`; `LocalRunReader` reads run folders,
`dashboards.wandb_reader.WandbRunReader` reads the same fields through the W&B public API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna


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
    """

    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None = None
    heatmap_images: dict[int, Path] = field(default_factory=dict)
    _offset_maps: Callable[[], dict[int, Any] | None] | None = field(default=None, repr=False)

    def offset_maps(self) -> dict[int, Any] | None:
        """Block index -> (num_heads, 2Wh-1, 2Ww-1) tensor of the final model, or None when not saved."""
        return self._offset_maps() if self._offset_maps is not None else None


class RunReader(Protocol):
    """Turns one trial of a study into the data of its run (None when the run left nothing to read)."""

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None: ...


def open_storage(storage: str) -> str | optuna.storages.BaseStorage:
    """Open a study storage given as a SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file.

    Raises:
        ValueError: when a journal file path does not exist.
    """
    if "://" in storage:
        return storage
    path = Path(storage)
    if not path.is_file():
        raise ValueError(
            f"--storage {storage!r} is neither a database URL nor an existing Optuna journal file; "
            "pass the journal file the sweep wrote (runs/sweeps/<study_name>.journal) or a URL such as sqlite:///x.db."
        )
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # An open-lock backend works on every filesystem; reading takes no lock at all.
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study; the study name may be left out when the storage holds exactly one.

    Raises:
        ValueError: when the name is missing and the storage holds several studies (or none), or is unknown.
    """
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"--study is required: the storage holds {len(names)} studies ({', '.join(names)}).")
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(f"--study {study_name!r} is not in the storage; it holds: {', '.join(names) or 'none'}.")
    return optuna.load_study(study_name=study_name, storage=opened)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object a line; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_run_dir(run_dir: Path, name: str | None = None) -> RunData:
    """Read one run folder written by ``experiments.train.train``."""
    import yaml

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    metrics = run_dir / "metrics.jsonl"
    history = [row for row in read_jsonl(metrics) if "epoch" in row] if metrics.is_file() else []
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    maps_path = run_dir / "bias" / "offset_maps.pt"

    def offset_maps() -> dict[int, Any] | None:
        if not maps_path.is_file():
            return None
        import torch

        return {int(k): v for k, v in torch.load(maps_path, map_location="cpu", weights_only=True).items()}

    images = {int(p.stem.split("_")[1]): p for p in sorted((run_dir / "bias").glob("block_*.png"))}
    return RunData(
        name=name or run_dir.name,
        config=config or {},
        history=history,
        summary=summary,
        run_dir=run_dir,
        heatmap_images=images,
        _offset_maps=offset_maps,
    )


class LocalRunReader:
    """Reads each trial's run folder (``user_attrs["run_dir"]``), relative paths against `root`."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else Path.cwd()

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None:
        run_dir = trial.user_attrs.get("run_dir")
        if not run_dir:
            return None
        path = Path(run_dir)
        if not path.is_absolute():
            path = self.root / path
        if not path.is_dir():
            return None
        return read_run_dir(path, name=f"trial-{trial.number}")


def trial_runs(study: optuna.Study, reader: RunReader) -> list[tuple[optuna.trial.FrozenTrial, RunData]]:
    """Every trial that has a readable run (running and waiting trials left out), in trial order."""
    out = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        run = reader.read(trial)
        if run is not None:
            out.append((trial, run))
    return out
