"""Processes a launcher started form one group, or the run stops before training: one sentence, exit 2, never N
copies of a run (`experiments.precision.check_process_group`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from experiments.config import ConfigError
from experiments.launch import LAUNCH_PREFIX_ENV, MIXED_PRECISION_ENV, say_once_and_wait
from tests.experiments.test_multiprocess import REPO, _free_port
from tests.scripts import console_script

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "model.head_dim=null", "trainer.epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress_bar=false",
        "tracker=none"]  # fmt: skip
SENTENCE = (
    "rpb-train: rpb-launch started 2 processes but they did not form one group (there is no GPU here for them to "
    "share): pass trainer.cpu=true to train on 2 CPU processes, or launch one process."
)


def test_a_launch_without_a_group_is_refused(monkeypatch):
    """WORLD_SIZE=4 as accelerate launch / torchrun set it, but this process is alone (no GPU, cpu not asked for)."""
    from experiments.precision import make_accelerator

    for name in (LAUNCH_PREFIX_ENV, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(MIXED_PRECISION_ENV, "no")  # as accelerate launch sets it
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError) as err:
        make_accelerator(cpu=False)
    assert str(err.value) == (
        "accelerate launch started 4 processes but they did not form one group (there is no GPU here for them to "
        "share): pass trainer.cpu=true to train on 4 CPU processes, or launch one process."
    )
    monkeypatch.delenv("WORLD_SIZE")
    assert make_accelerator(cpu=True).num_processes == 1  # one process without a launcher; accelerate's state reset


def test_a_sweep_launch_without_a_group_is_refused_before_its_trials(monkeypatch):
    from omegaconf import OmegaConf

    from experiments.precision import make_accelerator
    from sweeps.distributed import init_process_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"started 2 processes but they did not form one group"):
        init_process_group(OmegaConf.create({"trainer": {"cpu": False}}))
    monkeypatch.delenv("WORLD_SIZE")
    make_accelerator(cpu=True)  # leave accelerate's state as a plain process has it


def test_only_the_main_process_says_it_the_others_wait_for_the_launcher(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    say_once_and_wait("rpb-train: a mistake", grace_s=0.01)
    assert capsys.readouterr().err == "rpb-train: a mistake\n"
    # Rank 1: the launcher stopped it (SIGTERM, raised as Terminated, a KeyboardInterrupt) once rank 0 had left.
    monkeypatch.setenv("RANK", "1")

    def stopped(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("experiments.launch.time.sleep", stopped)
    say_once_and_wait("rpb-train: a mistake", grace_s=5)
    assert capsys.readouterr().err == ""
    # Not stopped within the grace time: the mistake was its own, and it says so with its rank.
    monkeypatch.setattr("experiments.launch.time.sleep", lambda seconds: None)
    say_once_and_wait("rpb-train: a mistake", grace_s=5)
    assert capsys.readouterr().err == "rpb-train: a mistake (rank 1)\n"


def _launch_two(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [console_script("rpb-launch"), "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "experiments.cli", *TINY, *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_without_a_group_stop_with_one_sentence(tmp_path):
    run = tmp_path / "run"
    proc = _launch_two(tmp_path, f"run_dir={run}")  # no trainer.cpu=true, and no GPU here
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert [line for line in proc.stderr.splitlines() if "did not form one group" in line] == [SENTENCE], out
    assert "epoch 1/" not in out and "[rpb-train]" not in out and "Traceback" not in out, out
    assert not run.exists()  # no run folder, let alone two runs in it


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_cpu_processes_form_one_group(tmp_path):
    run = tmp_path / "run"
    proc = _launch_two(tmp_path, "trainer.cpu=true", f"run_dir={run}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "did not form one group" not in out
    # One run of 2 ranks: one epoch line and one result line (2 lone processes would each print theirs).
    assert len([line for line in proc.stdout.splitlines() if line.startswith("epoch 1/1")]) == 1, out
    assert len([line for line in proc.stdout.splitlines() if line.startswith("[rpb-train] completed")]) == 1, out
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
