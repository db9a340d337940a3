"""The end of a sweep: a rich summary table and the best trial's config as a YAML `rpb-train` runs as it is."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from experiments.config import to_yaml
from sweeps.config import check_sweep
from sweeps.objective import TrialSpec, trial_config
from sweeps.storage import describe_storage


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting) plus `diverged` (pruned trials that diverged)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    counts["diverged"] = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    return {k: counts.get(k, 0) for k in ("complete", "pruned", "fail", "running", "waiting", "diverged")}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def best_config(cfg: DictConfig, trial: FrozenTrial) -> DictConfig:
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


def write_best_config(cfg: DictConfig, study: optuna.Study) -> Path | None:
    """`<output_dir>/<study_name>/best.yaml` (a Hydra primary config over conf/train.yaml); None without a best."""
    trial = best_trial(study)
    if trial is None:
        return None
    sweep = check_sweep(cfg)[0]
    body = OmegaConf.to_container(best_config(cfg, trial), resolve=True)
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


def print_summary(cfg: DictConfig, study: optuna.Study, console=None, top: int = 10) -> Path | None:
    """Print the study's table (best trial, params, value, state counts, top trials); write best.yaml."""
    from rich.console import Console
    from rich.table import Table

    # Piped output (logs, CI) gets a wide table instead of rich's 80-column default.
    console = console or (Console() if sys.stdout.isatty() else Console(width=140))
    sweep = check_sweep(cfg)[0]
    counts = state_counts(study)
    best = best_trial(study)
    table = Table(title=f"Study {sweep.study_name} — {describe_storage(sweep)}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row(
        "trials",
        f"{counts['complete']} complete, {counts['pruned']} pruned ({counts['diverged']} diverged), "
        f"{counts['fail']} failed"
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

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    done = sorted(
        (t for t in trials if t.value is not None or t.intermediate_values),
        key=lambda t: t.value if t.value is not None else max(t.intermediate_values.values()),
        reverse=sweep.direction == "maximize",
    )
    if done:
        names = list(best.params) if best is not None else list(done[0].params)
        tt = Table(title=f"Top {min(top, len(done))} trials")
        for col in ("#", "state", sweep.metric, "epochs", *names):
            tt.add_column(col.split(".")[-1] if "." in col else col, justify="right")
        for t in done[:top]:
            value = t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)]
            state = t.user_attrs.get("status") if t.state == TrialState.PRUNED else t.state.name.lower()
            tt.add_row(
                str(t.number),
                str(state),
                f"{value:.4f}",
                str(len(t.intermediate_values)),
                *(_fmt(t.params.get(n, "")) for n in names),
            )
        console.print(tt)
    path = write_best_config(cfg, study)
    if path is not None:
        console.print(f"Best config: {path}\nTrain it:    rpb-train --config-dir={path.parent} --config-name=best")
    return path
