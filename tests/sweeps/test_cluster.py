"""Workers as submitit jobs (`sweep/launcher=slurm`), tried with submitit's local executor against PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.config import check_sweep
from sweeps.space import SweepConfigError
from sweeps.storage import build_storage
from sweeps.study import run_study
from tests.sweeps.helpers import process_tree, wait_until


@pytest.mark.parametrize("storage", ["", "{tmp}/study.journal", "sqlite:///{tmp}/study.db"])
def test_slurm_refuses_storages_other_hosts_cannot_share(compose_sweep, tmp_path, storage):
    cfg = compose_sweep("sweep/launcher=slurm", f"sweep.storage={storage.format(tmp=tmp_path)}")
    with pytest.raises(SweepConfigError, match=r"^sweep/launcher=slurm needs sweep.storage on a database server"):
        check_sweep(cfg)


def test_slurm_without_its_commands_is_one_sentence_and_no_study(compose_sweep, tmp_path, monkeypatch):
    """On a machine without sbatch/srun (not the login node): refused before the study is created (the storage is
    never opened: this URL does not even resolve)."""
    from sweeps.study import run_study

    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    cfg = compose_sweep("sweep/launcher=slurm", "sweep.storage=postgresql://u@no-such-host.invalid/optuna")
    with pytest.raises(SweepConfigError, match=r"^sweep/launcher=slurm submits jobs with SLURM's sbatch and srun, "):
        run_study(cfg)
    assert not (tmp_path / "sweeps").exists()


def test_slurm_job_parameters(compose_sweep):
    from sweeps.cluster import executor_parameters, log_folder

    cfg = compose_sweep("sweep/launcher=slurm", "sweep.storage=postgresql://u@db/optuna", "sweep.study_name=s1",
                        "sweep.launcher.partition=gpu", "sweep.launcher.gpus_per_job=4", "sweep.launcher.timeout_min=90",
                        "sweep.launcher.array_parallelism=2", "sweep.launcher.setup=[module load cuda]",
                        "+sweep.launcher.additional.exclude=node01")  # fmt: skip
    sweep = check_sweep(cfg).sweep
    assert executor_parameters(sweep) == {
        "name": "rpb-sweep-s1", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 4,
        "cpus_per_task": 8, "slurm_partition": "gpu", "slurm_array_parallelism": 2,
        "slurm_setup": ["module load cuda"], "slurm_additional_parameters": {"exclude": "node01"},
    }  # fmt: skip
    assert log_folder(sweep) == Path(sweep.output_dir) / "s1" / "slurm"


@pytest.mark.postgres
@pytest.mark.multiprocess
@pytest.mark.slow
def test_local_jobs_join_one_study_and_a_killed_job_is_replaced(compose_sweep, monkeypatch, postgres_study):
    """Two jobs on submitit's local executor; the job running the first trial is SIGKILLed mid-trial (a node
    dying): a replacement job is submitted, the stale trial is failed and retried from its checkpoint."""
    url, name = postgres_study
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.6")
    monkeypatch.setattr("sweeps.cluster._POLL_S", 0.5)
    cfg = compose_sweep("sweep/launcher=slurm", "sweep.launcher.cluster=local", "sweep.launcher.array_size=2",
                        "sweep.launcher.resubmit=1", f"sweep.storage={url}", f"sweep.study_name={name}",
                        "sweep.n_trials=3", "trainer.epochs=3", "sweep.heartbeat_interval=1",
                        "sweep.grace_period=2")  # fmt: skip
    storage = build_storage(cfg.sweep, heartbeat=False)

    def first_report():
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            return None
        return next((t for t in trials if t.intermediate_values and "worker" in t.user_attrs), None)

    killed = {}

    def kill_a_job_mid_trial():
        trial = wait_until(first_report, timeout=90, what="a trial's first epoch", interval=0.2)
        killed["trial"] = trial.number
        job_pid = trial.user_attrs["worker"]["pid"]
        # the job's process tree, as a dead node takes it: the submitit controller above the worker too
        import psutil

        parent = psutil.Process(job_pid).parent()
        for pid in process_tree(parent.pid if "submitit" in " ".join(parent.cmdline()) else job_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_job_mid_trial, daemon=True)
    killer.start()
    run_study(cfg)
    killer.join(timeout=5)
    assert "trial" in killed, "no trial was killed"

    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[killed["trial"]].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed["trial"]]
    assert [t.state for t in retries] == [TrialState.COMPLETE], [(t.number, t.state, t.user_attrs) for t in trials]
    summary = json.loads((Path(retries[0].user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1  # from the killed attempt's checkpoint
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) >= 3
    logs = Path(cfg.sweep.output_dir) / name / "slurm"
    assert len(list(logs.glob("*_log.out"))) >= 3  # two jobs and the replacement
    storage.engine.dispose()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optunas_grpc_storage_proxy_runs_a_study(tmp_path):
    """What the README says of the proxy: the installed Optuna has it and a study runs through it (SQLite behind
    it here; this project's sweep.storage does not take a proxy address yet)."""
    import socket

    from optuna.storages import GrpcStorageProxy, RDBStorage, run_grpc_proxy_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = RDBStorage(f"sqlite:///{tmp_path}/behind-proxy.db")
    server = threading.Thread(target=run_grpc_proxy_server, args=(backend,), kwargs={"host": "127.0.0.1", "port": port},
                              daemon=True)  # fmt: skip
    server.start()

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=30, what="the gRPC proxy server")
    proxy = GrpcStorageProxy(host="127.0.0.1", port=port)
    study = optuna.create_study(study_name="through-proxy", storage=proxy)
    study.optimize(lambda trial: (trial.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=4)
    values = [t.value for t in study.trials]
    proxy.close()
    seen = optuna.load_study(study_name="through-proxy", storage=backend)  # the database behind the proxy
    assert [t.state for t in seen.trials] == [TrialState.COMPLETE] * 4
    assert [t.value for t in seen.trials] == values
