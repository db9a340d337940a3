"""experiments.result: the run statuses spelt once, and TrainResult, typed and read like the dict it replaced."""

from __future__ import annotations

import json
from dataclasses import fields

from experiments import result
from experiments.metrics import METRICS
from experiments.result import COMPLETE_STATUSES, FINAL_STATUSES, RUN_STATUSES, TrainResult

# summary.json's keys, in the order train() has always written them
SUMMARY_KEYS = [
    "status", "reason", "best_val_accuracy", "best_val_loss", "best_train_accuracy", "best_train_loss", "best_epoch",
    "epochs_run", "epochs", "val_accuracy", "val_loss", "train_loss", "num_params", "train_images_per_s", "wall_s",
    "run_dir", "wandb_run_id",
]  # fmt: skip


def test_each_status_has_one_constant_and_the_literal_lists_them_all():
    constants = {getattr(result, name) for name in ("RUNNING", "COMPLETED", "EARLY_STOPPED", "PRUNED", "DIVERGED",
                                                     "INTERRUPTED", "FAILED")}  # fmt: skip
    assert constants == set(RUN_STATUSES) and len(RUN_STATUSES) == 7
    assert set(COMPLETE_STATUSES) < set(FINAL_STATUSES) <= set(RUN_STATUSES)
    assert FINAL_STATUSES == ("completed", "early_stopped", "pruned", "diverged")  # as run_dir's were


def test_summary_keys_and_order_are_the_fields_and_every_metric_has_its_best():
    names = [f.name for f in fields(TrainResult) if f.name != "extra"]
    assert names == SUMMARY_KEYS
    assert {f"best_{m}" for m in METRICS} <= set(names)  # train() fills best_<metric> for each of METRICS


def test_a_result_reads_like_its_dict_and_writes_it_as_json():
    r = TrainResult("completed", "trained 2 epochs", best_val_accuracy=0.5, epochs_run=2, run_dir="runs/a")
    d = r.to_dict()
    assert list(d) == SUMMARY_KEYS and r == d and d == r and dict(r) == d
    assert r["status"] == "completed" and r.get("missing") is None and "run_dir" in r and {**r} == d
    assert json.loads(json.dumps(dict(r))) == r


def test_from_dict_keeps_unknown_keys_and_fills_missing_ones():
    user = {"status": "completed", "val_f1": 0.7, "best_val_accuracy": 0.9}  # a user's train_fn returns a dict
    r = TrainResult.from_dict(user)
    assert r.status == "completed" and r.best_val_accuracy == 0.9 and r.extra == {"val_f1": 0.7}
    assert r["val_f1"] == 0.7 and list(r)[-1] == "val_f1"
    assert TrainResult.from_dict(r) == r
    assert TrainResult.from_dict({}).status is None  # what a train_fn that said nothing reads as (str: "None")
