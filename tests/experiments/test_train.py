"""train(): the run folder, mixed precision, resume, divergence, early stopping and the on_epoch_end contract."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import experiments.train as train_module
from experiments.checkpoint import load_best
from experiments.train import train

EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time"}
RESULT_KEYS = {
    "status", "reason", "best_val_accuracy", "best_val_loss", "best_train_accuracy", "best_train_loss", "best_epoch",
    "epochs_run", "epochs", "val_accuracy", "val_loss", "train_loss", "num_params", "train_images_per_s", "wall_s",
    "run_dir", "wandb_run_id",
}  # fmt: skip


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_epoch_digits_run_writes_the_run_folder(compose):
    cfg = compose(["tracker=default", "tracker.wandb.mode=offline"])
    seen = []
    result = train(cfg, on_epoch_end=lambda epoch, metrics: seen.append((epoch, metrics)))
    run = Path(cfg.run_dir)
    assert set(result) == RESULT_KEYS and result["status"] == "completed" and result["epochs_run"] == 1
    assert result["run_dir"] == str(run) and result["wandb_run_id"]
    assert seen and seen[0][0] == 1 and set(seen[0][1]) == EPOCH_KEYS
    assert 0.0 <= result["val_accuracy"] <= 1.0 and math.isfinite(result["val_loss"])

    assert "model:" in (run / "config.yaml").read_text()
    (record,) = _lines(run / "metrics.jsonl")
    assert set(record) == EPOCH_KEYS and record["val_accuracy"] == result["val_accuracy"]
    assert json.loads((run / "summary.json").read_text()) == result
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["epoch"] == 1 and (run / "checkpoints" / "last" / "model.safetensors").is_file()
    best = load_best(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and "head.weight" in best["model"] and best["metrics"]["val_accuracy"] >= 0
    assert best["config"]["model"]["embed_dim"] == 32 and best["config"]["run_dir"] == str(run)
    assert (run / "checkpoints" / "last" / "config.yaml").read_text() == (run / "config.yaml").read_text()
    maps = torch.load(run / "bias" / "offset_maps.pt", weights_only=True)
    assert sorted(maps) == [0, 1] and maps[0].shape == (2, 13, 13)
    assert (run / "bias" / "block_00.png").is_file()
    assert list((run / "wandb").glob("offline-run-*")) and list((run / "tensorboard").rglob("events.out.*"))


def test_guide_yaml_runs_as_it_is(tmp_path):
    guide = tmp_path / "rpb_config.yaml"
    guide.write_text(
        "project:\n  name: relative_position_bias\n  seed: 42\n  device: cuda\n"
        "input:\n  batch_size: 32\n  sequence_length: 49\n  embed_dim: 96\n"
        "attention:\n  num_heads: 4\n  head_dim: 24\n  dropout: 0.1\n  scale: true\n"
        "relative_position_bias:\n  enabled: true\n  type: 2d\n  window_size: [7, 7]\n"
        "  learnable: true\n  init_std: 0.02\n"
    )
    from experiments.guide_config import compose_guide_config

    overrides = [f"run_dir={tmp_path}/guide-run", "model.depth=1", "trainer.epochs=1", "tracker=none",
                 "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
                 "trainer.progress_bar=false"]  # fmt: skip
    no_cuda = not torch.cuda.is_available()
    with pytest.warns(UserWarning, match="CUDA is not available") if no_cuda else contextlib.nullcontext():
        cfg = compose_guide_config(guide, overrides)
    assert (cfg.name, cfg.model.embed_dim, cfg.model.head_dim, cfg.data.img_size) == (
        "relative_position_bias",
        96,
        24,
        28,
    )
    assert cfg.model.drop_rate == cfg.model.attn_drop_rate == 0.1
    result = train(cfg)
    assert result["status"] == "completed"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(compose, precision, tmp_path):
    from experiments.precision import make_accelerator

    accelerator = make_accelerator(precision, cpu=True)
    with accelerator.autocast():
        product = torch.randn(4, 4) @ torch.randn(4, 4)
    assert product.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert (accelerator.scaler is not None) == (precision == "fp16")  # fp16: loss scaling on the CPU too

    # fp16 matmuls are slow on this CPU (no fp16 units): a few batches are enough to run every step kind.
    overrides = ["model.depth=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]
    result = train(compose([f"trainer.mixed_precision={precision}", *overrides]))
    assert result["status"] == "completed" and math.isfinite(result["train_loss"])
    # The accelerator train() built: accelerate saves a GradScaler's state with the checkpoint when it has one.
    scaler = tmp_path / "run" / "checkpoints" / "last" / "scaler.pt"
    assert scaler.is_file() == (precision == "fp16")
    if precision == "fp16":
        assert torch.load(scaler, weights_only=True)["scale"] > 0


def test_resume_ends_with_the_same_metrics_as_an_uninterrupted_run(compose, tmp_path):
    # Dropout and augmentation stay on: equal numbers need the RNG states restored, not only the weights.
    common = ["trainer.epochs=4", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "model.depth=1"]
    straight = train(compose([*common, f"run_dir={tmp_path}/straight"]))
    stopped = train(
        compose([*common, f"run_dir={tmp_path}/resumed"]),
        on_epoch_end=lambda epoch, metrics: "interrupted" if epoch == 2 else None,
    )
    assert stopped["status"] == "interrupted" and stopped["epochs_run"] == 2
    resumed = train(compose([f"resume={tmp_path}/resumed"]))
    assert resumed["status"] == "completed" and resumed["epochs_run"] == 4

    a, b = _lines(tmp_path / "straight" / "metrics.jsonl"), _lines(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6, abs=1e-7), key
    wa = load_file(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert resumed["best_val_accuracy"] == pytest.approx(straight["best_val_accuracy"])


def test_divergence_stops_with_status_diverged_and_keeps_the_last_good_checkpoint(compose, monkeypatch, tmp_path):
    build = train_module.build_model
    calls = {"n": 0}

    def nan_after_first_epoch(cfg):  # every forward of epoch 2 (after 8 train + 4 val batches) returns NaN
        model = build(cfg)

        def hook(module, args, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] > 8 + 4 + 2 else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", nan_after_first_epoch)
    result = train(compose(["trainer.epochs=3", "trainer.log_every_n_steps=1", "model.depth=1"]))
    assert result["status"] == "diverged" and "non-finite" in result["reason"] and result["epochs_run"] == 1
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())["epoch"] == 1
    weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert load_best(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in _lines(run / "metrics.jsonl")] == [1]


def test_early_stopping_on_val_loss(compose, monkeypatch):
    losses = iter([1.0, 0.9, 0.95, 0.97, 0.5])  # best at epoch 2, then two epochs without improvement

    def fake_evaluate(*args, **kwargs):
        return {"loss": next(losses), "accuracy": 0.5}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    cfg = compose(["trainer.epochs=5", "trainer.early_stopping_patience=2", "trainer.limit_train_batches=1",
                   "model.depth=1", "trainer.save_checkpoints=false"])  # fmt: skip
    result = train(cfg)
    assert result["status"] == "early_stopped" and result["epochs_run"] == 4
    assert "val_loss did not improve for 2 epochs" in result["reason"]
    assert _lines(Path(cfg.run_dir) / "metrics.jsonl")[-1]["status"] == "early_stopped"


def test_on_epoch_end_string_stops_the_run_with_that_status(compose):
    calls = []

    def prune(epoch, metrics):
        calls.append(epoch)
        return "pruned"

    result = train(compose(["trainer.epochs=3", "trainer.limit_train_batches=2", "model.depth=1"]), on_epoch_end=prune)
    assert calls == [1]
    assert result["status"] == "pruned" and result["epochs_run"] == 1 and "pruned" in result["reason"]


def test_summary_json_follows_the_run_epoch_by_epoch(compose):
    # What a killed run leaves behind says how far it got: summary.json is rewritten after every epoch.
    cfg = compose(["trainer.epochs=3", "trainer.limit_train_batches=2", "model.depth=1"])
    summaries = []

    def read_summary(epoch, metrics):  # called before the epoch's own bookkeeping: shows the previous epoch
        summaries.append(json.loads((Path(cfg.run_dir) / "summary.json").read_text()))

    result = train(cfg, on_epoch_end=read_summary)
    assert [(s["status"], s["epochs_run"]) for s in summaries] == [("running", 0), ("running", 1), ("running", 2)]
    assert summaries[2]["reason"] == "epoch 2/3" and summaries[2]["val_accuracy"] is not None
    assert result["status"] == "completed" and result["epochs_run"] == 3


def test_no_heatmaps_or_bias_statistics_for_a_tracker_that_logs_nothing(compose, monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "_log_bias", lambda *args: calls.append(args) or {})
    cfg = compose(["tracker=default", "tracker.wandb.mode=disabled", "tracker.tensorboard.enabled=false",
                   "trainer.heatmap_every_n_epochs=1", "trainer.limit_train_batches=2", "model.depth=1"])  # fmt: skip
    assert train(cfg)["status"] == "completed"
    assert calls == [] and not (Path(cfg.run_dir) / "wandb").exists()


def test_the_guides_training_api(tmp_path):
    from experiments import SyntheticImageDataset, evaluate, save_checkpoint, train_epoch
    from rpb import VisionTransformer

    data = SyntheticImageDataset(num_samples=16, img_size=16, patch_size=4, in_channels=3, num_classes=4)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=4, embed_dim=32, depth=1, num_heads=2,
                              rpb_kwargs={"num_heads": 2, "window_size": (4, 4), "bias_type": "2d", "init_std": 0.02})  # fmt: skip
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    train_metrics = train_epoch(model, loader, criterion, optimizer, "cpu", 1)
    val_metrics = evaluate(model, loader, criterion, "cpu")
    assert math.isfinite(train_metrics["loss"]) and 0.0 <= val_metrics["accuracy"] <= 1.0
    path = save_checkpoint(model, optimizer, 1, val_metrics, tmp_path / "checkpoints" / "best_model.pth")
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 1 and "optimizer" in saved and saved["metrics"]["loss"] == val_metrics["loss"]


class RecordingTracker:
    """A tracker that keeps what the loop logs (the contract's keys, without W&B's start-up cost)."""

    run_id = "recorded"

    def __init__(self):
        self.logs, self.images, self.finished = [], [], None

    def start(self, config, run_dir):
        self.config = config

    def log(self, metrics, step=None):
        self.logs.append((dict(metrics), step))

    def log_images(self, images, step=None):
        self.images.append((sorted(images), step))

    def finish(self, state, summary=None):
        self.finished = (state, summary)


def test_logged_keys_follow_the_contract(compose, monkeypatch):
    import experiments.tracking

    tracker = RecordingTracker()
    monkeypatch.setattr(experiments.tracking, "build_tracker", lambda cfg, is_main_process: tracker)
    result = train(compose(["tracker=tensorboard", "trainer.epochs=2", "trainer.limit_train_batches=4",
                            "trainer.log_every_n_steps=2", "trainer.heatmap_every_n_epochs=2"]))  # fmt: skip
    step_logs = [(m, s) for m, s in tracker.logs if "train/loss" in m]
    epoch_logs = [(m, s) for m, s in tracker.logs if "val_accuracy" in m]
    assert [s for _, s in step_logs] == [2, 4, 6, 8]  # every 2 optimizer steps, x = global_step
    assert set(step_logs[0][0]) == {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec"}
    assert [s for _, s in epoch_logs] == [1, 2]  # x = epoch
    groups = {k for k in epoch_logs[0][0] if k.startswith("grad_norm/")}
    assert groups >= {"grad_norm/patch_embed", "grad_norm/blocks.0", "grad_norm/blocks.1",
                      "grad_norm/relative_position_bias", "grad_norm/head"}  # fmt: skip
    assert all(v > 0 and math.isfinite(v) for k, v in epoch_logs[0][0].items() if k.startswith("grad_norm/"))
    assert not any(k.startswith("bias_stats/") for k in epoch_logs[0][0])  # heatmaps every 2 epochs
    assert "bias_stats/block_1/head_1/std" in epoch_logs[1][0]
    assert tracker.images == [(["bias/block_0", "bias/block_1"], 2)]
    assert (
        tracker.finished[0] == "completed"
        and tracker.finished[1]["wandb_run_id"] == "recorded" == result["wandb_run_id"]
    )


def test_an_exception_finishes_the_tracker_as_failed_and_propagates(compose, monkeypatch):
    import experiments.tracking

    tracker = RecordingTracker()
    monkeypatch.setattr(experiments.tracking, "build_tracker", lambda cfg, is_main_process: tracker)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    cfg = compose(["model.depth=1", "trainer.limit_train_batches=1"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert tracker.finished[0] == "interrupted"
    assert json.loads((Path(cfg.run_dir) / "summary.json").read_text())["status"] == "interrupted"


def test_gradient_accumulation_with_checkpointing_equals_the_larger_batch(compose, tmp_path):
    # 3 steps of 16 samples vs 3 steps of 2 x 8 accumulated (the same samples: the order depends on seed and epoch
    # only). No dropout or augmentation; SGD keeps last-bit differences at float level.
    common = ["model.depth=1", "model.drop_rate=0", "model.attn_drop_rate=0", "data.augment=false", "optim=sgd",
              "data.eval_batch_size=16", "trainer.limit_val_batches=2"]  # fmt: skip
    big = [*common, "data.batch_size=16", "trainer.limit_train_batches=3", f"run_dir={tmp_path}/big"]
    acc = [*common, "data.batch_size=8", "trainer.grad_accum_steps=2", "trainer.limit_train_batches=6",
           "model.grad_checkpointing=true", f"run_dir={tmp_path}/acc"]  # fmt: skip
    a, b = train(compose(big)), train(compose(acc))
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    wa = load_file(tmp_path / "big" / "checkpoints" / "last" / "model.safetensors")
    wb = load_file(tmp_path / "acc" / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    state = json.loads((tmp_path / "acc" / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["global_step"] == 3


def test_a_crash_while_saving_leaves_the_last_good_checkpoint_and_resume_continues(compose, monkeypatch, tmp_path):
    from accelerate import Accelerator

    save_state = Accelerator.save_state
    saves = {"n": 0}

    def crash_during_second_save(self, output_dir=None, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # half a checkpoint on disk, then the process "dies"
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", crash_during_second_save)
    cfg = compose(["trainer.epochs=2", "trainer.limit_train_batches=2", "model.depth=1"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last"
    assert json.loads((last / "train_state.json").read_text())["epoch"] == 1
    # epoch 2's record was written before its checkpoint: a kill during the save does not lose it
    assert [r["epoch"] for r in _lines(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert set(load_file(last / "model.safetensors")) >= {"head.weight"}

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    result = train(compose([f"resume={tmp_path / 'run'}"]))
    assert result["status"] == "completed" and result["epochs_run"] == 2
    assert [r["epoch"] for r in _lines(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt", "last", "state-e0002"]


def test_a_run_stopped_off_the_heatmap_schedule_logs_its_last_maps(compose, monkeypatch):
    """A sweep trial pruned at epoch 2 with heatmaps every 5 epochs still shows its learned bias (at epoch 2)."""
    import experiments.tracking

    tracker = RecordingTracker()
    monkeypatch.setattr(experiments.tracking, "build_tracker", lambda cfg, is_main_process: tracker)
    result = train(compose(["tracker=tensorboard", "trainer.epochs=4", "trainer.limit_train_batches=2",
                            "trainer.heatmap_every_n_epochs=5"]),
                   on_epoch_end=lambda epoch, m: "pruned" if epoch == 2 else None)  # fmt: skip
    assert result["status"] == "pruned"
    assert [step for _, step in tracker.images] == [2]
