"""The end of a sweep: a rich summary table and the best trial's config as a YAML `rpb-train` runs as it is."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from experiments.config import to_yaml
from sweeps.config import CheckedSweep, check_sweep
from sweeps.objective import TrialSpec, trial_config
from sweeps.storage import describe_storage


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting) plus `diverged` (pruned trials that diverged)
    and `retried` (failed trials a later trial retries: killed workers, Ctrl-C)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    counts["diverged"] = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counts["retried"] = sum(t.state == TrialState.FAIL and t.number in retried for t in trials)
    keys = ("complete", "pruned", "fail", "running", "waiting", "diverged", "retried")
    return {k: counts.get(k, 0) for k in keys}


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


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


def print_summary(cfg: DictConfig | CheckedSweep, study: optuna.Study, console=None, top: int = 10) -> Path | None:
    """Print the study's table (best trial, params, value, state counts, top complete trials, pruned trials apart);
    write best.yaml."""
    from rich.console import Console
    from rich.table import Table

    # Piped output (logs, CI) gets a wide table instead of rich's 80-column default.
    console = console or (Console() if sys.stdout.isatty() else Console(width=140))
    checked = check_sweep(cfg)
    sweep = checked.sweep
    counts = state_counts(study)
    best = best_trial(study)
    table = Table(title=f"Study {sweep.study_name} — {describe_storage(sweep)}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row(
        "trials",
        f"{counts['complete']} complete, {counts['pruned']} pruned ({counts['diverged']} diverged), "
        f"{counts['fail']} failed"
        + (f" ({counts['retried']} retried)" if counts["retried"] else "")
        + (f", {counts['running']} running" if counts["running"] else "")
        + (f", {counts['waiting']} waiting" if counts["waiting"] else ""),
    )
    if best is None:
        table.add_row("best", "no complete trial yet")
    else:
        table.add_row("best trial", f"#{best.number}: {sweep.metric} = {best.value:.4f} ({sweep.direction})")
        for name, value in best.params.items():
            table.add_row(f"  {name}", _fmt(value))
        table.add_row("run dir", str(best.user_attrs.get("run_dir", "")))
        table.add_row("W&B run", str(best.user_attrs.get("wandb_run_id", "")))
    console.print(table)

    complete, pruned = ranked_trials(study, sweep.direction)
    names = [d.path for d in checked.dims]
    for title, trials, value_of in (
        (f"Top {min(top, len(complete))} complete trials, ranked by {sweep.metric}", complete[:top], lambda t: t.value),
        (f"Pruned trials (stopped early, not ranked): last reported {sweep.metric}", pruned[:top], _last_value),
    ):
        if not trials:
            continue
        tt = Table(title=title)
        for col in ("#", "state", sweep.metric, "epochs", *names):
            tt.add_column(col.split(".")[-1] if "." in col else col, justify="right")
        for t in trials:
            state = t.user_attrs.get("status") if t.state == TrialState.PRUNED else t.state.name.lower()
            tt.add_row(
                str(t.number),
                str(state),
                f"{value_of(t):.4f}",
                str(len(t.intermediate_values)),
                *(_fmt(t.params.get(n, "")) for n in names),
            )
        console.print(tt)
    path = write_best_config(checked, study)
    if path is not None:
        console.print(f"Best config: {path}\nTrain it:    rpb-train --config-dir={path.parent} --config-name=best")
    return path
