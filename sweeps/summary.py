"""The end of a sweep: a rich summary table and the best trial's config as a YAML `rpb-train` runs as it is; the
end of an ablation: its verdict table (`print_verdict`).

Tables fit the terminal (`shutil.get_terminal_size`: 80 columns when the output is not a terminal and COLUMNS is
unset): numbers at a few significant digits, and the columns that do not fit are dropped by priority and named
under the table.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from experiments.config import to_yaml
from sweeps.config import CheckedSweep, check_sweep
from sweeps.objective import TrialSpec, trial_config
from sweeps.stats import DEFAULT_BASELINE, MEAN_COLUMN, Setting, find_setting, format_number, setting_of, short_names, verdict_table
from sweeps.storage import describe_storage


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting) plus `diverged` (pruned trials that diverged)
    and `retried` (failed trials a later trial retries: killed workers, Ctrl-C)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    counts["diverged"] = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    retried = _retried_numbers(trials)
    counts["retried"] = sum(t.state == TrialState.FAIL and t.number in retried for t in trials)
    keys = ("complete", "pruned", "fail", "running", "waiting", "diverged", "retried")
    return {k: counts.get(k, 0) for k in keys}


def _retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials a later trial retries (each retry lists its predecessors in `retry_history`)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def interrupted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Failed trials stopped by Ctrl-C or SIGTERM (status "interrupted") that no later trial has retried yet: the
    next run of the study retries each from its checkpoint."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    return [t for t in trials if t.user_attrs.get("status") == "interrupted" and t.number not in retried]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def best_config(cfg: DictConfig | CheckedSweep, trial: FrozenTrial) -> DictConfig:
    """The best trial's training config, ready for a fresh `rpb-train` run (own run dir, plain W&B run)."""
    sweep, base, _ = check_sweep(cfg)
    spec = TrialSpec(trial.number, dict(trial.params), run_dir="unused", wandb_id="unused")
    out = trial_config(base, sweep, spec)
    out.run_dir, out.resume, out.name = None, None, f"{sweep.study_name}-best"
    wb = out.tracker.wandb
    wb.group, wb.job_type, wb.name, wb.id = sweep.study_name, "train", None, None
    wb.tags = [t for t in wb.tags if not t.startswith("study-")] + [f"best-of-{sweep.study_name}"]
    out.tracker.extra_config = {"from_study": sweep.study_name, "from_trial": trial.number}
    out.sweep = None
    return out


def write_best_config(cfg: DictConfig | CheckedSweep, study: optuna.Study) -> Path | None:
    """`<output_dir>/<study_name>/best.yaml` (a Hydra primary config over conf/train.yaml); None without a best.

    The best trial is the best COMPLETE one (Optuna's `best_trial`): never a pruned, killed or failed attempt.
    """
    trial = best_trial(study)
    if trial is None:
        return None
    checked = check_sweep(cfg)
    sweep = checked.sweep
    body = OmegaConf.to_container(best_config(checked, trial), resolve=True)
    for key in ("sweep", "ablation", "hydra"):
        body.pop(key, None)
    path = Path(sweep.output_dir) / sweep.study_name / "best.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Best trial {trial.number} of study {sweep.study_name} ({sweep.metric} = {trial.value:.4f}).\n"
        f"# Run it: rpb-train --config-dir={path.parent} --config-name=best\n"
    )
    doc = {"defaults": ["train", "_self_"], **body}
    path.write_text(header + to_yaml(OmegaConf.create(doc)))
    return path


def _last_value(t: FrozenTrial) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def ranked_trials(study: optuna.Study, direction: str) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """(complete trials best first, pruned trials by their last reported value).

    Only COMPLETE trials are ranked: a pruned trial stopped early, so its value is not comparable; failed, killed
    and duplicate attempts are no results at all (a killed trial's result is its retry's).
    """
    reverse = direction == "maximize"
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, reverse=reverse
    )
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    pruned.sort(key=lambda t: _last_value(t), reverse=reverse)
    return complete, pruned


def console_for(width: int | None = None):
    """A rich console as wide as the terminal (`shutil.get_terminal_size`), or `width` columns."""
    from rich.console import Console

    return Console(width=width or shutil.get_terminal_size().columns)


