"""Pruners under retries (`sweeps.pruners`): a retry is judged as the trial it continues, a failed trial never.

These also pin the Optuna internal `HyperbandPruner._get_bracket_id` that `RetryAwareHyperbandPruner` overrides:
should Optuna stop calling it, the bracket tests below fail (not a study)."""

from __future__ import annotations

import warnings

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState, create_trial

from sweeps.config import build_pruner
from sweeps.pruners import RetryAwareHyperbandPruner, RetryAwareSuccessiveHalvingPruner, first_attempt
from sweeps.recovery import fail_and_retry

EPOCHS = 9  # Hyperband with min_resource 1, reduction_factor 3: brackets 0/1/2 have rungs at [1, 3, 9] / [3, 9] / [9]


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _hyperband(name: str = "hb") -> tuple[optuna.Study, RetryAwareHyperbandPruner]:
    pruner = build_pruner(OmegaConf.create({"pruner": {"name": "hyperband", "min_resource": 1,
                                                       "reduction_factor": 3}}), EPOCHS)  # fmt: skip
    assert isinstance(pruner, RetryAwareHyperbandPruner)
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name=name)
    return study, pruner


def _plain_bracket(pruner: optuna.pruners.HyperbandPruner, study: optuna.Study, number: int) -> int:
    """The bracket Optuna itself gives trial `number` (its crc32 rule, through the parent class)."""
    probe = create_trial(state=TrialState.WAITING, params={}, distributions={})
    probe.number = number
    return optuna.pruners.HyperbandPruner._get_bracket_id(pruner, study, probe)


def _killed_in_bracket_0(study, pruner):
    """A trial of bracket 0 whose next number lies in another bracket; it reports epochs 1-4, then its worker dies."""
    pruner._try_initialization(study)
    while True:
        trial = study.ask()
        if _plain_bracket(pruner, study, trial.number) == 0 and _plain_bracket(pruner, study, trial.number + 1) != 0:
            break
        study.tell(trial, 0.5)
    for epoch in range(1, 5):
        trial.report(0.1 * epoch, epoch)
        assert not trial.should_prune()  # the only trial of its bracket: promoted
    frozen = study._storage.get_trial(trial._trial_id)
    assert fail_and_retry(study, frozen, "worker died", max_retry=2)
    return frozen


def test_a_hyperband_retry_stays_in_the_bracket_of_the_trial_it_continues():
    study, pruner = _hyperband()
    killed = _killed_in_bracket_0(study, pruner)
    retry = study.ask()  # pops the enqueued retry
    frozen = study._storage.get_trial(retry._trial_id)
    assert first_attempt(frozen) == killed.number != frozen.number
    assert _plain_bracket(pruner, study, frozen.number) != 0  # Optuna alone would move it to another bracket
    assert pruner._get_bracket_id(study, frozen) == 0
    # its rungs are the killed attempt's: rungs 0 and 1 (epochs 1, 3) done, judged next at epoch 9
    assert {k for k in frozen.system_attrs if k.startswith("completed_rung")} == {"completed_rung_0", "completed_rung_1"}
    for epoch in range(5, 10):
        retry.report(0.1 * epoch, epoch)
        retry.should_prune()
    rungs = study._storage.get_trial(retry._trial_id).system_attrs
    assert rungs["completed_rung_2"] == pytest.approx(0.9)  # judged at bracket 0's last rung, with epoch 9's value
    assert rungs["completed_rung_0"] == pytest.approx(0.1) and rungs["completed_rung_1"] == pytest.approx(0.3)


def test_a_failed_trial_is_in_no_bracket():
    study, pruner = _hyperband()
    killed = _killed_in_bracket_0(study, pruner)
    assert pruner._get_bracket_id(study, study._storage.get_trial(killed._trial_id)) == -1


def _rung_study(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Three complete trials, a killed one whose retry waits with its rung value: rung 0 (epoch 1) values
    0.9, 0.8, 0.2 and 0.1 (the killed attempt and its retry)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="sh")
    for value in (0.9, 0.8, 0.2):
        study.add_trial(create_trial(value=value, intermediate_values={1: value},
                                     system_attrs={"completed_rung_0": value}))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, intermediate_values={1: 0.1},
                                 user_attrs={"status": "stale"}, system_attrs={"completed_rung_0": 0.1}))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.WAITING, intermediate_values={1: 0.1},
                                 system_attrs={"completed_rung_0": 0.1, "retry_history": [3]}))  # fmt: skip
    return study


def test_successive_halving_counts_a_retried_trial_once():
    def judged(pruner) -> bool:
        study = _rung_study(pruner)
        study.ask()  # the retry (it trains elsewhere)
        trial = study.ask()
        trial.report(0.85, 1)
        return trial.should_prune()

    # rung 0 holds 0.9, 0.85, 0.8, 0.2 and one 0.1: the top third (of 5: the best one) goes on, so 0.85 is pruned
    assert judged(RetryAwareSuccessiveHalvingPruner(min_resource=1, reduction_factor=3)) is True
    # Optuna's own counts the killed attempt and its retry both (6 values: the top two go on) and promotes it
    assert judged(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)) is False
