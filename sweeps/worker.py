"""One worker's part in a study: join it (create it once, check its identity, recover dead workers' trials) and run
trials until the study has nothing left for it.

`prepare_study` is run once per command, by the process that owns the study; `worker_loop` by every worker, local
process or cluster job, and under a multi-process launch on every rank (rank 0 runs the loop, the others follow it,
`sweeps.distributed`). `done_message` says why a study has nothing left to run. The record stays true under all of
them (see `sweeps.samplers` and `sweeps.recovery`).
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps import distributed
from sweeps.config import (
    CheckedSweep,
    build_pruner,
    build_sampler,
    check_sweep,
    grid_cells,
    is_cell_study,
    load_train_fn,
    study_class,
)
from sweeps.identity import check_identity
from sweeps.objective import Objective, TrainFn, quiet_optuna
from sweeps.optuna_internals import split_read
from sweeps.record import DUPLICATE, FINISHED_STATUSES, StudyAttr, TrialAttr
from sweeps.recovery import (
    fail_dead_worker_trials,
    requeue_unretried_trials,
    worker_alive,
    worker_identity,
)
from sweeps.samplers import NothingQueued, cell_order, exhausted
from sweeps.space import config_params
from sweeps.storage import build_storage, journal_path
from sweeps.validate import check_trial_values

log = logging.getLogger(__name__)
QUEUED_ATTR = StudyAttr.QUEUED  # the creator enqueued the first trials (their count)
_QUEUE_WAIT_S = 120.0  # how long a joining worker waits for the creator to enqueue a grid's cells
_POLL_S = 1.0
# How often a worker looks for dead workers' trials between its own (at its start, and while it waits, every
# _POLL_S): trials shorter than this would otherwise pay the storage reads of a recovery each (on RDB 3 queries).
_RECOVER_EVERY_S = 1.0
_RESULTS = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyAlreadyDone(Exception):
    """The study of this command has nothing left to run (the message says what it holds and what to change)."""

    def __init__(self, message: str, study: optuna.Study):
        super().__init__(message)
        self.study = study


def open_study(checked: CheckedSweep, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The existing study of `checked`, with this sweep's sampler and pruner (a `CellStudy` for grids), recording
    this process as the worker of every trial it takes."""
    sweep, base, dims = checked
    return study_class(sweep)(
        study_name=sweep.study_name,
        storage=storage or build_storage(sweep),
        sampler=build_sampler(sweep, dims),
        pruner=build_pruner(sweep, base.trainer.epochs),
        worker_attrs={TrialAttr.WORKER: worker_identity()},
    )


def _first_trials(checked: CheckedSweep) -> list[tuple[dict, dict]]:
    """(params, user attrs) of a new study's enqueued trials: a grid's cells, else defaults and `sweep.enqueue`."""
    sweep, base, dims = checked
    if is_cell_study(sweep):
        cells = grid_cells(sweep, dims)
        return [(cells[i], {TrialAttr.CELL: i}) for i in cell_order(cells, sweep.sampler.seed)]
    first = []
    if sweep.enqueue_defaults:
        first.append((config_params(dims, base), {TrialAttr.ENQUEUED: "defaults"}))
    first += [(dict(p), {TrialAttr.ENQUEUED: "config"}) for p in sweep.enqueue]
    return first


def _enqueue_first_trials(study: optuna.Study, checked: CheckedSweep, *, missing_only: bool) -> None:
    """Enqueue the first trials; `missing_only` (repairing a creator that died half-way): cells with no trial yet."""
    held = {t.user_attrs.get(TrialAttr.CELL) for t in study.get_trials(deepcopy=False)} if missing_only else set()
    trials = _first_trials(checked)
    for params, attrs in trials:
        if TrialAttr.CELL in attrs and attrs[TrialAttr.CELL] in held:
            continue
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=missing_only and TrialAttr.CELL not in attrs)
    study.set_user_attr(QUEUED_ATTR, len(trials))


