"""The few private names of Optuna the sweeps rely on, used from this module only (tests/sweeps/test_optuna_internals.py
and tests/sweeps/test_pruners.py pin the behaviour relied on, so an Optuna upgrade fails a test, not a study).

Each says why the public API does not do. Written against Optuna 4.x.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

NO_BRACKET = -1  # the bracket of a trial that belongs to none: no bracket's rungs count its values


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage. Optuna has no public accessor; the storage's own public methods are what fail another
    worker's trial (`set_trial_state_values`) and write the attrs of a trial that is not this process's `Trial`."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (`trial.number` counts within the study; the storage's methods take this id)."""
    return trial._trial_id


def trial_record(trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a running `Trial`: its system attrs and intermediate values as enqueued (a retry is
    enqueued with its killed attempts' epochs), which `optuna.Trial` does not expose."""
    return storage_of(trial.study).get_trial(trial_id(trial))


def set_trial_system_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Write a system attr of a trial a sampler is handed as a `FrozenTrial` (`before_trial`): only the storage
    writes one (`Trial.set_system_attr` was removed in Optuna 3)."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, read from the storage: Hyperband hands samplers and pruners a view of one bracket
    (`optuna.pruners._filter_study`) whose public `get_trials` leaves the other brackets' trials out."""
    return storage_of(study).get_all_trials(study._study_id, deepcopy=False)


def study_key(study: optuna.Study) -> tuple[str, int]:
    """(name, storage id) of a study: a study deleted and created again under its name is another study to a cache
    of its trials; only the storage's id tells them apart, and `Study` does not expose it."""
    return study.study_name, study._study_id


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RDB storages with a heartbeat: the RUNNING trials whose heartbeat went stale, while still RUNNING. The public
    `optuna.storages.fail_stale_trials` fails them at once, after which no attribute (status, reason) can be
    written. [] for a storage without heartbeats."""
    storage = storage_of(study)
    if not hasattr(storage, "_get_stale_trial_ids") or storage.get_heartbeat_interval() is None:
        return []
    return storage._get_stale_trial_ids(study._study_id)


class QueueOnlyStudy(optuna.Study):
    """An `optuna.Study` whose `ask()` calls `nothing_waiting()` when no WAITING trial is left, before it would
    create a new trial. `Study.ask` offers no public hook between popping the queue (`_pop_waiting_trial_id`) and
    creating a trial, and checking the queue before `ask` races with other workers popping it."""

    def _pop_waiting_trial_id(self) -> int | None:
        popped = super()._pop_waiting_trial_id()
        if popped is None:
            self.nothing_waiting()
        return popped

    def nothing_waiting(self) -> None:
        """Called when the queue is empty; raise to keep `ask()` from creating a trial."""


class BracketedHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband whose bracket of a trial is chosen by `bracket_trial`: the trial Optuna places (its
    bracket is a function of the study name and the trial number), or None for no bracket (`NO_BRACKET`).
    Hyperband and its TPE sampler both call `_get_bracket_id`; there is no public way to choose the bracket."""

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        placed = self.bracket_trial(study, trial)
        return NO_BRACKET if placed is None else super()._get_bracket_id(study, placed)

    def bracket_trial(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        return trial
