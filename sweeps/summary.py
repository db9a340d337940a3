"""The end of a sweep: a rich summary table and the best trial's config as a YAML `rpb-train` runs as it is.

Tables fit the terminal (`sweeps.format`): numbers at a few significant digits, and the columns that do not fit are
dropped by priority and named under the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from experiments.config import to_yaml
from sweeps.config import CheckedSweep, check_sweep
from sweeps.format import console_for, format_number, print_fitted, short_names
from sweeps.objective import TrialSpec, last_value, trial_config
from sweeps.record import DIVERGED, INTERRUPTED, TrialAttr, retried_numbers
from sweeps.storage import describe_storage


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting) plus `diverged` (pruned trials that diverged)
    and `retried` (failed trials a later trial retries: killed workers, Ctrl-C)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    counts["diverged"] = sum(t.user_attrs.get(TrialAttr.STATUS) == DIVERGED for t in trials)
    retried = retried_numbers(trials)
    counts["retried"] = sum(t.state == TrialState.FAIL and t.number in retried for t in trials)
    keys = ("complete", "pruned", "fail", "running", "waiting", "diverged", "retried")
    return {k: counts.get(k, 0) for k in keys}


def interrupted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Failed trials stopped by Ctrl-C or SIGTERM (status "interrupted") that no later trial has retried yet: the
    next run of the study retries each from its checkpoint."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return [t for t in trials if t.user_attrs.get(TrialAttr.STATUS) == INTERRUPTED and t.number not in retried]


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
    wb = out.tracker.get("wandb")
    if wb is not None:
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
    pruned.sort(key=lambda t: last_value(t), reverse=reverse)
    return complete, pruned


def print_summary(cfg: DictConfig | CheckedSweep, study: optuna.Study, console=None, top: int = 10) -> Path | None:
    """Print the study's table (best trial, params, value, state counts, top complete trials, pruned trials apart),
    fitted to the terminal's width; write best.yaml."""
    from rich.table import Table  # deferred: rich is needed only where a table is printed

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
        table.add_row("run dir", str(best.user_attrs.get(TrialAttr.RUN_DIR, "")))
        table.add_row("W&B run", str(best.user_attrs.get(TrialAttr.WANDB_RUN_ID, "")))
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
            last_value,
        ),
    ):
        if not trials:
            continue
        rows = []
        for t in trials:
            state = t.user_attrs.get(TrialAttr.STATUS) if t.state == TrialState.PRUNED else t.state.name.lower()
            rows.append(
                [str(t.number), str(state), format_number(value_of(t), 4), str(len(t.intermediate_values))]
                + [format_number(t.params.get(n, "")) for n in names]
            )
        print_fitted(console, title, columns, rows)
    path = write_best_config(checked, study)
    if path is not None:
        # soft_wrap: a command is printed whole (the terminal wraps it), so it can be copied as it is
        console.print(f"Best config: {path}\nTrain it:    rpb-train --config-dir={path.parent} --config-name=best",
                      soft_wrap=True)  # fmt: skip
    return path


def _more(top: int, trials: Sequence) -> str:
    """A table title's note when it keeps only the first `top` of `trials`: " (10 of 14 shown)"."""
    return f" ({top} of {len(trials)} shown)" if len(trials) > top else ""
