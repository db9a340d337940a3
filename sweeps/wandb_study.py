"""The study's own W&B run at the end of a sweep: a table of its trials and the best trial's best.yaml as an artifact.

One short run per `rpb-sweep` command that ran trials, opened only where W&B is the configured tracker
(`tracker.wandb`, enabled, mode offline or online): job_type "study", in the study's group beside its trials'
runs, written under `<output_dir>/<study_name>/wandb` (offline: `wandb sync` uploads it with the trials).

    run.summary["trials"]                the table: one row per trial (`TRIAL_COLUMNS`, then one column per param)
    artifact <study>-best-config         type "config", best.yaml of the best complete trial (alias "best")
    run.summary                          trials per state, best_trial, best_value
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial

from experiments.trackers.common import scalar_or_text
from experiments.trackers.wandb_tracker import WandbTracker, log_file_artifact, open_run
from experiments.tracking import instantiate_tracker
from sweeps.config import CheckedSweep
from sweeps.objective import last_value
from sweeps.record import TrialAttr
from sweeps.summary import best_trial, state_counts

STUDY_JOB_TYPE = "study"
TABLE_KEY = "trials"
CONFIG_ARTIFACT_TYPE = "config"
# Before the params' columns; value is Optuna's (a complete trial's), last_value the last one reported (pruned too).
TRIAL_COLUMNS = ("number", "state", "status", "value", "last_value", "epochs", "run_dir", "wandb_run_id")


def study_wandb(base: DictConfig) -> WandbTracker | None:
    """The W&B tracker the trials log to (its mode, project, tags), None where W&B is not configured or records
    nothing (`tracker=none`, `tracker.wandb.enabled=false`, mode disabled)."""
    entry = OmegaConf.select(base, "tracker.wandb")
    if entry is None:
        return None
    tracker = instantiate_tracker("wandb", OmegaConf.to_container(entry, resolve=True))
    return tracker if isinstance(tracker, WandbTracker) and tracker.records else None


def trial_rows(trials: Sequence[FrozenTrial], params: Sequence[str]) -> list[list[Any]]:
    """One row per trial: `TRIAL_COLUMNS`, then the value of each of `params` (None where a trial has none)."""
    rows = []
    for t in trials:
        attrs = t.user_attrs
        row = [t.number, t.state.name.lower(), attrs.get(TrialAttr.STATUS), t.value, last_value(t),
               attrs.get(TrialAttr.EPOCHS_RUN, len(t.intermediate_values)), attrs.get(TrialAttr.RUN_DIR),
               attrs.get(TrialAttr.WANDB_RUN_ID)]  # fmt: skip
        rows.append([scalar_or_text(v) for v in (*row, *(t.params.get(p) for p in params))])
    return rows


def param_columns(checked: CheckedSweep, trials: Sequence[FrozenTrial]) -> list[str]:
    """The searched params in the sweep's order, then any other a trial holds (a space changed on the way)."""
    names = [d.path for d in checked.dims]
    return names + sorted({p for t in trials for p in t.params} - set(names))


def artifact_name(text: str) -> str:
    """`text` as a W&B artifact name (letters, digits, "-", "_", "." only)."""
    return re.sub(r"[^\w.-]+", "-", text)


def log_study_run(checked: CheckedSweep, study: optuna.Study, best_yaml: Path | None) -> str | None:
    """Log the study's trials as a W&B table, and `best_yaml` as a "config" artifact, in a run of its own.

    Returns:
        The W&B run's id; None where W&B is not the configured tracker (nothing is written).
    """
    tracker = study_wandb(checked.base)
    if tracker is None:
        return None
    import wandb  # optional and ~1 s to import: deferred on purpose, W&B is configured

    sweep = checked.sweep
    trials = study.get_trials(deepcopy=False)
    params = param_columns(checked, trials)
    init_kwargs = {**tracker.init_kwargs, "group": sweep.study_name, "job_type": STUDY_JOB_TYPE, "id": None,
                   "name": f"{sweep.study_name}-study"}  # fmt: skip
    config = {"study_name": sweep.study_name, "metric": sweep.metric, "direction": sweep.direction,
              "sweep": OmegaConf.to_container(sweep, resolve=True)}  # fmt: skip
    folder = Path(sweep.output_dir) / sweep.study_name
    run = open_run(tracker.mode, folder, config, tags=[*tracker.tags, f"study-{sweep.study_name}"],
                   verbose=tracker.verbose, **init_kwargs)  # fmt: skip
    try:
        table = wandb.Table(columns=[*TRIAL_COLUMNS, *params], data=trial_rows(trials, params), allow_mixed_types=True)
        run.log({TABLE_KEY: table})
        run.summary.update({f"trials_{state}": n for state, n in state_counts(study).items()})
        best = best_trial(study)
        if best is not None:
            run.summary.update({"best_trial": best.number, "best_value": best.value})
        if best is not None and best_yaml is not None:
            log_file_artifact(
                run,
                best_yaml,
                name=artifact_name(f"{sweep.study_name}-best-config"),
                type=CONFIG_ARTIFACT_TYPE,
                aliases=["best"],
                metadata={
                    "study_name": sweep.study_name,
                    "trial": best.number,
                    "metric": sweep.metric,
                    "value": best.value,
                    "run_dir": best.user_attrs.get(TrialAttr.RUN_DIR),
                },
            )
    finally:
        run.finish()
    return run.id
