"""What the sweeps rely on in Optuna's private API (`sweeps.optuna_internals`), pinned: an Optuna upgrade that changes
any of it fails here, not in a study. Hyperband's `_get_bracket_id` is pinned by tests/sweeps/test_pruners.py."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.optuna_internals import (
    QueueOnlyStudy,
    all_trials,
    set_trial_system_attr,
    stale_trial_ids,
    storage_of,
    trial_id,
    trial_record,
)


def test_a_running_trial_reads_the_record_it_was_enqueued_with():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={"cell": 3})
    trial = study.ask()
    storage_of(study).set_trial_intermediate_value(trial_id(trial), 2, 0.5)  # a killed attempt's epoch, carried over
    record = trial_record(trial)
    assert record.number == trial.number and record.user_attrs["cell"] == 3
    assert record.intermediate_values == {2: 0.5} and "fixed_params" in record.system_attrs


def test_system_attrs_and_all_trials_through_the_storage():
    study = optuna.create_study()
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    study.ask()
    frozen = study.trials[2]  # as a sampler's before_trial is handed it: running
    set_trial_system_attr(study, frozen, "draw_index", 7)
    assert study.trials[2].system_attrs["draw_index"] == 7
    assert [t.number for t in all_trials(study)] == [0, 1, 2]


def test_an_empty_queue_reaches_the_hook_before_a_trial_is_created():
    class Stop(Exception):
        pass

    class OnlyQueued(QueueOnlyStudy):
        def nothing_waiting(self) -> None:
            raise Stop

    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="q", storage=storage)
    study = OnlyQueued(study_name="q", storage=storage)
    study.enqueue_trial({"x": 1.0})
    assert study.ask().params == {} and study.trials[0].state == TrialState.RUNNING
    with pytest.raises(Stop):
        study.ask()
    assert len(study.trials) == 1  # no trial created past the queue


def test_stale_heartbeats_are_seen_while_the_trial_still_runs(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial_id(trial))
    time.sleep(2.5)
    assert stale_trial_ids(study) == [trial_id(trial)]
    assert study.trials[0].state == TrialState.RUNNING  # still writable: status and reason go on first
    assert stale_trial_ids(optuna.create_study()) == []  # no heartbeat, nothing stale