def _wait_for_creator(study: optuna.Study, checked: CheckedSweep) -> None:
    """A worker joining a study another process has just created waits until its first trials are enqueued."""
    deadline = time.monotonic() + _QUEUE_WAIT_S
    while QUEUED_ATTR not in study.user_attrs:
        creator = study.user_attrs.get(StudyAttr.CREATOR) or {}
        if worker_alive(creator) is False or time.monotonic() > deadline:
            log.warning("study %s: its creator stopped before enqueuing its first trials; enqueuing them here",
                        study.study_name)  # fmt: skip
            _enqueue_first_trials(study, checked, missing_only=True)
            return
        time.sleep(_POLL_S)


def _create(checked: CheckedSweep, storage: optuna.storages.BaseStorage) -> bool:
    """Create the study unless it exists; True for the one process (of any number racing) that created it."""
    sweep = checked.sweep
    try:
        optuna.create_study(study_name=sweep.study_name, storage=storage, direction=sweep.direction)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def recover(study: optuna.Study, sweep) -> None:
    """Fail the trials of dead workers and enqueue their retries (journal: by pid; RDB: by heartbeat; both: a
    trial no worker recorded itself on for sweep.grace_period s)."""
    if journal_path(sweep.storage, sweep.output_dir, sweep.study_name) is None:  # (marked: StaleMarkingRDBStorage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    fail_dead_worker_trials(study, sweep.max_retry, sweep.grace_period)


def prepare_study(cfg) -> optuna.Study:
    """Check everything, create the study once (or join it), check its identity, recover dead workers' trials.

    Raises:
        SweepConfigError / ConfigError: one sentence, before any trial starts (a bad sweep, an unreachable
            storage, a sweep that differs from the study it names).
    """
    checked = check_sweep(cfg)
    sweep, base, dims = checked
    storage = build_storage(sweep)  # before the slower model checks: an unreachable database is said at once
    check_trial_values(base, sweep, dims)
    created = _create(checked, storage)
    study = open_study(checked, storage)
    if created:
        study.set_user_attr(StudyAttr.CREATOR, worker_identity())
        for key, value in (
            (StudyAttr.KIND, sweep.kind),
            (StudyAttr.METRIC, sweep.metric),
            (StudyAttr.OUTPUT_DIR, sweep.output_dir),
        ):
            study.set_user_attr(key, value)
        with warnings.catch_warnings():  # experimental since Optuna 3.2; labels the objective in optuna-dashboard
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([sweep.metric])
    check_identity(study, checked)
    if created:
        _enqueue_first_trials(study, checked, missing_only=False)
    elif QUEUED_ATTR not in study.user_attrs and (StudyAttr.CREATOR in study.user_attrs or not study.trials):
        _wait_for_creator(study, checked)  # (a study from before this rule has trials and no creator: as it is)
    recover(study, sweep)
    requeue_unretried_trials(study, sweep.max_retry)
    return study


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards n_trials: finished ones plus those other workers are running now."""
    return _count(study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _watched_running(trials: list[FrozenTrial], journal: bool) -> int:
    """RUNNING trials this worker may have to retry: all on RDB (heartbeats); on a journal the live ones of this
    host, and those no worker recorded itself on (a worker killed between taking a trial and its first write: failed
    once `sweep.grace_period` has passed, `sweeps.recovery`). A journal cannot tell whether another host's worker is
    alive, so those are not waited for."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not journal:
        return len(running)
    return sum(
        not t.user_attrs.get(TrialAttr.WORKER) or worker_alive(t.user_attrs[TrialAttr.WORKER]) is True for t in running
    )


def done_message(study: optuna.Study, checked: CheckedSweep) -> str | None:
    """Why the study has nothing left to run, in one sentence naming what to change; None while it has."""
    sweep, _, dims = checked
    if _count(study, TrialState.WAITING, TrialState.RUNNING):
        return None
    done = _count(study, TrialState.COMPLETE, TrialState.PRUNED)
    name = sweep.study_name
    if is_cell_study(sweep):
        cells = len(grid_cells(sweep, dims))
        held = {t.user_attrs.get(TrialAttr.CELL) for t in study.get_trials(deepcopy=False, states=_RESULTS)}
        failed = cells - len(held)
        lost = f", {failed} failed (see the trials' reason)" if failed > 0 else ""
        return (
            f"study {name!r} already holds all {cells} grid cells ({done} finished{lost}): choose another "
            "sweep.study_name to run the grid again."
        )
    if sweep.n_trials is not None and done >= sweep.n_trials:
        return (
            f"study {name!r} already holds {done} of {sweep.n_trials} finished trials: raise sweep.n_trials or "
            "choose another sweep.study_name."
        )
    if exhausted(study, dims):
        return f"study {name!r} already holds every point of its finite search space: widen sweep.space or choose another sweep.study_name."
    return None


