"""One W&B run per run: an interrupted run that is resumed continues the same W&B run (read back from the offline
files with W&B's own reader); a finished run that is resumed opens none; a fresh run in a used folder opens a new one. The retried sweep trial is in
tests/sweeps/test_e2e.py, extending a run in tests/experiments/test_cli.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import experiments.train as train_module
from experiments.run_dir import RunDir
from experiments.train import RunInterrupted, train
from tests.scripts import console_script

WANDB = ["tracker=wandb", "trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=2",
         "trainer.limit_val_batches=1", "model.depth=1", "model.embed_dim=16"]  # fmt: skip


def offline_runs(run_dir: Path) -> list[Path]:
    """The run folder's W&B offline runs, oldest first (`offline-run-<time>-<id>`)."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def records(offline: Path) -> list[dict]:
    """Every record of one offline run, read by `wandb leet inspect --json` (no network)."""
    cmd = [console_script("wandb"), "leet", "inspect", "--json", str(offline)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line]


def assert_one_continued_run(offlines: list[Path], run_id: str, epochs: int) -> None:
    """Two offline parts of one W&B run: same id, the second resumed, W&B steps and both x-axes increasing."""
    # offline-run-<time>-<id>; W&B adds "-1" when both parts start within the same second (its x_sync_dir_suffix)
    assert len(offlines) == 2 and all(
        re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in offlines
    )
    first, second = (records(p) for p in offlines)

    def field(recs, kind, key):
        return [r[kind][key] for r in recs if r["type"] == kind and key in r[kind]]

    assert set(field(first, "run", "run_id")) == set(field(second, "run", "run_id")) == {run_id}
    assert not any(field(first, "run", "resume")) and all(field(second, "run", "resume"))  # the second resumes
    states = [[u["state"] for u in field(recs, "summary", "update") if "state" in u] for recs in (first, second)]
    assert (states[0][-1], field(first, "exit", "exit_code")) == ("interrupted", [1])
    assert (states[1][-1], field(second, "exit", "exit_code")) == ("completed", [0])
    rows = [r["history"]["item"] for r in (*first, *second) if r["type"] == "history"]
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps)) and steps[0] == 0  # one W&B step sequence across both parts
    assert [row["epoch"] for row in rows if "val_accuracy" in row] == list(range(1, epochs + 1))
    global_steps = [row["global_step"] for row in rows if "train/loss" in row]
    assert global_steps == sorted(set(global_steps)) and len(global_steps) == epochs * 2  # 4 steps / 2, per epoch


def interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C at the start of `epoch` (after the checkpoint of the epoch before it)."""
    real, calls = train_module.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", train_epoch)


def test_resumed_run_continues_its_wandb_run_and_a_finished_one_opens_none(compose, monkeypatch, tmp_path):
    cfg = compose(WANDB)
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(RunInterrupted) as info:
        train(cfg)
    assert info.value.result["status"] == "interrupted" and info.value.result["epochs_run"] == 1
    assert info.value.result["reason"] == "stopped with Ctrl-C in epoch 2; the checkpoint of epoch 1 is kept"
    run = RunDir(cfg.run_dir)
    run_id = run.wandb_run().id
    monkeypatch.undo()

    resumed = train(compose([f"resume={run.path}"]))
    assert resumed["status"] == "completed" and resumed["wandb_run_id"] == run_id
    assert resumed["reason"] == "trained 2 epochs" and resumed["num_params"] > 0
    assert resumed["wall_s"] > 0 and resumed["train_images_per_s"] > 0
    assert_one_continued_run(offline_runs(run.path), run_id, epochs=2)

    again = train(compose([f"resume={run.path}"]))  # finished: nothing to train, no W&B run
    assert again["status"] == "completed" and again["reason"].startswith("already finished (trained 2 epochs)")
    assert len(offline_runs(run.path)) == 2

    fresh = train(compose([*WANDB, "trainer.epochs=1"]))  # a new run (no resume=) in the same folder: a new W&B run
    assert fresh["wandb_run_id"] != run_id and run.wandb_run().id == fresh["wandb_run_id"]
