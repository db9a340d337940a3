"""A study's best trial from Python: its run folder, its model and config.

best = best_run("runs/sweeps/my-study.journal", "my-study")   # a journal file, an SQLAlchemy URL or a storage
model, cfg = best.load()                                      # experiments.api.load_run of its run folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from omegaconf import DictConfig
from torch import nn

from experiments.api import load_run
from experiments.config_errors import ConfigError
from sweeps.record import TrialAttr
from sweeps.storage import build_storage, is_url

__all__ = ["BestRun", "best_run"]


@dataclass(frozen=True)
class BestRun:
    """The best COMPLETE trial of a study (Optuna's `best_trial`) and the run folder it trained in."""

    study_name: str
    trial: int  # the trial's number
    value: float  # its objective value (the sweep's metric)
    params: dict[str, Any]
    run_dir: Path

    def load(self) -> tuple[nn.Module, DictConfig]:
        """The trial's trained model (eval mode, best checkpoint) and its config (`experiments.api.load_run`)."""
        return load_run(self.run_dir)


def _storage(storage: str | Path | optuna.storages.BaseStorage, study_name: str) -> optuna.storages.BaseStorage:
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    storage = str(storage)
    if not is_url(storage) and not Path(storage).is_file():
        raise ConfigError(f"storage {storage!r} does not exist: give the study's journal file or its database URL.")
    sweep = SimpleNamespace(storage=storage, output_dir=".", study_name=study_name, heartbeat_interval=None)
    return build_storage(sweep, heartbeat=False)  # read only: no heartbeats


def best_run(storage: str | Path | optuna.storages.BaseStorage, study_name: str) -> BestRun:
    """The best complete trial of study `study_name` in `storage` (a journal file, an SQLAlchemy URL or an Optuna
    storage) and its run folder (the trial's user attr `run_dir`).

    Raises:
        ConfigError: no such storage or study, no complete trial yet, or a trial without a run folder.
        SweepConfigError: the storage cannot be opened (sweeps.storage).
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=_storage(storage, study_name))
    except KeyError:
        raise ConfigError(f"there is no study {study_name!r} in {storage}: check the study name.") from None
    try:
        trial = study.best_trial
    except ValueError:
        raise ConfigError(f"study {study_name!r} has no complete trial yet: nothing is best so far.") from None
    run_dir = trial.user_attrs.get(TrialAttr.RUN_DIR)
    if not run_dir:
        raise ConfigError(f"trial {trial.number} of study {study_name!r} records no run_dir: it has no run folder.")
    return BestRun(study_name, trial.number, float(trial.value), dict(trial.params), Path(run_dir))
