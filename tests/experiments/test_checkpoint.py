"""Checkpoint files: atomic `last` swaps (also over a copied, real `last` folder), best.pt with weights_only."""

from __future__ import annotations

import json
import shutil

import torch
from accelerate import Accelerator

from experiments.checkpoint import TrainState, last_checkpoint, load_best, load_last, save_checkpoint, save_last
from experiments.precision import make_accelerator
from experiments.run_dir import RunDir


def _prepared(accelerator: Accelerator):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return accelerator.prepare(model, optimizer)


def test_last_is_swapped_atomically_and_old_states_are_removed(tmp_path):
    accelerator = make_accelerator(cpu=True)
    model, _ = _prepared(accelerator)
    save_last(accelerator, tmp_path, TrainState(epoch=1))
    with torch.no_grad():
        model.weight.add_(1.0)
    save_last(accelerator, tmp_path, TrainState(epoch=2, best_val_accuracy=0.5))
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "last").is_symlink() and sorted(p.name for p in ckpt.iterdir()) == ["last", "state-e0002"]
    assert last_checkpoint(tmp_path) == ckpt / "last"

    with torch.no_grad():
        model.weight.zero_()
    state = load_last(accelerator, tmp_path)
    assert state.epoch == 2 and state.best_val_accuracy == 0.5 and model.weight.abs().sum() > 0


def test_a_copied_run_folder_with_a_real_last_folder_saves_again(tmp_path):
    accelerator = make_accelerator(cpu=True)
    _prepared(accelerator)
    save_last(accelerator, tmp_path / "old", TrainState(epoch=1))
    # What a sweep retry does: copy checkpoints/last (the symlink is followed: a real folder).
    shutil.copytree(tmp_path / "old" / "checkpoints" / "last", tmp_path / "new" / "checkpoints" / "last")
    assert load_last(accelerator, tmp_path / "new").epoch == 1
    save_last(accelerator, tmp_path / "new", TrainState(epoch=2))
    ckpt = tmp_path / "new" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last", "state-e0002"]
    assert json.loads((ckpt / "last" / "train_state.json").read_text())["epoch"] == 2


def test_save_checkpoint_is_the_guides_and_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(model, optimizer, 3, {"accuracy": 0.75}, tmp_path / "checkpoints" / "best_model.pth")
    saved = load_best(path)
    assert saved["epoch"] == 3 and saved["metrics"] == {"accuracy": 0.75}
    assert torch.equal(saved["model"]["weight"], model.weight) and "optimizer" in saved
    assert not list(path.parent.glob(".*tmp"))


def test_truncate_metrics_keeps_the_checkpointed_epochs_and_drops_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    path = run.metrics
    for epoch in (1, 2, 3):
        run.append_metrics({"epoch": epoch, "val_accuracy": epoch / 10})
    with open(path, "a") as f:  # a run killed while appending epoch 4
        f.write('{"epoch": 4, "val_accu')
    run.truncate_metrics(2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"epoch": 1, "val_accuracy": 0.1},
        {"epoch": 2, "val_accuracy": 0.2},
    ]
    with open(path, "a") as f:
        f.write('{"epoch": 3, "val_accu')
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]  # the torn line is skipped when read
    run.truncate_metrics(5)  # the torn line goes even when its epoch would be kept
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]


class _RecordingAccelerator:
    """Records save_state and the barriers, and what `last` held at each barrier (rank 0 of a group)."""

    is_main_process = True

    def __init__(self, run_dir):
        self.run_dir, self.calls = run_dir, []

    def save_state(self, output_dir):
        self.calls.append("save_state")

    def wait_for_everyone(self):
        published = (self.run_dir / "checkpoints" / "last" / "train_state.json").is_file()
        self.calls.append("published" if published else "wait")


def test_save_last_waits_for_every_rank_before_publishing(tmp_path):
    accelerator = _RecordingAccelerator(tmp_path)
    save_last(accelerator, tmp_path, TrainState(epoch=1))
    assert accelerator.calls == ["wait", "save_state", "wait", "published"]