def fitted_table(
    console, title: str, columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], left: Sequence[str] = ()
):
    """A rich table of `rows` that fits `console.width`: the columns with the highest priority number are dropped
    first until it fits (priority 0: never dropped). Returns (table, names of the dropped columns).

    Args:
        columns: (header, priority) per column.
        left: headers of text columns besides the first (left-justified; the others are numbers, right-justified).
    """
    from rich.measure import Measurement
    from rich.table import Table

    keep = list(range(len(columns)))
    droppable = sorted((i for i, (_, prio) in enumerate(columns) if prio > 0), key=lambda i: (-columns[i][1], -i))
    while True:
        table = Table(title=title, title_justify="left")
        for n, i in enumerate(keep):
            text = n == 0 or columns[i][0] in left
            table.add_column(columns[i][0], justify="left" if text else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        width = Measurement.get(console, console.options.update_width(10_000), table).maximum
        if width <= console.width or not droppable:
            return table, [columns[i][0] for i in range(len(columns)) if i not in keep]
        keep.remove(droppable.pop(0))


def _print_fitted(console, title: str, columns, rows, left: Sequence[str] = ()) -> None:
    table, dropped = fitted_table(console, title, columns, rows, left)
    console.print(table)
    if dropped:
        console.print(f"  (not shown: {', '.join(dropped)}; a wider terminal shows them)")


def print_summary(cfg: DictConfig | CheckedSweep, study: optuna.Study, console=None, top: int = 10) -> Path | None:
    """Print the study's table (best trial, params, value, state counts, top complete trials, pruned trials apart),
    fitted to the terminal's width; write best.yaml."""
    from rich.table import Table

    console = console or console_for()
    checked = check_sweep(cfg)
    sweep = checked.sweep
    counts = state_counts(study)
    best = best_trial(study)
    table = Table(title=f"Study {sweep.study_name} — {describe_storage(sweep)}", show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    # One short row per line of counts, so that none wraps in 80 columns (a wrapped row is hard to read and to grep).
    table.add_row("trials", f"{counts['complete']} complete, {counts['pruned']} pruned ({counts['diverged']} diverged)")
    failed = f"{counts['fail']}" + (f" ({counts['retried']} retried)" if counts["retried"] else "")
    if stopped := len(interrupted_trials(study)):
        failed += f", {stopped} interrupted (the next run retries them)"
    table.add_row("failed", failed)
    if counts["running"] or counts["waiting"]:
        table.add_row("in progress", f"{counts['running']} running, {counts['waiting']} waiting")
    if best is None:
        table.add_row("best", "no complete trial yet")
    else:
        table.add_row(
            "best trial", f"#{best.number}: {sweep.metric} = {format_number(best.value, 4)} ({sweep.direction})"
        )
        for name, value in best.params.items():
            table.add_row(f"  {name}", format_number(value))
        table.add_row("run dir", str(best.user_attrs.get("run_dir", "")))
        table.add_row("W&B run", str(best.user_attrs.get("wandb_run_id", "")))
    console.print(table)

    complete, pruned = ranked_trials(study, sweep.direction)
    names = [d.path for d in checked.dims]
    # Priorities: trial, value never dropped; then epochs, state, and the parameters from the last one back.
    columns = [("#", 0), ("state", 2), (sweep.metric, 0), ("epochs", 1)]
    columns += [(name, 3 + i) for i, name in enumerate(short_names(names))]
    for title, trials, value_of in (
        (
            f"Top {min(top, len(complete))} complete trials, ranked by {sweep.metric}{_more(top, complete)}",
            complete[:top],
            lambda t: t.value,
        ),
        (
            f"Pruned trials (stopped early, not ranked): last reported {sweep.metric}{_more(top, pruned)}",
            pruned[:top],
            _last_value,
        ),
    ):
        if not trials:
            continue
        rows = []
        for t in trials:
            state = t.user_attrs.get("status") if t.state == TrialState.PRUNED else t.state.name.lower()
            rows.append(
                [str(t.number), str(state), format_number(value_of(t), 4), str(len(t.intermediate_values))]
                + [format_number(t.params.get(n, "")) for n in names]
            )
        _print_fitted(console, title, columns, rows)
    path = write_best_config(checked, study)
    if path is not None:
        # soft_wrap: a command is printed whole (the terminal wraps it), so it can be copied as it is
        console.print(f"Best config: {path}\nTrain it:    rpb-train --config-dir={path.parent} --config-name=best",
                      soft_wrap=True)  # fmt: skip
    return path


def _more(top: int, trials: Sequence) -> str:
    """A table title's note when it keeps only the first `top` of `trials`: " (10 of 14 shown)"."""
    return f" ({top} of {len(trials)} shown)" if len(trials) > top else ""


def trial_setting(params: Mapping[str, Any]) -> Setting:
    """The setting of one ablation cell from its params (the factors `sweeps.ablate` searches)."""
    from sweeps.ablate import BIAS, ENABLED, MODE, POS, WINDOW

    rpb = {"window_size": params.get(WINDOW), "bias_type": params.get(BIAS, "2d"), "mode": params.get(MODE, "clip")}
    rpb["enabled"] = params.get(ENABLED, True)
    return setting_of(rpb, params.get(POS))


def check_baseline(name: str | None, cells: Sequence[Mapping[str, Any]]) -> None:
    """Check that ``ablation.baseline`` names a setting of the grid `cells` (param dicts). The default baseline
    may be absent (then the verdict says so at the end); a baseline the user named must be there.

    Raises:
        SweepConfigError: a named baseline that is not in the grid, with the settings it could name.
    """
    from sweeps.space import SweepConfigError

    settings = list(dict.fromkeys(trial_setting(c) for c in cells))
    if name is None or (name == DEFAULT_BASELINE and all(s.key != name for s in settings)):
        return
    try:
        find_setting(name, settings)
    except KeyError as err:
        raise SweepConfigError(f"ablation.baseline={name!r}: {err.args[0]}.") from None


def ablation_values(study: optuna.Study) -> dict[Setting, dict[int, float]]:
    """Setting -> {seed: value} of an ablation study's COMPLETE trials, read from their params; the first complete
    trial of a (setting, seed) counts."""
    from sweeps.ablate import SEED

    out: dict[Setting, dict[int, float]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        out.setdefault(trial_setting(t.params), {}).setdefault(int(t.params.get(SEED, -1)), float(t.value))
    return out


def print_verdict(study: optuna.Study, baseline: str | None = None, console=None) -> bool:
    """Print the ablation's verdict table (each setting against `baseline`, `sweeps.stats`), fitted to the
    terminal; returns False (after one sentence saying why) when there is no table to print."""
    console = console or console_for()
    values = ablation_values(study)
    name = baseline or study.user_attrs.get("baseline") or DEFAULT_BASELINE
    if not values:
        console.print("No verdict: the ablation has no complete trial yet.")
        return False
    try:
        base = find_setting(name, list(values))
    except KeyError as err:
        console.print(f"No verdict: {err.args[0]}.")
        return False
    metric = study.user_attrs.get("metric", "val_accuracy")
    direction = study.direction.name.lower()
    header, rows, _ = verdict_table(values, base, metric, direction)
    priority = {"setting": 0, "n": 3, header[MEAN_COLUMN]: 2, "95% CI": 5, "p (Holm)": 4, "verdict": 0}
    columns = [(h, priority.get(h, 1)) for h in header]
    title = f"Verdict against {base.label} ({base.key}), best {metric} ({direction}d)"
    _print_fitted(console, title, columns, rows, left=("verdict",))
    console.print("  better/worse: paired t-test over shared seeds, Holm-adjusted p < 0.05")
    return True


def trial_line(trial: FrozenTrial, metric: str) -> str:
    """The one line printed when a trial finishes: number, state, value, epochs, params.

    trial 3 complete: val_accuracy 0.512 after 5 epochs | lr 0.000316, weight_decay 0.0125, window_size 5x5
    trial 4 pruned at epoch 2 (val_accuracy 0.41) | lr 0.00871, ...
    trial 5 failed: RuntimeError: CUDA out of memory | lr ...
    """
    from experiments.train import plural

    status = trial.user_attrs.get("status") or trial.state.name.lower()
    epochs = int(trial.user_attrs.get("epochs_run") or len(trial.intermediate_values))
    if trial.state == TrialState.COMPLETE:
        head = f"complete: {metric} {format_number(trial.value)} after {plural(epochs, 'epoch')}"
    elif trial.state == TrialState.PRUNED:
        head = f"{status} at epoch {epochs} ({metric} {format_number(_last_value(trial))})"
    else:
        head = f"{status}: {trial.user_attrs.get('reason') or 'see the study record'}"
    return f"trial {trial.number} {head}" + (f" | {params}" if (params := _params_text(trial.params)) else "")


def _params_text(params: Mapping[str, Any]) -> str:
    """A trial's params for its line: "lr 0.002, window_size 7x7, ..."; an ablation cell by its setting and seed
    ("setting none, seed 0"), since a run without a bias still carries the window and bias type of its config."""
    from sweeps.ablate import ENABLED, SEED

    if ENABLED in params:
        rest = {k: v for k, v in params.items() if k == SEED or not k.startswith(("model.rpb.", "model.pos_embed"))}
        params = {"setting": trial_setting(params).label, **rest}
    return ", ".join(f"{name.split('.')[-1]} {format_number(value)}" for name, value in params.items())
