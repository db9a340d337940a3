"""The metric decides the study's direction: losses minimized, accuracies maximized, contradictions refused."""

from __future__ import annotations

import pytest

from experiments.config_errors import SweepConfigError
from experiments.metrics import METRICS
from sweeps.config import check_sweep


@pytest.mark.parametrize("metric", METRICS)
def test_each_known_metric_brings_its_direction(compose_sweep, metric):
    sweep = check_sweep(compose_sweep(f"sweep.metric={metric}", fake=False)).sweep
    assert sweep.direction == ("minimize" if metric.endswith("loss") else "maximize")
    # stating the same direction is accepted
    same = check_sweep(compose_sweep(f"sweep.metric={metric}", f"sweep.direction={sweep.direction}", fake=False))
    assert same.sweep.direction == sweep.direction


@pytest.mark.parametrize(("metric", "direction"), [("val_loss", "maximize"), ("val_accuracy", "minimize")])
def test_a_direction_that_contradicts_the_metric_is_one_sentence(compose_sweep, metric, direction):
    with pytest.raises(SweepConfigError) as err:
        check_sweep(compose_sweep(f"sweep.metric={metric}", f"sweep.direction={direction}", fake=False))
    text = str(err.value)
    assert f"sweep.direction={direction}" in text and f"sweep.metric={metric}" in text and "\n" not in text


def test_a_user_metric_must_state_its_direction(compose_sweep):
    # a train_fn of the user's own (the fake one) may report any metric ...
    with pytest.raises(SweepConfigError, match=r"set sweep\.direction=maximize or sweep\.direction=minimize"):
        check_sweep(compose_sweep("sweep.metric=f1_macro"))
    assert check_sweep(compose_sweep("sweep.metric=f1_macro", "sweep.direction=maximize")).sweep.direction == "maximize"
    # ... and one whose name tells its direction needs none
    assert check_sweep(compose_sweep("sweep.metric=top5_acc")).sweep.direction == "maximize"
    assert check_sweep(compose_sweep("sweep.metric=nll_loss")).sweep.direction == "minimize"


def test_the_real_train_refuses_a_metric_it_does_not_log(compose_sweep):
    with pytest.raises(SweepConfigError, match=r"sweep\.metric='f1_macro' is not known"):
        check_sweep(compose_sweep("sweep.metric=f1_macro", "sweep.direction=maximize", fake=False))
