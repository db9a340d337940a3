"""Trials of dead workers on storages without heartbeats (the journal file).

Every trial records the worker that runs it (`user_attrs["worker"]`: host, pid, process start time). A RUNNING
trial whose worker is on this host and no longer alive (or whose pid now belongs to another process) is stale:
it is failed with its reason and its params are enqueued again, with the old run dir so the retry can resume
from its last checkpoint. Failing goes through the storage, so of two workers reaping at once only one wins.
"""

from __future__ import annotations

import logging
import os
import socket

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil  # accelerate depends on it

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


def worker_identity() -> dict:
    """This process as stored on its trials."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start_time(pid)}


def worker_alive(worker: dict) -> bool | None:
    """True/False for a worker on this host; None when it runs elsewhere (its liveness is unknown here)."""
    if worker.get("host") != socket.gethostname():
        return None
    pid = int(worker.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = worker.get("start")
    now = _process_start_time(pid)
    # A recycled pid belongs to a younger process.
    return not (started is not None and now is not None and abs(now - started) > 1.0)


def retry_attrs(trial: FrozenTrial, reason: str) -> tuple[dict, dict]:
    """User and system attrs of the retry of `trial` (same shape as Optuna's RetryHeartbeatStaleTrialCallback)."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number)}
    system_attrs["retry_history"] = history
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("status", "reason", "worker", "wandb_run_id")}
    user_attrs["retry_of"] = trial.number
    user_attrs["retry_reason"] = reason
    return user_attrs, system_attrs


def fail_dead_worker_trials(study: optuna.Study, max_retry: int | None = 2, all_running: bool = False) -> list[int]:
    """Fail the RUNNING trials whose worker died, enqueue their params again; returns the failed trial numbers.

    Args:
        study: the study to clean.
        max_retry: how often one original trial is retried (None: always).
        all_running: treat every RUNNING trial as stale (a command that knows no worker of the study is alive).
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        alive = False if all_running else worker_alive(worker)
        if alive is not False:
            continue
        reason = f"worker {worker.get('host', '?')}:{worker.get('pid', '?')} died while the trial was running"
        storage, trial_id = study._storage, trial._trial_id
        try:
            storage.set_trial_user_attr(trial_id, "status", "stale")
            storage.set_trial_user_attr(trial_id, "reason", reason)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker reaped it first
            continue
        failed.append(trial.number)
        log.warning("trial %d: %s; failed it", trial.number, reason)
        retries = len(trial.system_attrs.get("retry_history", []))
        if max_retry is not None and retries >= max_retry:
            log.warning("trial %d: retried %d times already; not enqueued again", trial.number, retries)
            continue
        user_attrs, system_attrs = retry_attrs(trial, reason)
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )
    return failed
