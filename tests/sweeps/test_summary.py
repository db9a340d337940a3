"""The tables rpb-sweep and rpb-ablate print: they fit 80 columns, widen with the terminal, and say what they drop."""

from __future__ import annotations

import io
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from rich.console import Console

from sweeps.ablation.grid import check_baseline, params_text, train_trial
from sweeps.ablation.settings import BIAS, ENABLED, MODE, SEED, WINDOW
from sweeps.ablation.verdict import print_verdict
from sweeps.format import fitted_table
from sweeps.objective import trial_line
from sweeps.space import SweepConfigError
from sweeps.summary import print_summary

SPACE = {  # conf/sweep/default.yaml's dimensions
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "optim.weight_decay": FloatDistribution(1e-3, 0.2, log=True),
    "model.drop_rate": FloatDistribution(0.0, 0.3),
    "model.rpb.window_size": CategoricalDistribution(["3x3", "5x5", "7x7"]),
    "model.rpb.init_std": FloatDistribution(1e-3, 0.1, log=True),
}


def _console(width: int) -> Console:
    return Console(width=width, file=io.StringIO(), record=True)


def _lines(console: Console) -> list[str]:
    return console.export_text().splitlines()


def _sweep_study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    rng = random.Random(0)
    for _ in range(6):
        params = {k: (rng.choice(d.choices) if isinstance(d, CategoricalDistribution) else rng.uniform(d.low, d.high))
                  for k, d in SPACE.items()}  # fmt: skip
        params["optim.lr"] = 0.0012520653814999472  # the example of a float at full precision
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=SPACE, value=rng.uniform(0.5, 0.99), intermediate_values={0: 0.4, 1: 0.6}
            )
        )
    return study


@pytest.mark.parametrize("width", [80, 160])
def test_trials_table_fits_the_terminal(compose_sweep, width):
    console = _console(width)
    print_summary(compose_sweep(), _sweep_study(), console=console)
    lines = _lines(console)
    commands = [line for line in lines if line.startswith(("Best config:", "Train it:"))]  # printed whole
    assert len(commands) == 2 and max(len(line) for line in lines if line not in commands) <= width
    text = "\n".join(lines)
    assert "0.00125" in text and "0.0012520653814999472" not in text and "0.000…" not in text
    table = text.split("complete trials, ranked by")[1]
    header = next(line for line in table.splitlines() if line.startswith("┃"))
    assert "…" not in header  # headers are whole (val_a… in the issue)
    if width == 160:  # every column, nothing dropped
        assert all(name in header for name in ("state", "epochs", "lr", "weight_decay", "drop_rate", "init_std"))
        assert "not shown" not in text
    else:  # the last parameters go first, and the page says so
        assert "init_std" not in header and "not shown: " in text and "init_std" in text.split("not shown: ")[1]
        assert "lr" in header


def test_a_table_that_keeps_the_first_trials_says_how_many_it_left_out(compose_sweep):
    console = _console(120)
    print_summary(compose_sweep(), _sweep_study(), console=console, top=4)
    assert "Top 4 complete trials, ranked by val_accuracy (4 of 6 shown)" in [x.strip() for x in _lines(console)]
    console = _console(120)
    print_summary(compose_sweep(), _sweep_study(), console=console)  # top=10: all six, no note
    assert "Top 6 complete trials, ranked by val_accuracy" in [x.strip() for x in _lines(console)]


def test_fitted_table_drops_by_priority_and_keeps_priority_zero():
    console = _console(30)
    columns = [("#", 0), ("value", 0), ("low", 1), ("wide column", 2)]
    table, dropped = fitted_table(console, "t", columns, [["1", "0.5", "x", "a long cell text"]])
    assert dropped == ["wide column"] and [c.header for c in table.columns] == ["#", "value", "low"]
    table, dropped = fitted_table(_console(8), "t", columns, [["1", "0.5", "x", "y"]])
    assert [c.header for c in table.columns] == ["#", "value"]  # too narrow for more: priority 0 stays


def _ablation_study(values: dict[tuple[str, bool], list[float]]) -> optuna.Study:
    dists = {
        WINDOW: CategoricalDistribution(["3x3", "5x5"]),
        BIAS: CategoricalDistribution(["2d"]),
        MODE: CategoricalDistribution(["clip"]),
        ENABLED: CategoricalDistribution([True, False]),
        SEED: CategoricalDistribution([0, 1, 2]),
    }
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metric", "val_accuracy")
    for (window, enabled), accs in values.items():
        for seed, acc in enumerate(accs):
            params = {WINDOW: window, BIAS: "2d", MODE: "clip", ENABLED: enabled, SEED: seed}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=acc))
    return study


