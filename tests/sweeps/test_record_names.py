"""sweeps.record: the trial record's statuses and keys, spelt once; Objective writes a trial's attrs as few times as
its recovery allows, and worker first."""

from __future__ import annotations

from typing import get_args

import optuna
import pytest

from experiments.result import RUN_STATUSES
from sweeps import record
from sweeps.config import check_sweep
from sweeps.objective import COMPLETE_STATUSES, PRUNED_STATUSES, Objective
from sweeps.record import FINISHED_STATUSES, KILLED_STATUSES, TRIAL_STATUSES, StudyAttr, SystemAttr, TrialAttr
from tests.sweeps import fake_train


def _values(namespace) -> list[str]:
    return [v for k, v in vars(namespace).items() if k.isupper()]


def test_trial_statuses_are_the_run_statuses_plus_stale_and_duplicate():
    assert TRIAL_STATUSES == (*RUN_STATUSES, "stale", "duplicate") == get_args(record.TrialStatus)
    assert set(FINISHED_STATUSES) == {*COMPLETE_STATUSES, *PRUNED_STATUSES}
    assert set(KILLED_STATUSES) == {"interrupted", "stale"}


@pytest.mark.parametrize("namespace", [TrialAttr, StudyAttr, SystemAttr])
def test_every_key_is_spelt_once(namespace):
    values = _values(namespace)
    assert len(values) == len(set(values)) and all(v == v.lower() for v in values)


def test_trial_origin():
    assert record.trial_origin({}) == record.SAMPLED
    assert record.trial_origin({SystemAttr.FIXED_PARAMS: {"a": 1}}) == record.ENQUEUED
    assert record.trial_origin({SystemAttr.FIXED_PARAMS: {}, SystemAttr.RETRY_HISTORY: [0]}) == record.RETRY
    assert set(get_args(record.Origin)) == {record.SAMPLED, record.ENQUEUED, record.RETRY}


class _Recorder(optuna.storages.InMemoryStorage):
    """Counts the user-attr writes, in order (each one a commit on PostgreSQL)."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def set_trial_user_attr(self, trial_id, key, value):
        self.writes.append(key)
        super().set_trial_user_attr(trial_id, key, value)


@pytest.mark.parametrize("wandb_id", [True, False])
def test_a_trial_writes_its_attrs_once_each_worker_first(compose_sweep, wandb_id):
    sweep, base, dims = check_sweep(compose_sweep("sweep.n_trials=1", "trainer.epochs=2"))
    storage = _Recorder()
    study = optuna.create_study(storage=storage, direction="maximize")

    def train(cfg, on_epoch_end=None):
        out = dict(fake_train.train(cfg, on_epoch_end))  # a plain dict, as a user's train_fn returns
        return out if wandb_id else {**out, "wandb_run_id": None}

    study.optimize(Objective(base, sweep, dims, train), n_trials=1)
    trial = study.trials[0]
    assert storage.writes == [
        TrialAttr.WORKER,  # first (a WorkerStudy writes it as it takes the trial: not here, a plain optuna.Study)
        TrialAttr.ORIGIN, TrialAttr.RUN_DIR, TrialAttr.WANDB_RUN_ID, TrialAttr.STATUS,  # before training (one write)
        TrialAttr.EPOCHS_RUN, TrialAttr.STATUS,  # when it ends, no reason: train_fn gave none (one write)
    ]  # fmt: skip
    assert trial.user_attrs[TrialAttr.STATUS] == "completed" and trial.user_attrs[TrialAttr.EPOCHS_RUN] == 2
    assert trial.user_attrs[TrialAttr.RUN_DIR].endswith("trial-0") and trial.user_attrs[TrialAttr.WANDB_RUN_ID]


def test_a_run_dir_train_changed_is_written_again(compose_sweep, tmp_path):
    sweep, base, dims = check_sweep(compose_sweep("sweep.n_trials=1", "trainer.epochs=1"))
    storage = _Recorder()
    study = optuna.create_study(storage=storage, direction="maximize")
    moved = str(tmp_path / "elsewhere")

    def train(cfg, on_epoch_end=None):
        return {**fake_train.train(cfg, on_epoch_end), "run_dir": moved, "wandb_run_id": "other"}

    study.optimize(Objective(base, sweep, dims, train), n_trials=1)
    attrs = study.trials[0].user_attrs
    assert attrs[TrialAttr.RUN_DIR] == moved and attrs[TrialAttr.WANDB_RUN_ID] == "other"
    assert storage.writes.count(TrialAttr.RUN_DIR) == 2 and storage.writes.count(TrialAttr.WANDB_RUN_ID) == 2


def test_garbage_is_collected_after_a_trial_only_where_cuda_holds_memory(monkeypatch):
    """Optuna's gc_after_trial, for the memory CUDA holds in a trial's reference cycles; on CPU no forced
    collection (its ~2.5 ms a trial was the largest cost of a short trial's bookkeeping)."""
    import gc
    import sys
    import types

    from sweeps.worker import collect_cuda_garbage

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    for initialized in (False, True):
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda i=initialized: i))
        monkeypatch.setitem(sys.modules, "torch", fake)
        collect_cuda_garbage()
    assert calls == ["collect"]


