"""best_run: a study's best complete trial and its run folder, loaded with experiments.api.load_run."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from experiments.checkpoint import load_best
from experiments.config_errors import ConfigError
from experiments.train import train
from sweeps.api import BestRun, best_run


def _study(path, name="s", direction="maximize"):
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(study_name=name, storage=storage, direction=direction)


def _trial(value, run_dir, state=TrialState.COMPLETE):
    return create_trial(value=value if state == TrialState.COMPLETE else None, state=state,
                        params={"optim.lr": 1e-3}, distributions={"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)},
                        user_attrs={"run_dir": str(run_dir)})  # fmt: skip


def test_best_run_is_the_best_complete_trial_and_loads_its_model(compose, tmp_path):
    train(compose([f"run_dir={tmp_path}/trial-1"]))
    journal = tmp_path / "s.journal"
    study = _study(journal)
    study.add_trial(_trial(0.5, tmp_path / "trial-0"))
    study.add_trial(_trial(0.8, tmp_path / "trial-1"))
    study.add_trial(_trial(None, tmp_path / "trial-2", TrialState.PRUNED))
    best = best_run(journal, "s")
    assert best == BestRun("s", 1, 0.8, {"optim.lr": 1e-3}, tmp_path / "trial-1")
    assert best_run(str(journal), "s") == best == best_run(JournalStorage(JournalFileBackend(str(journal))), "s")
    model, cfg = best.load()
    assert not model.training and cfg.run_dir == str(tmp_path / "trial-1")
    saved = load_best(tmp_path / "trial-1" / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_best_run_follows_the_studys_direction(tmp_path):
    study = _study(tmp_path / "s.journal", direction="minimize")
    study.add_trial(_trial(0.5, tmp_path / "a"))
    study.add_trial(_trial(0.2, tmp_path / "b"))
    assert best_run(tmp_path / "s.journal", "s").run_dir == tmp_path / "b"


def test_best_run_says_what_is_missing_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: give the study's journal file"):
        best_run(tmp_path / "none.journal", "s")
    study = _study(tmp_path / "s.journal")
    with pytest.raises(ConfigError, match="there is no study 'other'"):
        best_run(tmp_path / "s.journal", "other")
    with pytest.raises(ConfigError, match="has no complete trial yet"):
        best_run(tmp_path / "s.journal", "s")
    study.add_trial(create_trial(value=0.1))
    with pytest.raises(ConfigError, match="records no run_dir"):
        best_run(tmp_path / "s.journal", "s")