@pytest.mark.parametrize("width", [80, 160])
def test_verdict_table_prints_at_the_end_of_rpb_ablate(width):
    study = _ablation_study(
        {("3x3", False): [0.90, 0.93, 0.91], ("3x3", True): [0.95, 0.98, 0.97], ("5x5", True): [0.92, 0.91, 0.92]}
    )
    console = _console(width)
    assert print_verdict(study, console=console)
    lines = _lines(console)
    assert max(map(len, lines)) <= width
    rows = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert set(rows) == {"none", "rpb 2d 3x3", "rpb 2d 5x5"}
    assert "baseline" in rows["none"] and "+0.053" in rows["rpb 2d 3x3"] and "better" in rows["rpb 2d 3x3"]
    assert "no difference shown" in rows["rpb 2d 5x5"]
    header = next(line for line in lines if line.startswith("┃"))
    assert ("p (Holm)" in header) == (width == 160) and "verdict" in header and "Δ joint 95% CI" in header
    assert len(lines) == 9 + (width == 80)  # title, 3 rules, header, 3 rows, the method, what was dropped


def test_verdict_without_a_baseline_says_what_to_add():
    study = _ablation_study({("3x3", True): [0.9, 0.8, 0.85], ("5x5", True): [0.9, 0.9, 0.9]})
    console = _console(100)
    assert not print_verdict(study, console=console)
    text = console.export_text()
    assert "No verdict: the baseline 'none' names no setting" in text and "2d-3x3, 2d-5x5" in text
    assert print_verdict(study, "2d-3x3", console=_console(100))


def test_a_named_baseline_must_be_in_the_grid():
    cells = [{WINDOW: "3x3", BIAS: "2d", MODE: "clip", SEED: 0}, {WINDOW: "5x5", BIAS: "2d", MODE: "clip", SEED: 0}]
    check_baseline(None, cells)
    check_baseline("none", cells)  # the default may be absent: the verdict says so at the end
    check_baseline("2d-5x5", cells)
    with pytest.raises(SweepConfigError, match=r"ablation.baseline='2d-7x7': the baseline '2d-7x7' names no setting"):
        check_baseline("2d-7x7", cells)


def test_the_study_names_its_objective_for_optuna_dashboard(compose_sweep):
    from sweeps.study import prepare_study

    study = prepare_study(compose_sweep())
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard's axis label, not "Objective 0"


def test_an_ablation_trial_line_names_its_setting_not_the_unused_window():
    """A run without a bias still carries its config's window and bias type: its line names the setting."""

    def finished(params, value, **kw):
        dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
        return optuna.trial.create_trial(params=params, distributions=dists, value=value, **kw)

    params = {WINDOW: "3x3", BIAS: "2d", MODE: "clip", ENABLED: False, SEED: 0}
    line = trial_line(finished(params, 0.95, user_attrs={"epochs_run": 20}), "val_accuracy", params_text)
    assert line.endswith("after 20 epochs | setting none, seed 0"), line
    line = trial_line(finished({**params, ENABLED: True, WINDOW: "5x5"}, 0.97), "val_accuracy", params_text)
    assert line.endswith("| setting rpb 2d 5x5, seed 0"), line
    assert trial_line(finished({"optim.lr": 0.002}, 0.9), "val_accuracy").endswith("| lr 0.002")
    assert trial_line(finished({"optim.lr": 0.002}, 0.9), "val_accuracy", params_text).endswith("| lr 0.002")
    assert train_trial.describe_params is params_text  # what the trial lines of an ablation study use


def test_progress_says_the_place_and_the_time_left():
    from sweeps.objective import Progress, format_duration

    assert [format_duration(s) for s in (0.4, 45, 190, 3725)] == ["0s", "45s", "3m10s", "1h02m"]
    progress = Progress(n_trials=12, workers=2)
    assert progress.tag(5, 4) == "trial 5, 4 of 12" and Progress(None).tag(5, 4) == "trial 5, 4"
    # 2 of 10 epochs took 20 s: 80 s left in the trial; no finished trial yet, so nothing said of the study
    assert progress.time_left(place=4, trial_elapsed=20, done=2, left=8) == "~1m20s left in the trial"
    progress.durations += [100.0, 140.0]  # a trial takes 120 s: 8 more after this one, on 2 workers
    assert progress.time_left(4, 20, 2, 8) == "~1m20s left in the trial, ~9m20s in the study"
    assert progress.time_left(12, 100, 10, 0) == "~0s in the study"


def test_a_complete_trial_line_names_the_epoch_its_value_comes_from_when_not_the_last():
    """The epoch lines print every few epochs; a value taken from an earlier epoch (sweep.value=best) says which."""
    dists = {"optim.lr": CategoricalDistribution([0.002])}

    def complete(values, value):
        return optuna.trial.create_trial(params={"optim.lr": 0.002}, distributions=dists, value=value,
                                         intermediate_values=values)  # fmt: skip

    line = trial_line(complete({1: 0.5, 2: 0.964, 3: 0.95}, 0.964), "val_accuracy")
    assert "complete: val_accuracy 0.964 after 3 epochs (best at epoch 2) | lr 0.002" in line, line
    line = trial_line(complete({1: 0.5, 2: 0.9, 3: 0.95}, 0.95), "val_accuracy")
    assert "after 3 epochs | lr" in line and "best at" not in line  # the last epoch's: nothing to add
