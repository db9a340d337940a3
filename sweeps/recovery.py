"""Trials of dead workers on storages without heartbeats (the journal file), and trials stopped with Ctrl-C.

Every trial records the worker that runs it (`user_attrs["worker"]`: host, pid, process start time). A RUNNING
trial whose worker is on this host and no longer alive (a zombie counts as dead, or whose pid now belongs to another
process) is stale: it is failed with its reason and its params are enqueued again, with the old run dir and its
reported values so the retry can resume from its last checkpoint. Failing goes through the storage, so of two
workers reaping at once only one wins. A trial interrupted with Ctrl-C is enqueued again the same way when the
study's command starts next.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import socket
import time
from typing import Any

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from sweeps.optuna_internals import set_trial_attrs, storage_of, trial_id
from sweeps.record import INTERRUPTED, KILLED_STATUSES, STALE, SystemAttr, TrialAttr, retried_numbers, retry_history
from sweeps.samplers import draw_index

log = logging.getLogger(__name__)
# What a retry does not carry over from the trial it replaces: the attempt's own outcome, process and W&B run.
_NOT_RETRIED = (TrialAttr.STATUS, TrialAttr.REASON, TrialAttr.WORKER, TrialAttr.WANDB_RUN_ID)


def _process_start_time(pid: int) -> float | None:
    try:
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
    try:  # a killed child its parent has not joined yet is a zombie: kill(pid, 0) succeeds on it
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: alive as far as this host can tell
        pass
    started = worker.get("start")
    now = _process_start_time(pid)
    # A recycled pid belongs to a younger process.
    return not (started is not None and now is not None and abs(now - started) > 1.0)


def retry_attrs(trial: FrozenTrial, reason: str) -> tuple[dict, dict]:
    """User and system attrs of the retry of `trial` (same shape as Optuna's RetryHeartbeatStaleTrialCallback)."""
    history = [*trial.system_attrs.get(SystemAttr.RETRY_HISTORY, []), trial.number]
    failed = trial.system_attrs.get(SystemAttr.FAILED_TRIAL, trial.number)
    system_attrs = {**trial.system_attrs, SystemAttr.FAILED_TRIAL: failed, SystemAttr.RETRY_HISTORY: history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _NOT_RETRIED}
    user_attrs[TrialAttr.RETRY_OF] = trial.number
    user_attrs[TrialAttr.RETRY_REASON] = reason
    return user_attrs, system_attrs


def _enqueue_retry(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """A WAITING copy of `trial`: same params (and grid cell), its run dir to resume from, its reported values,
    its draw index (counted here for a first attempt killed before it recorded one)."""
    user_attrs, system_attrs = retry_attrs(trial, reason)
    if SystemAttr.DRAW_INDEX not in system_attrs and not retry_history(trial):
        system_attrs[SystemAttr.DRAW_INDEX] = draw_index(study, trial)
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
            intermediate_values=trial.intermediate_values,  # as RetryHeartbeatStaleTrialCallback on RDB storages
        )
    )


def _retry_unless_exhausted(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int | None) -> None:
    """Enqueue the retry of a failed `trial` unless its original was retried `max_retry` times already."""
    retries = len(retry_history(trial))
    if max_retry is not None and retries >= max_retry:
        log.warning("trial %d: retried %d times already; not enqueued again", trial.number, retries)
        return
    _enqueue_retry(study, trial, reason)


class RetryStaleTrial:
    """`heartbeat_stale_trial_callback` of RDB storages: the stale trial's retry, enqueued as on journal files.

    Optuna's `RetryHeartbeatStaleTrialCallback` copies every user attr (the dead worker, its W&B run, status
    "running"); this one makes the same retry as `fail_dead_worker_trials`, so both storages keep one record shape.
    """

    def __init__(self, max_retry: int | None = 2):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = trial.user_attrs.get(TrialAttr.REASON) or "no heartbeat for the grace period"
        log.warning("trial %d: %s; failed it", trial.number, reason)
        _retry_unless_exhausted(study, trial, reason, self.max_retry)


