"""`run_study(cfg)`: create or resume the study, run this command's workers, return the study.

Layouts (all run the same command against the same storage):
- one worker: the loop below in this process;
- `sweep.workers=N`: the study is created here once, then N spawned worker processes run the loop;
- several machines: each runs the command against one SQLAlchemy URL (PostgreSQL) and joins the study;
- K processes per trial (`accelerate launch` / `torchrun`): rank 0 runs the loop, the others follow it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import warnings
import zlib

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from sweeps import distributed
from sweeps.config import build_pruner, build_sampler, check_sweep, load_train_fn
from sweeps.objective import COMPLETE_STATUSES, PRUNED_STATUSES, Objective, TrainFn
from sweeps.recovery import fail_dead_worker_trials, requeue_interrupted_trials
from sweeps.space import SweepConfigError, config_params
from sweeps.storage import build_storage, describe_storage, journal_path
from sweeps.validate import check_trial_values

log = logging.getLogger(__name__)
FINISHED_STATUSES = (*COMPLETE_STATUSES, *PRUNED_STATUSES)


def _load(sweep: DictConfig, base: DictConfig, dims, *, seed_offset: int = 0) -> optuna.Study:
    return optuna.load_study(
        study_name=sweep.study_name,
        storage=build_storage(sweep),
        sampler=build_sampler(sweep, dims, seed_offset),
        pruner=build_pruner(sweep, base.trainer.epochs),
    )


def prepare_study(cfg: DictConfig) -> optuna.Study:
    """Check everything, create the study once (or load it) and enqueue a new study's first trials.

    Raises:
        SweepConfigError / ConfigError: one sentence, before any trial starts.
    """
    sweep, base, dims = check_sweep(cfg)
    storage = build_storage(sweep)  # before the slower model checks: an unreachable database is said at once
    check_trial_values(base, sweep, dims)
    study = optuna.create_study(
        study_name=sweep.study_name,
        storage=storage,
        sampler=build_sampler(sweep, dims),
        pruner=build_pruner(sweep, base.trainer.epochs),
        direction=sweep.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != sweep.direction:
        raise SweepConfigError(
            f"sweep.direction={sweep.direction} but study {sweep.study_name!r} in {describe_storage(sweep)} was "
            f"created to {study.direction.name.lower()}; use that direction or another sweep.study_name."
        )
    if not study.trials:  # a new study (skip_if_exists guards two machines creating it at once)
        for key, value in (("kind", sweep.kind), ("metric", sweep.metric), ("output_dir", sweep.output_dir)):
            study.set_user_attr(key, value)
        study.set_user_attr("space", OmegaConf.to_container(sweep.space))
        if sweep.enqueue_defaults:
            study.enqueue_trial(config_params(dims, base), user_attrs={"enqueued": "defaults"}, skip_if_exists=True)
        for params in OmegaConf.to_container(sweep.enqueue):
            study.enqueue_trial(dict(params), user_attrs={"enqueued": "config"}, skip_if_exists=True)
    if journal_path(sweep.storage, sweep.output_dir, sweep.study_name) is not None:
        fail_dead_worker_trials(study, sweep.max_retry)
    requeue_interrupted_trials(study)
    return study


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards n_trials: finished ones plus those other workers are running now."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _seed_offset(sweep: DictConfig, study: optuna.Study) -> int:
    """Distinct sampler seeds per worker: the worker index, or (joining a live study unnamed) this process."""
    if sweep.worker_index or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return int(sweep.worker_index)
    return zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 100_000


def worker_loop(cfg: DictConfig, train_fn: TrainFn | None = None, *, worker_index: int | None = None) -> int:
    """Run trials until n_trials are finished, the timeout passes, the grid is done or trials keep crashing.

    Returns the number of trials this worker ran. Under a multi-process launch, call it on every rank.
    """
    sweep, base, dims = check_sweep(cfg)
    if worker_index is not None:
        sweep.worker_index = worker_index
    train_fn = train_fn or load_train_fn(sweep.train_fn)
    multi = distributed.world_size() > 1
    if multi:
        distributed.init_process_group(base)
        if distributed.rank() != 0:
            return distributed.follow(base, sweep, train_fn)
    study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep))
    study = _load(sweep, base, dims, seed_offset=_seed_offset(sweep, study))
    objective = Objective(base, sweep, dims, train_fn, broadcast=distributed.broadcast_spec if multi else None)
    journal = journal_path(sweep.storage, sweep.output_dir, sweep.study_name) is not None
    deadline = time.monotonic() + sweep.timeout if sweep.timeout else None
    ran, crashes = 0, 0
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                log.info("timeout reached; no new trial")
                break
            if journal:
                fail_dead_worker_trials(study, sweep.max_retry)
            else:  # RDB: trials without a heartbeat for grace_period are failed and retried (before counting)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            if sweep.n_trials is not None and finished_count(study) >= sweep.n_trials:
                break
            # A grid counts failed cells as visited: their queued retries still run once every cell was tried.
            if (
                isinstance(study.sampler, optuna.samplers.GridSampler)
                and study.sampler.is_exhausted(study)
                and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            ):
                break
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            ran += 1
            # None: the trial failed before train() returned a status
            crashes = 0 if objective.last_status in FINISHED_STATUSES else crashes + 1
            if crashes >= sweep.max_failures:
                log.error("%d trials in a row crashed; this worker stops (see the trials' `reason`)", crashes)
                break
    finally:
        if multi:
            distributed.broadcast_spec(None)
    return ran


def _spawned_worker(container: dict, index: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        worker_loop(OmegaConf.create(container), worker_index=index)
    except KeyboardInterrupt:  # the trial is recorded as interrupted; the parent prints the summary
        raise SystemExit(130) from None


def _importable_name(train_fn: TrainFn) -> str:
    """`module:name` of `train_fn`, checked to import back to the same function (what spawned workers do)."""
    spec = f"{getattr(train_fn, '__module__', None)}:{getattr(train_fn, '__qualname__', None)}"
    try:
        same = load_train_fn(spec) is train_fn
    except SweepConfigError:
        same = False
    if not same:
        raise SweepConfigError(
            f"train_fn {spec!r} cannot be imported by the spawned workers of sweep.workers>1 (a lambda, closure "
            "or nested function); pass a module-level function or set sweep.train_fn=module:function."
        )
    return spec


def run_study(cfg: DictConfig, train_fn: TrainFn | None = None) -> optuna.Study | None:
    """Create (or resume) the study of `cfg.sweep` and run its trials; returns the study.

    Args:
        cfg: a training config with a `sweep` node (`conf/sweep.yaml` composed, or prepared by another tool:
            space, sampler incl. grid, pruner none, enqueued trials).
        train_fn: `train(cfg, on_epoch_end=...)`; default `sweep.train_fn` (experiments.train:train).

    Raises:
        SweepConfigError / ConfigError: a bad sweep or training config, or an unreachable storage, before any
            trial starts.

    Returns:
        The study (None on the non-main ranks of a multi-process launch, which never touch the storage).
    """
    sweep = check_sweep(cfg)[0]
    if sweep.workers > 1 and distributed.world_size() > 1:
        raise SweepConfigError("sweep.workers>1 cannot be combined with a multi-process launch; use one of the two.")
    if train_fn is None:
        load_train_fn(sweep.train_fn)  # fail on a bad train_fn before the study exists
    elif sweep.workers > 1:
        train_fn_name = _importable_name(train_fn)  # the same, for the workers that will import it by name
    is_main = distributed.rank() == 0
    study = prepare_study(cfg) if is_main else None
    if sweep.workers == 1:
        worker_loop(cfg, train_fn)
        return study
    container = OmegaConf.to_container(cfg, resolve=True)
    if train_fn is not None:
        container["sweep"]["train_fn"] = train_fn_name
    threads = max(1, (os.cpu_count() or 1) // sweep.workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(container, i, threads)) for i in range(sweep.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the same SIGINT: let them record their trials
        for p in procs:
            p.join(timeout=60)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning("%d worker(s) exited with codes %s", len(bad), bad)
    return study
