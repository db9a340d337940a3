"""Sweep workers as cluster jobs through submitit (`sweep/launcher=slurm`), all joining one study on a database.

    rpb-sweep sweep/launcher=slurm sweep.launcher.partition=gpu sweep.launcher.array_size=8 \\
        sweep.storage=postgresql://user@dbhost:5432/optuna sweep.study_name=vit-lr

This command checks the sweep and creates the study once (its first trials enqueued), then submits
`launcher.array_size` jobs (a SLURM job array). Each job runs the same sweep against the same storage on its node,
as a second machine running the command would: it joins the study, recovers dead workers' trials, and runs
`sweep.workers` worker processes there, one GPU each (`sweeps.devices`). Job logs land in
`<output_dir>/<study_name>/slurm/<job id>_0_log.{out,err}`. With `launcher.wait` (default) the command waits for the jobs,
replaces up to `launcher.resubmit` jobs that failed (a killed node), and prints the summary; without, it exits once
the jobs are queued. A job cut off by its time limit or preempted is requeued by submitit (`SweepJob.checkpoint`);
the trial it was running turns stale (no heartbeat for `sweep.grace_period` s) and is retried from its checkpoint
by whichever worker comes next (`sweeps.recovery`).

Workers on several hosts need a storage all of them reach: PostgreSQL (or another SQLAlchemy server URL). A
journal file or SQLite database is refused with this launcher.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeps.space import SweepConfigError
from sweeps.worker import StudyAlreadyDone, done_message

log = logging.getLogger(__name__)
_POLL_S = 2.0


def check_cluster_commands(sweep: DictConfig) -> None:
    """With `sweep.launcher.cluster=slurm`: SLURM's `sbatch` and `srun` on this machine's PATH (submitit submits and
    runs the jobs with them), checked before the study is created so that a mistake leaves nothing behind."""
    if sweep.launcher.name != "slurm" or sweep.launcher.cluster != "slurm":
        return
    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        raise SweepConfigError(
            f"sweep/launcher=slurm submits jobs with SLURM's {' and '.join(missing)}, which this machine does not have "
            "on its PATH: run the command on the cluster's login node, or set sweep.launcher.cluster=local to run "
            "the jobs as processes of this machine."
        )


def log_folder(sweep: DictConfig) -> Path:
    """Where the jobs' logs and pickles go: <output_dir>/<study_name>/slurm/."""
    return Path(sweep.output_dir) / sweep.study_name / "slurm"


def executor_parameters(sweep: DictConfig) -> dict[str, Any]:
    """submitit `AutoExecutor.update_parameters` arguments of `sweep.launcher` (None values left out)."""
    launcher = sweep.launcher
    params = {
        "name": f"rpb-sweep-{sweep.study_name}",
        "timeout_min": launcher.timeout_min,
        "nodes": 1,
        "tasks_per_node": 1,  # one sweep command per job; it spawns sweep.workers processes itself
        "gpus_per_node": launcher.gpus_per_job,
        "cpus_per_task": launcher.cpus_per_job,
        "mem_gb": launcher.mem_gb,
        "slurm_partition": launcher.partition,
        "slurm_array_parallelism": launcher.array_parallelism,
        "slurm_account": launcher.account,
        "slurm_qos": launcher.qos,
        "slurm_constraint": launcher.constraint,
        "slurm_setup": list(launcher.setup) or None,
        "slurm_additional_parameters": OmegaConf.to_container(launcher.additional) or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(sweep: DictConfig):
    """The submitit executor of `sweep.launcher` (`submitit.AutoExecutor(cluster=launcher.cluster)`)."""
    import submitit  # deferred: an optional dependency (the `sweep` extra), needed by this launcher only

    executor = submitit.AutoExecutor(folder=log_folder(sweep), cluster=sweep.launcher.cluster)
    executor.update_parameters(**executor_parameters(sweep))
    return executor


class SweepJob:
    """The callable a job runs: this sweep on the job's node with the local launcher (join, recover, work).

    submitit calls `checkpoint` when the job is preempted or reaches its time limit, and requeues what it returns
    (the same job: the trial it was running is retried from its checkpoint through the study's recovery).

    Args:
        run_study: the command's own entry (`sweeps.study.run_study`, which hands itself in: a launcher sits below
            the command that launches it); pickled by name with the job.
    """

    def __init__(self, run_study: Callable) -> None:
        self.run_study = run_study

    def __call__(self, checked, index: int) -> int:
        sweep = OmegaConf.merge(checked.sweep, {"launcher": {"name": "local"}})
        log.info("job %d joins study %s", index, sweep.study_name)
        try:
            self.run_study(checked._replace(sweep=sweep))
        except StudyAlreadyDone as e:
            log.info("%s", e)
        return index

    def checkpoint(self, checked, index: int):
        import submitit  # deferred: see make_executor

        return submitit.helpers.DelayedSubmission(self, checked, index)


# Job states of a job that ended without its result (SLURM's, and the local executor's INTERRUPTED): known at
# once, while reading a missing result waits for a file system that may be slow to show it.
_LOST_STATES = ("INTERRUPTED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE")  # fmt: skip


def _job_error(job) -> str | None:
    """None for a job that finished its function, else why it did not (first line)."""
    state = str(job.state).split()[0].upper()
    if state in _LOST_STATES:
        return f"state {state}"
    try:
        job.result()
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError: killed, crashed, cancelled
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


def submit_workers(checked, study, run_study: Callable) -> list:
    """Submit `launcher.array_size` jobs that join `study`, each running `run_study` (`SweepJob`); with
    `launcher.wait`, wait for them, replacing up to `launcher.resubmit` failed jobs while the study still has work.
    Returns the jobs (replacements included)."""
    sweep = checked.sweep
    launcher = sweep.launcher
    executor = make_executor(sweep)
    indices = range(launcher.array_size)
    jobs = executor.map_array(SweepJob(run_study), [checked] * len(indices), list(indices))
    print(
        f"rpb-sweep: submitted {len(jobs)} {launcher.cluster} job(s) ({jobs[0].job_id.split('_')[0] if jobs else '-'}) "
        f"joining study {sweep.study_name!r}; logs in {log_folder(sweep)}",
        flush=True,
    )
    if not launcher.wait:
        return jobs
    running = dict(zip(jobs, indices))
    replacements = launcher.resubmit
    while running:
        time.sleep(_POLL_S)
        for job, index in list(running.items()):
            if not job.done():
                continue
            del running[job]
            error = _job_error(job)
            if error is None:
                continue
            if replacements > 0 and done_message(study, checked) is None:
                replacements -= 1
                new = executor.submit(SweepJob(run_study), checked, index)
                log.warning("job %s failed (%s); job %s replaces it", job.job_id, error, new.job_id)
                running[new] = index
                jobs.append(new)
            else:
                log.warning("job %s failed (%s)", job.job_id, error)
    return jobs
