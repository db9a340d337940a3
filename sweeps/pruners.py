"""Pruners that stay sound when a killed trial is retried under a new trial number.

A retry (`sweeps.recovery`) is a WAITING copy of the killed trial: same params, its reported epochs
(`intermediate_values`) and its pruner state (the `completed_rung_*` system attrs of successive halving), resumed
from its checkpoint. The rule, for every pruner:

- **A retry is judged as the trial it continues.** It keeps the rungs its killed attempt completed and goes on
  with the next one; under Hyperband it stays in the bracket of the trial it first retried, so its values are only
  ever compared with values of the same epochs. Optuna places a trial in a bracket by its number; here by its
  place in the study's draws (`sweeps.samplers.draw_index`, which a retry takes from its original), so the trials
  after a retry are bracketed as in the same study run without the kill (their numbers are one higher).
- **A failed trial is no competitor.** The killed attempt (state FAIL) and its retry carry the same rung values;
  the rungs count the retry's alone, so no trial counts twice. (Plain Optuna also ranks crashed trials' rung
  values; here a crash is not a result.)
- The median pruner needs nothing more: it compares only COMPLETE and PRUNED trials, so the killed attempt is
  not counted, and the retry reports its epochs past the checkpoint as the trial would have.

Optuna's internals used here (the public API has no hook for where a trial's bracket comes from):
`HyperbandPruner._get_bracket_id`, which Optuna's Hyperband and its TPE sampler both call, for the judged trial and
for every trial when they build a bracket's study. `tests/sweeps/test_pruners.py` pins the behaviour relied on.
"""

from __future__ import annotations

import copy
from collections.abc import Container

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.optuna_internals import NO_BRACKET, BracketedHyperbandPruner  # noqa: F401 (NO_BRACKET: a failed trial's)
from sweeps.record import retry_history
from sweeps.samplers import DRAW_ATTR, draw_index

__all__ = ["RetryAwareHyperbandPruner", "RetryAwareSuccessiveHalvingPruner", "bracket_number", "first_attempt"]



def first_attempt(trial: FrozenTrial) -> int:
    """The number of the trial that `trial` continues: the first trial of its retry chain (itself if not a retry)."""
    history = retry_history(trial)
    return int(history[0]) if history else trial.number


def bracket_number(study: optuna.Study, trial: FrozenTrial) -> int:
    """What Hyperband places `trial` by: its draw index (`DRAW_ATTR`, its original's for a retry; computed for a
    trial that has not recorded it yet), else, for a retry from before draw indices were recorded, the number of
    the trial it continues."""
    draw = trial.system_attrs.get(DRAW_ATTR)
    if draw is not None:
        return int(draw)
    first = first_attempt(trial)
    return first if first != trial.number else draw_index(study, trial)


class _WithoutFailed:
    """A study as successive halving reads it (`get_trials`, `direction`, `_storage`), without its FAIL trials."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.state != TrialState.FAIL]


class RetryAwareSuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving whose rungs leave out failed trials (a killed attempt's values live on in its
    retry, which carries its completed rungs)."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_WithoutFailed(study), trial)  # type: ignore[arg-type]


class RetryAwareHyperbandPruner(BracketedHyperbandPruner):
    """Optuna's Hyperband in which a retry stays in the bracket of the trial it continues and failed trials are in
    no bracket."""

    def bracket_trial(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        if trial.state == TrialState.FAIL:
            return None
        number = bracket_number(study, trial)
        if number != trial.number:
            trial = copy.copy(trial)  # Optuna's bracket is a function of (study name, trial number)
            trial.number = number
        return trial
