"""The trial record: a trial's statuses and the attribute keys this project writes on trials and studies.

The bottom of the sweeps stack. Every module that writes a study (objective, recovery, samplers, worker, identity,
the ablation) or reads one (summary, api, pruners, dashboards) spells a status or an attribute key through here, so a
reader of the storage (optuna-dashboard, `study.trials_dataframe()`) finds the names this file lists.

    TrialStatus, STALE, DUPLICATE    a run's statuses (`experiments.result`: completed ... failed) and a trial's own
    COMPLETE_STATUSES ... KILLED     the groups the sweep acts on
    TrialAttr, StudyAttr, SystemAttr the keys of trial user attrs, study user attrs and trial system attrs
    Origin                           where a trial's parameters come from (`trial_origin`)

A trial's user attrs in the order its life writes them: `cell` / `enqueued` (when enqueued); `worker` in the write
that creates it or, for a queued trial, right after it is taken (`sweeps.optuna_internals.WorkerStudy`: a RUNNING
trial without a worker is one recovery can never tell dead); then, in one write before training, `origin`,
`resumed_from` (a retry that continues a checkpoint), `run_dir`, `wandb_run_id` and `status` "running" (with the
system attr `draw_index`); then, in one write when it ends, `status`, `reason` (where there is one) and
`epochs_run` (`run_dir` / `wandb_run_id` again only where training changed them). A retry carries its original's
attrs but status, reason, worker and W&B run, plus `retry_of` and `retry_reason`.

Only optuna's types, the standard library and `experiments.result` (standard library only) are imported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal, get_args

from optuna.trial import FrozenTrial

from experiments.result import (
    COMPLETE_STATUSES,
    COMPLETED,
    DIVERGED,
    EARLY_STOPPED,
    FAILED,
    FINAL_STATUSES,
    INTERRUPTED,
    PRUNED,
    RUNNING,
    RunStatus,
)

__all__ = [
    "COMPLETED",
    "COMPLETE_STATUSES",
    "DIVERGED",
    "DUPLICATE",
    "EARLY_STOPPED",
    "FAILED",
    "FINISHED_STATUSES",
    "INTERRUPTED",
    "KILLED_STATUSES",
    "PRUNED",
    "PRUNED_STATUSES",
    "RUNNING",
    "STALE",
    "TRIAL_STATUSES",
    "Origin",
    "StudyAttr",
    "SystemAttr",
    "TrialAttr",
    "TrialStatus",
    "retried_numbers",
    "retry_history",
    "trial_origin",
]

# --- statuses (user_attrs["status"]) ------------------------------------------------------------------------------
TrialStatus = Literal[RunStatus, "stale", "duplicate"]
STALE: Final = "stale"  # its worker died (a dead pid, no heartbeat): failed by sweeps.recovery and retried
DUPLICATE: Final = "duplicate"  # refused before training: an earlier trial holds its params, cell or retry
TRIAL_STATUSES: tuple[TrialStatus, ...] = get_args(TrialStatus)

# train() statuses that end a trial early; a diverged trial is pruned (so samplers learn to avoid its region).
PRUNED_STATUSES: tuple[RunStatus, ...] = (PRUNED, DIVERGED)
# A trial's result: COMPLETE (COMPLETE_STATUSES) or PRUNED (PRUNED_STATUSES) in Optuna.
FINISHED_STATUSES: tuple[RunStatus, ...] = FINAL_STATUSES
# Stopped from outside (Ctrl-C, a dead worker): its retry is enqueued (`sweeps.recovery`).
KILLED_STATUSES: tuple[TrialStatus, ...] = (INTERRUPTED, STALE)


# --- attribute keys -----------------------------------------------------------------------------------------------
class TrialAttr:
    """Keys of a trial's user attrs (`trial.user_attrs[TrialAttr.STATUS]`)."""

    CELL: Final = "cell"  # int: the grid cell an enqueued trial runs (sweeps.worker)
    ENQUEUED: Final = "enqueued"  # "defaults" | "config": why a searched study's first trial was enqueued
    WORKER: Final = "worker"  # {"host", "pid", "start"} of the process running it (sweeps.recovery.worker_identity)
    ORIGIN: Final = "origin"  # an `Origin`
    RESUMED_FROM: Final = "resumed_from"  # the run dir of the killed attempt whose checkpoint it continues
    RUN_DIR: Final = "run_dir"  # the run folder (experiments.run_dir.RunDir)
    WANDB_RUN_ID: Final = "wandb_run_id"
    STATUS: Final = "status"  # a TrialStatus
    REASON: Final = "reason"  # one line: why it ended so ("" while it runs)
    EPOCHS_RUN: Final = "epochs_run"
    RETRY_OF: Final = "retry_of"  # on a retry: the number of the trial it replaces
    RETRY_REASON: Final = "retry_reason"  # on a retry: why that trial was retried


class StudyAttr:
    """Keys of a study's user attrs (`study.user_attrs[StudyAttr.KIND]`), written when it is created."""

    KIND: Final = "kind"  # "sweep" | "ablation"
    METRIC: Final = "metric"  # sweep.metric (the trials' value)
    OUTPUT_DIR: Final = "output_dir"
    CREATOR: Final = "creator"  # worker identity of the process that created it
    QUEUED: Final = "queued"  # the number of first trials the creator enqueued (set once they all are)
    IDENTITY: Final = "identity"  # what its values mean (sweeps.identity)
    IDENTITY_CHANGES: Final = "identity_changes"  # [{"from_trial", "changes"}] allowed by sweep.allow_space_change
    BASELINE: Final = "baseline"  # an ablation's baseline setting (rpb-report's default)


class SystemAttr:
    """Keys of a trial's system attrs this project writes or reads (Optuna's own names where Optuna writes them)."""

    DRAW_INDEX: Final = "draw_index"  # its place in the study's draws where not its number (sweeps.samplers); a retry keeps it
    RETRY_HISTORY: Final = "retry_history"  # the trials a retry replaces, oldest first (Optuna's retry callbacks)
    FAILED_TRIAL: Final = "failed_trial"  # the original a retry replaces (Optuna's retry callbacks)
    FIXED_PARAMS: Final = "fixed_params"  # Optuna's: the params `study.enqueue_trial` fixed


Origin = Literal["sampled", "enqueued", "retry"]
SAMPLED: Final = "sampled"
ENQUEUED: Final = "enqueued"  # a grid cell, the defaults, sweep.enqueue
RETRY: Final = "retry"  # of a killed or interrupted trial


# --- reading a trial's record -------------------------------------------------------------------------------------
def trial_origin(system_attrs: dict[str, Any]) -> Origin:
    """Where a trial's parameters come from: "retry" (of a killed or interrupted trial), "enqueued" (a grid
    cell, the defaults, sweep.enqueue) or "sampled"."""
    if SystemAttr.RETRY_HISTORY in system_attrs or SystemAttr.FAILED_TRIAL in system_attrs:
        return RETRY
    return ENQUEUED if SystemAttr.FIXED_PARAMS in system_attrs else SAMPLED


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials `trial` retries, oldest first ([] for a trial that retries none)."""
    return list(trial.system_attrs.get(SystemAttr.RETRY_HISTORY) or [])


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of the trials some trial of `trials` retries."""
    return {n for t in trials for n in retry_history(t)}
