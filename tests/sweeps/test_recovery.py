"""Recovery in-process and in milliseconds: Ctrl-C'd grid cells, zombie workers, early worker attrs, resumed values."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeps.config import check_sweep
from sweeps.objective import Objective
from sweeps.recovery import fail_dead_worker_trials, worker_alive, worker_identity
from sweeps.space import SweepConfigError
from sweeps.storage import build_storage
from sweeps.study import StudyAlreadyDone, run_study
from tests.sweeps import fake_train

GRID = (
    "sweep.study_name=grid",
    "sweep.sampler.name=grid",
    "sweep.pruner.name=none",
    "sweep.n_trials=null",
    "sweep.enqueue_defaults=false",
    "trainer.epochs=3",
    "~sweep.space.optim",
    "~sweep.space.model.drop_rate",
    "~sweep.space.model.rpb.init_std",
    "sweep.space.model.rpb.window_size={type: categorical, choices: [3, 7]}",
    "+sweep.space.seed={type: categorical, choices: [0, 1]}",
)


def _interrupt_trial(number: int):
    """The fake trainer, but Ctrl-C after the first epoch of trial `number` (its checkpoint is written by then)."""

    def train(cfg, on_epoch_end=None):
        if not cfg.run_dir.endswith(f"trial-{number}"):
            return fake_train.train(cfg, on_epoch_end=on_epoch_end)

        def stop(epoch, metrics):
            on_epoch_end(epoch, metrics)
            raise KeyboardInterrupt

        return fake_train.train(cfg, on_epoch_end=stop)

    return train


def test_an_interrupted_last_grid_cell_runs_on_the_next_start(compose_sweep):
    cfg = compose_sweep(*GRID)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, _interrupt_trial(3))  # the grid's last cell: every cell is visited (FAIL counts)
    study = run_study(cfg, fake_train.train)
    trials = study.get_trials()
    interrupted = trials[3]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["status"] == "interrupted"
    retry = trials[4]
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    assert retry.user_attrs["resumed_from"] == interrupted.user_attrs["run_dir"]
    assert set(retry.intermediate_values) == {1, 2, 3}  # epoch 1 from the interrupted trial, 2-3 from the retry
    points = sorted((t.params["model.rpb.window_size"], t.params["seed"]) for t in trials if t.state.is_finished())
    assert len(trials) == 5 and sorted(set(points)) == [(3, 0), (3, 1), (7, 0), (7, 1)]
    # Requeued once: the next start runs nothing and says so.
    with pytest.raises(StudyAlreadyDone, match="already holds all 4 grid cells") as done:
        run_study(cfg, fake_train.train)
    assert len(done.value.study.get_trials()) == 5


def test_a_cell_taken_by_a_worker_killed_before_its_first_write_is_waited_for_and_retried(compose_sweep):
    """A worker killed between popping a grid cell and recording itself on it leaves a RUNNING trial with no worker
    (nothing to check by pid). The next command waits for sweep.grace_period, fails it, retries it, and returns
    with every cell done, not with the trial still RUNNING and the study short of a cell."""
    from sweeps.worker import prepare_study

    cfg = compose_sweep(*GRID, "sweep.grace_period=1")
    study = prepare_study(cfg)
    orphan = study.get_trials(states=(TrialState.WAITING,))[1]
    assert study._storage.set_trial_state_values(orphan._trial_id, TrialState.RUNNING)  # popped, then killed
    study = run_study(cfg, fake_train.train)
    trials = study.get_trials()
    assert not [t.number for t in trials if not t.state.is_finished()]
    failed = trials[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "stale"
    assert "no worker started the trial" in failed.user_attrs["reason"]
    cells = sorted(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE)
    assert cells == [0, 1, 2, 3]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == orphan.number)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["cell"] == orphan.user_attrs["cell"]


def test_a_zombie_worker_is_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and stays a zombie until waited for
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_alive({"host": socket.gethostname(), "pid": proc.pid, "start": None}) is False
    finally:
        proc.wait()
    assert worker_alive(worker_identity()) is True


def test_a_dead_workers_journal_retry_keeps_its_reported_values(compose_sweep):
    cfg = compose_sweep()
    sweep = check_sweep(cfg)[0]
    study = optuna.create_study(study_name="s", storage=build_storage(sweep), direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.report(0.5, 1)
    trial.report(0.6, 2)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": 2**22 + 1, "start": None})  # no such pid
    assert fail_dead_worker_trials(study) == [trial.number]
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    assert retry.intermediate_values == {1: 0.5, 2: 0.6} and retry.params == trial.params


def test_the_worker_is_recorded_before_sampling(compose_sweep, monkeypatch):
    cfg = compose_sweep("sweep.n_trials=1")
    sweep, base, dims = check_sweep(cfg)
    study = optuna.create_study(storage=build_storage(sweep), direction="maximize")

    def broken_spec(self, trial):
        raise RuntimeError("killed while sampling")

    monkeypatch.setattr(Objective, "spec", broken_spec)
    study.optimize(Objective(base, sweep, dims, fake_train.train), n_trials=1, catch=(RuntimeError,))
    assert study.trials[0].user_attrs["worker"]["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("metric", "history", "best", "last"),
    [
        # epoch -> value, the killed attempt's epochs 1-2 included; what train_fn returns plays no part
        ("val_accuracy", {1: 0.5, 2: 0.8, 3: 0.6, 4: 0.7}, 0.8, 0.7),
        ("val_loss", {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.45}, 0.2, 0.45),
        ("train_loss", {3: 0.4, 1: 0.5, 2: 0.3}, 0.3, 0.4),  # the last is the highest epoch, not the last written
        ("train_accuracy", {1: 0.1, 2: float("nan"), 3: 0.3}, 0.3, 0.3),
    ],
)
def test_a_trial_value_is_computed_from_its_own_record(compose_sweep, metric, history, best, last):
    sweep, base, dims = check_sweep(compose_sweep(f"sweep.metric={metric}"))
    misleading = {f"best_{metric}": 123.0, metric: -1.0, "best_val_accuracy": 0.99}
    assert Objective(base, sweep, dims, fake_train.train).value(history, misleading) == best
    last_rule = OmegaConf.merge(sweep, {"value": "last"})
    assert Objective(base, last_rule, dims, fake_train.train).value(history, misleading) == last


def test_a_train_fn_that_reports_no_epoch_is_valued_by_what_it_returns(compose_sweep):
    sweep, base, dims = check_sweep(compose_sweep("sweep.metric=val_loss"))
    objective = Objective(base, sweep, dims, fake_train.train)
    assert objective.value({}, {"best_val_loss": 0.25, "val_loss": 0.5}) == 0.25
    with pytest.raises(RuntimeError, match="no finite val_loss"):
        objective.value({}, {"val_accuracy": 0.9})


def test_a_lambda_train_fn_with_workers_is_refused_before_the_study_exists(compose_sweep, tmp_path):
    cfg = compose_sweep("sweep.workers=2")
    with pytest.raises(SweepConfigError, match=r"cannot be imported by the spawned workers") as err:
        run_study(cfg, lambda c, on_epoch_end=None: {"status": "completed"})
    assert len(str(err.value).splitlines()) == 1
    assert not list(tmp_path.rglob("*.journal"))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_stale_trials_are_marked_before_optuna_fails_them_and_looked_for_once_per_interval(tmp_path, monkeypatch):
    """`StaleMarkingRDBStorage` (what `build_storage` gives workers on a database with heartbeats): Optuna's
    `fail_stale_trials`, run before every trial, finds a trial whose heartbeat went stale with its status and
    reason already written, and reaches the database for it once per heartbeat interval, not once per call."""
    from optuna.storages import RDBStorage

    from sweeps.optuna_internals import set_trial_attrs, trial_id
    from sweeps.recovery import StaleMarkingRDBStorage

    queries = []
    real_query = RDBStorage._get_stale_trial_ids
    monkeypatch.setattr(RDBStorage, "_get_stale_trial_ids", lambda self, sid: queries.append(sid) or real_query(self, sid))
    storage = StaleMarkingRDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    running, stale = study.ask(), study.ask()
    set_trial_attrs(storage, trial_id(stale), {"worker": {"host": "gone", "pid": 7}})
    storage.record_heartbeat(trial_id(stale))
    time.sleep(2.2)  # past the grace period
    storage.record_heartbeat(trial_id(running))
    optuna.storages.fail_stale_trials(study)
    assert len(queries) == 1
    failed, alive = study._storage.get_trial(trial_id(stale)), study._storage.get_trial(trial_id(running))
    assert failed.state == TrialState.FAIL and alive.state == TrialState.RUNNING
    assert failed.user_attrs["status"] == "stale"
    assert failed.user_attrs["reason"] == "worker gone:7 sent no heartbeat for the grace period"
    for _ in range(5):  # every trial start within the interval: no query
        optuna.storages.fail_stale_trials(study)
    assert len(queries) == 1
    time.sleep(1.1)
    storage.record_heartbeat(trial_id(running))
    optuna.storages.fail_stale_trials(study)
    assert len(queries) == 2 and study._storage.get_trial(trial_id(running)).state == TrialState.RUNNING