def _orphaned(trial: FrozenTrial, grace_period: float) -> bool:
    """A RUNNING trial no worker recorded itself on for `grace_period` s: its worker died between taking it from
    the queue and its first write (no pid to check, no heartbeat row to go stale)."""
    start = trial.datetime_start
    return (
        not trial.user_attrs.get(TrialAttr.WORKER)
        and start is not None
        and (datetime.datetime.now() - start).total_seconds() > grace_period
    )


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int | None) -> bool:
    """Mark `trial` stale with `reason`, fail it and enqueue its retry; False when another process failed it first.

    Failing goes through the storage (RUNNING -> FAIL happens once), so of several processes reaping the same
    trial only one enqueues its retry.
    """
    storage, stored_id = storage_of(study), trial_id(trial)
    try:
        set_trial_attrs(storage, stored_id, {TrialAttr.STATUS: STALE, TrialAttr.REASON: reason})
        if not storage.set_trial_state_values(stored_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:  # another worker reaped it first
        return False
    log.warning("trial %d: %s; failed it", trial.number, reason)
    _retry_unless_exhausted(study, trial, reason, max_retry)
    return True


def fail_dead_worker_trials(study: optuna.Study, max_retry: int | None = 2, grace_period: float = 60) -> list[int]:
    """Fail the RUNNING trials whose worker died, enqueue their params again; returns the failed trial numbers.

    Dead: a worker on this host that is gone (journal files), or no worker recorded for `grace_period` s (any
    storage: see `_orphaned`).

    Args:
        study: the study to clean.
        max_retry: how often one original trial is retried (None: always).
        grace_period: seconds after which a trial without a recorded worker is taken for orphaned.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(TrialAttr.WORKER) or {}
        if _orphaned(trial, grace_period):
            reason = f"no worker started the trial within {grace_period:g} s of taking it (it died first)"
        elif worker and worker_alive(worker) is False:
            reason = f"worker {worker.get('host', '?')}:{worker.get('pid', '?')} died while the trial was running"
        else:
            continue
        if fail_and_retry(study, trial, reason, max_retry):
            failed.append(trial.number)
    return failed


class StaleMarkingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose stale-trial query (`_get_stale_trial_ids`, the trials Optuna's `fail_stale_trials`
    fails) gives each stale trial its status ("stale") and reason while it is still RUNNING, the only time they can
    be written, and reaches the database at most once per heartbeat interval.

    Optuna runs that query before every trial a worker starts (on PostgreSQL ~4 ms of wall time a trial, and this
    project marked the trials with one more: `sweeps.bench_overhead`). A trial turns stale only after
    `grace_period` s without a heartbeat, so a check once per `heartbeat_interval` finds it at most one interval
    later; in between the query answers [] without a round trip. The check is per process (each worker checks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stale_due: dict[int, float] = {}  # study id -> time.monotonic() of its next check

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        if self.heartbeat_interval is None or now < self._stale_due.get(study_id, -math.inf):
            return []
        self._stale_due[study_id] = now + self.heartbeat_interval
        stale = super()._get_stale_trial_ids(study_id)
        for stale_id in stale:
            worker = self.get_trial(stale_id).user_attrs.get(TrialAttr.WORKER) or {}
            reason = f"worker {worker.get('host', '?')}:{worker.get('pid', '?')} sent no heartbeat for the grace period"
            try:
                set_trial_attrs(self, stale_id, {TrialAttr.STATUS: STALE, TrialAttr.REASON: reason})
            except UpdateFinishedTrialError:  # failed meanwhile by another worker
                continue
        return stale


def requeue_unretried_trials(study: optuna.Study, max_retry: int | None = 2, settle_s: float = 30) -> list[int]:
    """Enqueue again the trials stopped with Ctrl-C, and the stale ones whose retry was never enqueued (the process
    that failed them died in between), that have no retry yet; returns their numbers.

    The failed trial stays FAIL: its WAITING copy keeps its grid cell or enqueued params and resumes from its run
    dir. Interrupts are the user's, so `max_retry` does not limit them. A stale trial is repaired only `settle_s`
    after it was failed (the process that failed it enqueues the retry at once); should two starts repair the
    same trial, `sweeps.objective` lets only the first retry train.
    """
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    now = datetime.datetime.now()
    requeued = []
    for trial in trials:
        status = trial.user_attrs.get(TrialAttr.STATUS)
        if trial.state != TrialState.FAIL or trial.number in retried or status not in KILLED_STATUSES:
            continue
        if status == STALE:
            done = trial.datetime_complete
            retries = len(retry_history(trial))
            if (
                done is None
                or (now - done).total_seconds() < settle_s
                or (max_retry is not None and retries >= max_retry)
            ):
                continue
        _enqueue_retry(
            study,
            trial,
            "interrupted with Ctrl-C" if status == INTERRUPTED else trial.user_attrs.get(TrialAttr.REASON, STALE),
        )
        requeued.append(trial.number)
    if requeued:
        log.info("trial(s) %s were stopped without a retry; enqueued again", requeued)
    return requeued