def test_held_params_and_draw_index_read_incrementally_equal_a_full_read():
    """The parameter sets a study holds and a trial's draw index are kept incrementally (each finished trial read
    once); at every step of a study that grows, with trials finishing out of order, duplicates, retries and a
    study deleted and created again under its name, they equal what a full read of every trial gives."""
    import random

    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from sweeps.record import SystemAttr, TrialAttr
    from sweeps.samplers import _held_params_scan, draw_index, held_by, held_params, params_key

    names = ["a", "b"]
    dists = {"a": CategoricalDistribution([0, 1, 2]), "b": CategoricalDistribution([0, 1])}
    rng = random.Random(0)
    storage = optuna.storages.InMemoryStorage()
    for round_ in range(2):  # the second round: the same name, another study
        optuna.create_study(study_name="held", storage=storage)
        study = optuna.load_study(study_name="held", storage=storage)
        for step in range(40):
            state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                                TrialState.WAITING])  # fmt: skip
            user = {TrialAttr.STATUS: "duplicate"} if rng.random() < 0.1 else {}
            system = {SystemAttr.RETRY_HISTORY: [0], SystemAttr.FAILED_TRIAL: 0} if rng.random() < 0.2 else {}
            study.add_trial(create_trial(
                state=state, params={"a": rng.randrange(3), "b": rng.randrange(2)}, distributions=dists,
                value=0.0 if state == TrialState.COMPLETE else None, user_attrs=user, system_attrs=system,
                intermediate_values={1: 0.0} if state == TrialState.PRUNED else None,
            ))  # fmt: skip
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if running and rng.random() < 0.5:  # an earlier trial finishes now: out of number order
                t = rng.choice(running)
                storage.set_trial_state_values(t._trial_id, rng.choice([TrialState.FAIL, TrialState.COMPLETE]),
                                               values=[0.0])  # fmt: skip
            trials = study.get_trials(deepcopy=False)
            for number in (rng.randrange(len(trials)), None):
                for before in (rng.randrange(len(trials) + 1), None):
                    scan = _held_params_scan(study, names, exclude=number, before=before)
                    assert held_params(study, names, exclude=number, before=before) == scan, (round_, step, number)
                    if number is None and before is not None:  # the refusal's question: who below `before` holds it
                        for params in ({"a": a, "b": b} for a in range(3) for b in range(2)):
                            expected = scan.get(params_key(params, names))
                            assert held_by(study, names, params, before=before, trials=trials) == expected
            last = trials[-1]
            retries = sum(t.number < last.number and SystemAttr.RETRY_HISTORY in t.system_attrs for t in trials)
            assert draw_index(study, last) == last.number - retries, (round_, step)
        optuna.delete_study(study_name="held", storage=storage)