def _next_step(study: optuna.Study, checked: CheckedSweep, journal: bool, trials: list[FrozenTrial]) -> str:
    """ "run" a trial, "wait" for running trials that may need a retry, or "stop", from `trials` (the study as just
    read)."""
    sweep, _, dims = checked
    states = split_read(trials).states
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.RUNNING]
    limit_reached = sweep.n_trials is not None and finished >= sweep.n_trials
    # A cell study runs its queued cells only; a searched one also draws new points while its space has any.
    can_start = states[TrialState.WAITING] > 0 or (
        not is_cell_study(sweep) and not exhausted(study, dims, trials=trials)
    )
    if can_start and not limit_reached:
        return "run"
    return "wait" if states[TrialState.RUNNING] and _watched_running(trials, journal) else "stop"


def collect_cuda_garbage() -> None:
    """After a trial: collect the garbage a trial left in reference cycles when the process holds CUDA
    memory, which Python's collector does not see and the next trial needs (Optuna's `gc_after_trial`); on CPU
    the collector's own thresholds do (a forced collection cost ~2.5 ms a trial, `sweeps.bench_overhead`)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()


class _NoTrial(Exception):
    """Raised in `ask()` (`_Turns.before_taking`): no trial now; `step` is "wait", "stop" or "recover" (stop only
    after a recovery on a later read)."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class _Turns:
    """What a worker does between its trials: announce and count the trial that ended, stop at the timeout or after
    too many crashes, recover dead workers' trials, choose to run a trial, wait for running ones (a retry may be
    needed) or stop (`_next_step`).

    All of it happens in `ask()` (`WorkerStudy.before_reading`, then `before_taking` on the read it takes the trial
    from), so that the trial that ended is announced from that read. A `study.optimize` callback would cost a read of
    the trial for nothing else (Optuna fetches it for its callbacks: ~6 ms a trial on PostgreSQL) and a deep copy."""

    def __init__(self, study: optuna.Study, checked: CheckedSweep, objective: Objective, worker_index: int) -> None:
        self.study, self.checked, self.objective, self.worker_index = study, checked, objective, worker_index
        sweep = checked.sweep
        self.journal = journal_path(sweep.storage, sweep.output_dir, sweep.study_name) is not None
        self.deadline = time.monotonic() + sweep.timeout if sweep.timeout else None
        self.ran, self.crashes, self.done = 0, 0, False
        self._recovered_at, self._said_wait = -math.inf, False
        self._recovered_since_read = False
        self._ended: int | None = None  # the storage id of the trial that ended and is not announced yet
        self._counted = False  # whether that trial was counted (before_reading)

    def run(self, trial: optuna.Trial) -> float:
        """The objective `study.optimize` calls: the sweep's `Objective`, then note the trial as ended."""
        try:
            return self.objective(trial)
        finally:
            self._ended, self._counted = trial._trial_id, False

    def before_reading(self) -> None:
        """`WorkerStudy.before_reading`: after a trial, collect CUDA garbage, count the trial, stop (raise
        `_NoTrial("stop")`, the trial announced from a read of its own) on the timeout or too many crashes, else
        recover dead workers' trials once per _RECOVER_EVERY_S."""
        if self._ended is None or self._counted:
            return
        self._counted = True
        collect_cuda_garbage()
        self.ran += 1
        if self.objective.last_status in (*FINISHED_STATUSES, DUPLICATE):
            self.crashes = 0
        else:  # None: the trial failed before train() returned a status
            self.crashes += 1
        if self.crashes >= self.checked.sweep.max_failures:
            log.error("%d trials in a row crashed; this worker stops (see the trials' `reason`)", self.crashes)
            self.done = True
        if self.stopping():
            self._announce([])  # no read comes: the trial is read alone
            raise _NoTrial("stop")
        self.between()

    def before_taking(self, trials: list[FrozenTrial]) -> None:
        """`WorkerStudy.before_taking`: announce the trial that ended (`Objective.announce`) from `trials`, then
        raise `_NoTrial` unless a trial is due. A worker stops on a read that follows a recovery, never on an older
        one ("stop" without one asks for one)."""
        self._announce(trials)
        recovered, self._recovered_since_read = self._recovered_since_read, False
        if self.stopping():
            raise _NoTrial("stop")
        step = _next_step(self.study, self.checked, self.journal, trials)
        if step == "stop" and not recovered:
            raise _NoTrial("recover")
        if step != "run":
            raise _NoTrial(step)

    def _announce(self, trials: list[FrozenTrial]) -> None:
        if self._ended is None:
            return
        ended = next((t for t in reversed(trials) if t._trial_id == self._ended), None)  # among the last ones read
        if ended is None:  # not in this read (it should be): read the trial itself
            ended = self.study._storage.get_trial(self._ended)
        self._ended = None
        self.objective.announce(self.study, ended)

    def stopping(self) -> bool:
        """Whether the worker is done (too many crashes, or the timeout, checked here)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            if not self.done:
                log.info("timeout reached; no new trial")
            self.done = True
        return self.done

    def between(self) -> None:
        """Before the next trial: recover dead workers' trials once per _RECOVER_EVERY_S (on RDB Optuna also fails
        stale trials as each trial starts; `StaleMarkingRDBStorage` marks them first)."""
        if time.monotonic() - self._recovered_at >= _RECOVER_EVERY_S:
            self.recover()

    def recover(self) -> None:
        recover(self.study, self.checked.sweep)
        self._recovered_at, self._recovered_since_read = time.monotonic(), True

    def wait(self) -> None:
        if not self._said_wait:
            log.info("worker %d: waiting for the running trials (a retry may be needed)", self.worker_index)
            self._said_wait = True
        time.sleep(_POLL_S)
        self.between()


def worker_loop(cfg, train_fn: TrainFn | None = None, *, worker_index: int = 0) -> int:
    """Run trials until n_trials are finished, the timeout passes, the grid is done or trials keep crashing.

    A worker with nothing left to start waits while trials it could have to retry are running (their worker may
    die), so a command returns when the study it ran is whole. Returns the number of trials this worker ran.
    Under a multi-process launch, call it on every rank. The trials run in one `study.optimize`; the worker's
    choices between them are made in `ask()` (`_Turns`), on the read Optuna makes anyway.
    """
    checked = check_sweep(cfg)
    sweep, base, dims = checked
    train_fn = train_fn or load_train_fn(sweep.train_fn)
    multi = distributed.world_size() > 1
    if multi:
        distributed.init_process_group(base)
        if distributed.rank() != 0:
            return distributed.follow(base, sweep, train_fn)
    study = open_study(checked)
    quiet_optuna()  # here: spawned workers are processes of their own
    objective = Objective(base, sweep, dims, train_fn, broadcast=distributed.broadcast_spec if multi else None)
    turns = _Turns(study, checked, objective, worker_index)
    study.before_reading, study.before_taking = turns.before_reading, turns.before_taking
    interrupted = False
    # The ~200k objects of the imports (torch) never become garbage: moved out of the collector's sight, every
    # collection scans the trials' objects alone (~150 ms -> a few ms with torch loaded).
    gc.freeze()
    try:
        turns.recover()
        while not turns.done:
            try:
                study.optimize(turns.run, catch=(Exception,))
            except NothingQueued:  # another worker popped the last queued cell first: look again
                turns.between()
            except _NoTrial as no:
                if no.step == "stop":
                    break
                if no.step == "recover":
                    turns.recover()
                else:
                    turns.wait()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if multi and not interrupted:  # after Ctrl-C the other ranks have stopped listening: nothing to say
            distributed.broadcast_spec(None)
    return turns.ran
