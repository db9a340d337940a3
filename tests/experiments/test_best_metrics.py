"""train() returns best_<metric> for every metric of METRICS (min of a loss, max of an accuracy) over the whole run,
the epochs before a resume included, also when the checkpoint predates those fields."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest

import experiments.train as train_module
from experiments.checkpoint import TrainState, load_best
from experiments.config import compose_config
from experiments.metrics import METRICS, better, metric_direction
from experiments.train import train


def test_metric_direction():
    assert {name: metric_direction(name) for name in METRICS} == {
        "val_accuracy": "maximize", "val_loss": "minimize", "train_accuracy": "maximize", "train_loss": "minimize",
    }  # fmt: skip
    assert metric_direction("top1_acc") == "maximize" and metric_direction("learning_rate") is None


def test_better_is_strict_and_never_takes_nan():
    assert better(0.5, 0.4, "maximize") and not better(0.4, 0.5, "maximize")
    assert better(0.4, 0.5, "minimize") and not better(0.5, 0.4, "minimize")
    assert not better(0.5, 0.5, "maximize") and not better(0.5, 0.5, "minimize")  # a tie keeps the earlier epoch
    assert better(3.0, None, "minimize") and not better(math.nan, None, "minimize")
    assert not better(math.nan, 1.0, "minimize") and not better(math.nan, 1.0, "maximize")
    with pytest.raises(ValueError, match="direction"):
        better(1.0, 0.0, "max")


def test_train_state_keeps_the_best_of_every_metric():
    assert {f"best_{name}" for name in METRICS} <= {f.name for f in fields(TrainState)}
    state = TrainState()
    assert state.best_metrics() == {f"best_{name}": None for name in METRICS}
    assert state.update_best({"val_loss": 1.0, "val_accuracy": 0.2, "train_loss": 2.0, "train_accuracy": 0.1}) == [
        "val_accuracy", "val_loss", "train_accuracy", "train_loss",
    ]  # fmt: skip
    assert state.update_best({"val_loss": 1.5, "val_accuracy": 0.3, "train_loss": 1.0, "train_accuracy": 0.1}) == [
        "val_accuracy", "train_loss",
    ]  # fmt: skip
    assert state.best_metrics() == {
        "best_val_accuracy": 0.3, "best_val_loss": 1.0, "best_train_accuracy": 0.1, "best_train_loss": 1.0,
    }  # fmt: skip


def test_an_old_train_state_file_loads(tmp_path):
    old = {"epoch": 2, "global_step": 4, "best_val_accuracy": 0.3, "best_epoch": 2, "best_monitor": 0.5,
           "bad_epochs": 0, "last_metrics": {"val_loss": 0.8}, "train_images": 64, "train_s": 1.0, "wall_s": 2.0}  # fmt: skip
    (tmp_path / "train_state.json").write_text(json.dumps(old))
    state = TrainState.read(tmp_path)
    assert state.best_val_accuracy == 0.3 and state.best_epoch == 2
    assert state.best_val_loss is None and state.best_train_loss is None and state.best_train_accuracy is None


# The validation numbers of epochs 1-4, in order (scripted: the run stops after epoch 2 and is resumed): both the
# lowest loss and the highest accuracy come before the checkpoint, so a resume that forgot them would report 0.8.
VAL = [{"loss": 1.0, "accuracy": 0.2}, {"loss": 0.5, "accuracy": 0.4}, {"loss": 0.8, "accuracy": 0.3},
       {"loss": 0.9, "accuracy": 0.35}]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("old_checkpoint", [False, True], ids=["checkpoint", "checkpoint-without-best-fields"])
def test_resumed_run_returns_the_best_of_the_whole_run(compose, tmp_path, monkeypatch, old_checkpoint):
    scripted = iter(VAL)
    monkeypatch.setattr(train_module, "evaluate", lambda *args, **kwargs: dict(next(scripted)))
    run = tmp_path / "run"
    cfg = compose(["trainer.epochs=4", "trainer.limit_train_batches=2", "model.depth=1", f"run_dir={run}"])
    stopped = train(cfg, on_epoch_end=lambda epoch, m: "stopped" if epoch == 2 else None)
    assert stopped["epochs_run"] == 2 and stopped["best_val_loss"] == 0.5
    state_file = run / "checkpoints" / "last" / "train_state.json"
    saved = json.loads(state_file.read_text())
    assert saved["best_val_loss"] == 0.5 and saved["best_val_accuracy"] == 0.4
    if old_checkpoint:  # as written before train_state.json kept them: filled from metrics.jsonl on resume
        state_file.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("best_val_loss",
                              "best_train_loss", "best_train_accuracy")}))  # fmt: skip

    resumed = train(compose_config([f"resume={run}"]), on_epoch_end=lambda epoch, m: None)
    assert resumed["status"] == "completed" and resumed["epochs_run"] == 4
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for name in METRICS:
        pick = min if metric_direction(name) == "minimize" else max
        assert resumed[f"best_{name}"] == pick(r[name] for r in records), name
    assert resumed["best_val_loss"] == 0.5 and resumed["best_val_accuracy"] == 0.4
    assert resumed["best_epoch"] == 2 and load_best(run / "checkpoints" / "best.pt")["epoch"] == 2
    assert json.loads((run / "summary.json").read_text())["best_val_loss"] == 0.5
