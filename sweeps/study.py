"""`run_study(cfg)`: create or resume the study, run this command's workers, return the study.

Layouts (all run the same command against the same storage):
- one worker: the loop of `sweeps.worker` in this process;
- `sweep.workers=N`: the study is created here once, then N spawned worker processes run the loop, worker k on
  its own GPU(s) (`sweeps.devices`);
- `sweep/launcher=slurm`: the study is created here once, then cluster jobs run this same sweep on their nodes
  (`sweeps.cluster`);
- several machines: each runs the command against one SQLAlchemy URL (PostgreSQL) and joins the study, at any
  time, also while it runs;
- K processes per trial (`accelerate launch` / `torchrun`): rank 0 runs the loop, the others follow it.

The record stays true under all of them (see `sweeps.samplers`): exactly one process creates the study and
enqueues its first trials (a grid's cells); each trial is popped by one worker; a trial whose worker died is failed
and retried as a copy of itself (same cell, resumed from its checkpoint); a worker that has nothing left to start
waits while trials it could retry are still running; the sweep is checked once per command (`check_sweep`) and the
study's identity on every start (`sweeps.identity`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal

import optuna

from experiments.launch import Terminated
from sweeps import distributed
from sweeps.cluster import check_cluster_commands, submit_workers
from sweeps.config import CheckedSweep, check_sweep, load_train_fn
from sweeps.devices import assign_worker_devices, visible_devices
from sweeps.objective import TrainFn
from sweeps.space import SweepConfigError

# The study's life below this command (`sweeps.worker`), importable from here as the package's public API.
from sweeps.worker import (  # noqa: F401
    QUEUED_ATTR,
    StudyAlreadyDone,
    done_message,
    open_study,
    prepare_study,
    worker_loop,
)

log = logging.getLogger(__name__)


def _spawned_worker(checked: CheckedSweep, index: int, threads: int) -> None:
    # Its share of the cores, read by torch when the first trial imports it (and by experiments.threads): a worker
    # does not import torch before a trial needs it (~2.5 s of CPU each, which 8 workers on 2 cores paid in turn).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        worker_loop(checked, worker_index=index)
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


def run_study(cfg, train_fn: TrainFn | None = None) -> optuna.Study | None:
    """Create (or resume) the study of `cfg.sweep` and run its trials; returns the study.

    Args:
        cfg: a training config with a `sweep` node (`conf/sweep.yaml` composed, or prepared by another tool:
            space, grid cells, pruner none, enqueued trials), or the `CheckedSweep` of one.
        train_fn: `train(cfg, on_epoch_end=...)`; default `sweep.train_fn` (experiments.train:train).

    Raises:
        SweepConfigError / ConfigError: a bad sweep or training config, an unreachable storage, or a sweep that
            differs from the existing study it names, before any trial starts.
        StudyAlreadyDone: the study exists and has nothing left to run (its message says what to change).

    Returns:
        The study (None on the non-main ranks of a multi-process launch, which never touch the storage).
    """
    checked = check_sweep(cfg)
    sweep = checked.sweep
    if sweep.workers > 1 and distributed.world_size() > 1:
        raise SweepConfigError("sweep.workers>1 cannot be combined with a multi-process launch; use one of the two.")
    local_workers = sweep.workers > 1 and sweep.launcher.name == "local"
    worker_cuda = assign_worker_devices(sweep.workers, sweep.devices) if local_workers else []  # checked first
    if train_fn is None:
        load_train_fn(sweep.train_fn)  # fail on a bad train_fn before the study exists
    elif sweep.workers > 1 or sweep.launcher.name != "local":
        sweep = sweep.copy()
        sweep.train_fn = _importable_name(train_fn)  # the same, for the workers that will import it by name
        checked = checked._replace(sweep=sweep)
    check_cluster_commands(sweep)  # sbatch and srun, before the study exists
    is_main = distributed.rank() == 0
    study = prepare_study(checked) if is_main else None
    if study is not None and (message := done_message(study, checked)) is not None:
        if distributed.world_size() > 1:
            distributed.init_process_group(checked.base)
            distributed.broadcast_spec(None)  # the other ranks have nothing to follow
        raise StudyAlreadyDone(message, study)
    if sweep.launcher.name == "slurm":  # the workers are cluster jobs (sweeps.cluster), each running this function
        submit_workers(checked, study, run_study)
        return study
    if sweep.workers == 1:
        worker_loop(checked, train_fn)
        return study
    threads = max(1, (os.cpu_count() or 1) // sweep.workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(checked, i, threads)) for i in range(sweep.workers)]
    for p, cuda_devices in zip(procs, worker_cuda):
        with visible_devices(cuda_devices):  # worker k: its own GPU(s) (sweeps.devices)
            p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt as stop:  # Ctrl-C reached the workers too; a SIGTERM to this process alone did not
        for p in procs:
            if isinstance(stop, Terminated) and p.is_alive():
                os.kill(p.pid, signal.SIGINT)  # stop as for Ctrl-C: each records its trial as interrupted
        for p in procs:
            p.join(timeout=60)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning("%d worker(s) exited with codes %s", len(bad), bad)
    return study
