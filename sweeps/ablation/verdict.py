"""The end of an ablation: its study's values per setting and seed, and the verdict table printed to fit the
terminal (each setting against the baseline, `sweeps.ablation.stats`)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sweeps.ablation.settings import DEFAULT_BASELINE, SEED, Setting, find_setting, trial_setting
from sweeps.ablation.stats import MEAN_COLUMN, verdict_table
from sweeps.format import console_for, print_fitted
from sweeps.record import StudyAttr


def ablation_values(study: optuna.Study) -> dict[Setting, dict[int, float]]:
    """Setting -> {seed: value} of an ablation study's COMPLETE trials, read from their params; the first complete
    trial of a (setting, seed) counts."""
    out: dict[Setting, dict[int, float]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        out.setdefault(trial_setting(t.params), {}).setdefault(int(t.params.get(SEED, -1)), float(t.value))
    return out


def print_verdict(study: optuna.Study, baseline: str | None = None, console=None) -> bool:
    """Print the ablation's verdict table (each setting against `baseline`, `sweeps.ablation.stats`), fitted to
    the terminal; returns False (after one sentence saying why) when there is no table to print."""
    console = console or console_for()
    values = ablation_values(study)
    name = baseline or study.user_attrs.get(StudyAttr.BASELINE) or DEFAULT_BASELINE
    if not values:
        console.print("No verdict: the ablation has no complete trial yet.")
        return False
    try:
        base = find_setting(name, list(values))
    except KeyError as err:
        console.print(f"No verdict: {err.args[0]}.")
        return False
    metric = study.user_attrs.get(StudyAttr.METRIC, "val_accuracy")
    direction = study.direction.name.lower()
    header, rows, _ = verdict_table(values, base, metric, direction)
    priority = {"setting": 0, "n": 3, header[MEAN_COLUMN]: 2, "95% CI": 5, "p (Holm)": 4, "verdict": 0}
    columns = [(h, priority.get(h, 1)) for h in header]
    title = f"Verdict against {base.label} ({base.key}), best {metric} ({direction}d)"
    print_fitted(console, title, columns, rows, left=("verdict",))
    console.print("  better/worse: paired t-test over shared seeds, Holm-adjusted p < 0.05")
    return True
