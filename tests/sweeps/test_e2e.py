"""A real (tiny) study: train() on digits, pruning by the median rule, one finished W&B offline run per trial."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweeps.study import run_study

pytestmark = pytest.mark.slow

TINY_STUDY = (
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.head_dim=null",
    "trainer.epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.heatmap_every_n_epochs=1",
    "tracker.tensorboard.enabled=false",
    "sweep.n_trials=3",
    "sweep.metric=val_loss",
    "sweep.direction=minimize",
    "sweep.enqueue_defaults=false",
    # A trial that keeps the initial weights (the same for all: same seed), then two whose large lr makes the
    # val loss worse than that after epoch 1: the median rule must prune both.
    "sweep.enqueue=[{optim.lr: 1.0e-6}, {optim.lr: 0.02}, {optim.lr: 0.05}]",
    "sweep.pruner.n_startup_trials=1",
    "sweep.pruner.n_warmup_steps=0",
    "~sweep.space.optim.weight_decay",
    "~sweep.space.model",
    "sweep.space.optim.lr={type: float, low: 1.0e-6, high: 0.1, log: true}",
)


def leet(run_dir: Path, *args: str) -> str:
    """`wandb leet inspect --json` on the trial's offline run (no network): its JSON text."""
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    exe = Path(sys.executable).with_name("wandb")
    exe = str(exe) if exe.exists() else shutil.which("wandb")
    cmd = [exe, "leet", "inspect", *args, "--json", str(offline)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def test_real_study_prunes_and_every_trial_has_its_wandb_run(compose_sweep):
    study = run_study(compose_sweep(*TINY_STUDY, fake=False))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        run = json.loads(leet(run_dir, "--summary"))
        state = t.user_attrs["status"]
        assert run["state"] == "finished", "a trial's W&B run was left running"
        assert run["run_id"] == t.user_attrs["wandb_run_id"] and run["name"] == f"trial-{t.number}"
        assert (
            run["summary"]["state"] == state == {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned"}[t.state]
        )
        assert "window-7x7" in run["tags"] and state in run["tags"]
        assert run["config"]["trial_number"] == t.number
        assert run["config"]["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
        assert len(t.intermediate_values) == (2 if t.state == TrialState.COMPLETE else 1)
        assert (run_dir / "summary.json").exists() and (run_dir / "checkpoints" / "last").exists()
    records = leet(Path(trials[0].user_attrs["run_dir"]))  # every record, one JSON object a line
    assert '"group":"rpb-sweep"' in records and '"job_type":"trial"' in records
