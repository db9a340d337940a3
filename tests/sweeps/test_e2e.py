"""A real (tiny) study: train() on digits, pruning by the median rule, one finished W&B offline run per trial."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweeps.study import run_study
from tests.experiments.test_continuity import WANDB, assert_one_continued_run, interrupt_in_epoch, offline_runs
from tests.scripts import console_script

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
    cmd = [console_script("wandb"), "leet", "inspect", *args, "--json", str(offline)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def test_real_study_prunes_and_every_trial_has_its_wandb_run(compose_sweep, capsys):
    study = run_study(compose_sweep(*TINY_STUDY, fake=False))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    out = capsys.readouterr().out  # one line per finished trial, after its epoch lines
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert lines[0].startswith(f"trial 0, 1 of 3 complete: val_loss {trials[0].value:.3g} after 2 epochs | lr ")
    assert lines[1].startswith("trial 1, 2 of 3 pruned at epoch 1 (val_loss ") and len(lines) == 3
    assert "[trial 2, 3 of 3] started: lr " in out  # as soon as it starts, before its first epoch
    assert "[trial 2, 3 of 3] epoch 1/2 | train loss" in out and "on_epoch_end" not in out
    assert " in the study" in out.split("[trial 1, 2 of 3] epoch 1/2")[1].splitlines()[0]  # once a trial has run
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


def test_a_retried_trial_continues_its_predecessors_wandb_run(compose_sweep, monkeypatch):
    cfg = compose_sweep("tracker.tensorboard.enabled=false", "sweep.n_trials=1", "sweep.pruner.name=none",
                        *WANDB[1:], "model.num_heads=2", "model.head_dim=null", fake=False)  # fmt: skip
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)
    monkeypatch.undo()
    study = run_study(cfg)  # the interrupted trial 0 is retried as trial 1, from its checkpoint
    killed, retry = study.get_trials()
    assert (killed.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.user_attrs["resumed_from"] == killed.user_attrs["run_dir"]
    run_id = killed.user_attrs["wandb_run_id"]
    assert retry.user_attrs["wandb_run_id"] == run_id
    parts = [*offline_runs(killed.user_attrs["run_dir"]), *offline_runs(retry.user_attrs["run_dir"])]
    assert_one_continued_run(parts, run_id, epochs=2)
