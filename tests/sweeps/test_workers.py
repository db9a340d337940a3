"""Several workers on one storage, a worker killed with SIGKILL, Ctrl-C: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.storage import build_storage
from sweeps.study import run_study
from tests.sweeps.helpers import popen_cli

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def _check_no_loss(study: optuna.Study, n_trials: int, workers: int) -> None:
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    # Workers stop once n_trials are finished or running: at most one trial per other worker in flight at that moment.
    assert n_trials <= len(finished) <= n_trials + workers - 1
    run_dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(run_dirs)) == len(run_dirs)
    for t in finished:  # every trial's run folder holds its own result
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["wandb_run_id"] == t.user_attrs["wandb_run_id"]
        assert summary["status"] == t.user_attrs["status"]
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == workers, "a worker did no trial"


def test_local_workers_on_journal(compose_sweep, monkeypatch, tmp_path):
    """Two spawned workers share the study; each starts with its share of the cores (OMP_NUM_THREADS) and without
    torch, which its first trial imports when it needs it (a worker starts in well under a second)."""
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.1")
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("FAKE_TRAIN_ENV_LOG", str(tmp_path / "env"))
    cfg = compose_sweep("sweep.workers=2", "sweep.n_trials=6", "trainer.epochs=5")
    run_study(cfg)
    study = optuna.load_study(study_name="rpb-sweep", storage=build_storage(cfg.sweep, heartbeat=False))
    _check_no_loss(study, 6, 2)
    seen = [json.loads(p.read_text()) for p in (tmp_path / "env").glob("*.json")]
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert seen and all(s == {"torch": False, "omp": share} for s in seen), seen


@pytest.mark.postgres
def test_local_workers_on_postgresql(compose_sweep, monkeypatch, postgres_study):
    url, name = postgres_study  # fails (not skips) in CI when the server cannot be reached
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.1")
    cfg = compose_sweep("sweep.workers=2", "sweep.n_trials=6", f"sweep.storage={url}", f"sweep.study_name={name}")
    run_study(cfg)
    storage = build_storage(cfg.sweep, heartbeat=False)
    _check_no_loss(optuna.load_study(study_name=name, storage=storage), 6, 2)
    storage.engine.dispose()


def _wait_first_report(study_name: str, cfg, proc, timeout: float = 90) -> None:
    """Until trial 0 has reported its first epoch (the worker is mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            storage = build_storage(cfg.sweep, heartbeat=False)
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
            if trials and trials[0].intermediate_values:
                return
        except (KeyError, ValueError):  # the study does not exist yet
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the worker never reported an epoch")


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_sigkill_mid_trial_then_retry_resumes(compose_sweep, tmp_path, monkeypatch, storage):
    extra = ["sweep.n_trials=2", "trainer.epochs=4"]
    if storage == "sqlite":
        extra += [f"sweep.storage=sqlite:///{tmp_path}/study.db", "sweep.heartbeat_interval=1", "sweep.grace_period=2"]
    cfg = compose_sweep(*extra)
    proc = popen_cli(tmp_path, *extra, env={"FAKE_TRAIN_SLEEP": "1.0"})
    _wait_first_report("rpb-sweep", cfg, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if storage == "sqlite":
        time.sleep(2.5)  # past the grace period: the trial's heartbeat is stale

    study = run_study(cfg)  # the same command again: recovery, then the remaining trials
    trials = study.get_trials()
    killed = trials[0]
    assert killed.state == TrialState.FAIL
    retry = next(t for t in trials if t.number > 0 and t.params == killed.params)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == killed.user_attrs["run_dir"]
    summary = json.loads((Path(retry.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1, "the retry started from scratch instead of the last checkpoint"
    if storage == "journal":
        assert killed.user_attrs["status"] == "stale" and "died" in killed.user_attrs["reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_ctrl_c_records_the_trial_and_the_command_resumes(compose_sweep, tmp_path):
    extra = ["sweep.n_trials=2", "trainer.epochs=3"]
    cfg = compose_sweep(*extra)
    proc = popen_cli(tmp_path, *extra, env={"FAKE_TRAIN_SLEEP": "1.0"})
    _wait_first_report("rpb-sweep", cfg, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert ("interrupted" in out and "best trial" in out) or "no complete trial" in out
    study = run_study(cfg)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["status"] == "interrupted"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
