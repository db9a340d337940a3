"""Trackers on a tiny fake training sequence: W&B offline runs read back without network, TensorBoard events."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.config_errors import ConfigError
from experiments.tracking import CompositeTracker, NoOpTracker, build_tracker, mask_secrets
from tests.scripts import console_script

REPO = Path(__file__).resolve().parents[2]
BLOCKS = 2
EPOCHS = 2
STEPS_PER_EPOCH = 3


def tracker_cfg(wandb=True, tensorboard=True, mode="offline", **wandb_kwargs):
    return {
        "wandb": {
            "enabled": wandb,
            "mode": mode,
            "project": "rpb-lab-test",
            "entity": None,
            "group": "g",
            "job_type": "train",
            "tags": ["unit"],
            "name": "fake",
            "id": None,
            "notes": "a test",
            **wandb_kwargs,
        },
        "tensorboard": {"enabled": tensorboard},
        "extra_config": {"trial_number": 7, "optim": {"lr": 0.01}},
    }


CONFIG = {
    "seed": 1,
    "optim": {"name": "adamw", "lr": 0.001},
    "sweep": {"storage": "postgresql://alice:s3cret@db.example:5432/optuna"},
}


def fake_training(tracker, run_dir: Path, state="completed", val_accuracies=(0.5, 0.75)) -> dict:
    """What train() does with a tracker: start, per-step and per-epoch scalars, heatmaps every epoch, finish."""
    tracker.start(CONFIG, run_dir)
    global_step = 0
    for epoch in range(1, EPOCHS + 1):
        for _ in range(STEPS_PER_EPOCH):
            global_step += 1
            tracker.log(
                {
                    "train/loss": 2.0 / global_step,
                    "train/lr": 1e-3,
                    "train/grad_norm": 0.5,
                    "train/images_per_sec": 100.0,
                },
                step=global_step,
            )
        metrics = {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "train_accuracy": 0.4 * epoch,
            "val_loss": 1.5 / epoch,
            "val_accuracy": val_accuracies[epoch - 1],
            "learning_rate": 1e-3,
            "epoch_time": 0.1,
            "grad_norm/decay": 0.3,
            "grad_norm/no_decay": 0.2,
        }
        metrics |= {f"bias_stats/block_{b}/head_0/{s}": 0.01 * b for b in range(BLOCKS) for s in ("mean", "std")}
        tracker.log(metrics, step=epoch)
        heatmaps = {f"bias/block_{b}": np.full((12, 20, 3), 40 * b + epoch, np.uint8) for b in range(BLOCKS)}
        tracker.log_images(heatmaps, step=epoch)
    summary = {
        "status": state,
        "reason": "test reason",
        "best_val_accuracy": max(val_accuracies),
        "best_epoch": 2,
        "epochs_run": EPOCHS,
        "val_accuracy": val_accuracies[-1],
        "run_dir": str(run_dir),
    }
    tracker.finish(state, summary)
    return summary


def leet(run_dir: Path, *args: str):
    """`wandb leet inspect` on the run's offline folder (no network)."""
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run(
        [console_script("wandb"), "leet", "inspect", *args, "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out) if "--summary" in args else [json.loads(line) for line in out.splitlines() if line]


def test_wandb_and_tensorboard_record_the_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = build_tracker(tracker_cfg(), is_main_process=True)
    assert isinstance(tracker, CompositeTracker)
    fake_training(tracker, tmp_path)

    run = leet(tmp_path, "--summary")
    assert run["state"] == "finished" and run["exit_code"] == 0  # finished, not left running
    assert run["run_id"] == tracker.run_id and run["project"] == "rpb-lab-test" and run["name"] == "fake"
    assert set(run["tags"]) == {"unit", "completed"}
    config = run["config"]
    assert config["trial_number"] == 7 and config["optim"] == {"name": "adamw", "lr": 0.01}  # extra_config merged
    assert config["sweep"]["storage"] == "postgresql://alice:***@db.example:5432/optuna"
    summary = run["summary"]
    assert summary["state"] == "completed" and summary["reason"] == "test reason"
    assert summary["best_val_accuracy"] == 0.75 and summary["val_accuracy"] == {"max": 0.75}
    # every metric a study may optimize keeps its best in the summary: min of a loss, max of an accuracy
    assert summary["val_loss"] == {"min": pytest.approx(1.5 / EPOCHS)}
    assert summary["train_loss"] == {"min": pytest.approx(1.0 / EPOCHS)}
    assert summary["train_accuracy"] == {"max": pytest.approx(0.4 * EPOCHS)}
    assert summary["train/loss"] == pytest.approx(2.0 / (EPOCHS * STEPS_PER_EPOCH))
    for key in (
        "train/lr",
        "train/grad_norm",
        "train/images_per_sec",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "learning_rate",
        "grad_norm/decay",
        "bias_stats/block_1/head_0/std",
        "global_step",
        "epoch",
    ):
        assert key in summary, key

    records = leet(tmp_path)
    metrics = {
        r["metric"].get("name") or r["metric"]["glob_name"]: r["metric"] for r in records if r["type"] == "metric"
    }
    assert metrics["train/*"]["step_metric"] == "global_step"
    assert metrics["val_accuracy"]["step_metric"] == "epoch" and metrics["val_accuracy"]["summary"] == {"max": True}
    for key in ("grad_norm/*", "bias/*", "bias_stats/*", "train_loss", "val_loss"):
        assert metrics[key]["step_metric"] == "epoch", key
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    step_rows = [row for row in history if "train/loss" in row]
    assert [row["global_step"] for row in step_rows] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    image_rows = [row for row in history if any(k.startswith("bias/") for k in row)]
    assert len(image_rows) == EPOCHS  # one row per epoch, one image per block in it
    for epoch, row in enumerate(image_rows, start=1):
        assert row["epoch"] == epoch
        # History records flatten media into dotted keys: "bias/block_0._type", "bias/block_0.width", ...
        images = sorted(k.removesuffix("._type") for k in row if k.startswith("bias/") and k.endswith("._type"))
        assert images == [f"bias/block_{b}" for b in range(BLOCKS)]
        assert row["bias/block_0._type"] == "image-file" and row["bias/block_0.width"] == 20
    [offline] = (tmp_path / "wandb").glob("offline-run-*")
    assert len(list((offline / "files" / "media" / "images" / "bias").glob("block_*.png"))) == EPOCHS * BLOCKS

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalar_tags = set(events.Tags()["scalars"])
    logged = {k for row in history for k in row if not k.startswith(("_", "bias/"))} - {"global_step", "epoch"}
    assert "val_accuracy" in logged and "train/loss" in logged
    assert logged <= scalar_tags  # the same scalars as W&B
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [(e.step, e.value) for e in events.Scalars("val_accuracy")] == [(1, 0.5), (2, 0.75)]
    assert set(events.Tags()["images"]) == {f"bias/block_{b}" for b in range(BLOCKS)}
    image = events.Images("bias/block_1")[-1]
    assert (image.step, image.width, image.height) == (2, 20, 12)


def test_many_runs_in_one_process_each_finished_with_its_state(tmp_path):
    ids = []
    for state, exit_code in (("pruned", 0), ("failed", 1)):
        tracker = build_tracker(tracker_cfg(tensorboard=False), is_main_process=True)
        fake_training(tracker, tmp_path / state, state=state)
        run = leet(tmp_path / state, "--summary")
        assert run["exit_code"] == exit_code and run["summary"]["state"] == state
        assert state in run["tags"]
        ids.append(tracker.run_id)
    assert len(set(ids)) == 2


def test_explicit_id_default_name_and_none_reason(tmp_path):
    tracker = build_tracker(tracker_cfg(tensorboard=False, id="fixedid1", name=None), is_main_process=True)
    tracker.start({"seed": 0}, tmp_path / "trial-3")
    tracker.finish("completed", {"reason": None})
    run = leet(tmp_path / "trial-3", "--summary")
    assert tracker.run_id == run["run_id"] == "fixedid1"
    assert run["name"] == "trial-3"  # name: null -> the run folder's name
    assert run["summary"]["reason"] == ""


def test_non_main_process_writes_nothing(tmp_path):
    tracker = build_tracker(tracker_cfg(), is_main_process=False)
    assert isinstance(tracker, NoOpTracker)
    fake_training(tracker, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert tracker.run_id is None


def test_disabled_writes_nothing(tmp_path):
    fake_training(build_tracker(tracker_cfg(mode="disabled", tensorboard=False), is_main_process=True), tmp_path)
    fake_training(build_tracker(tracker_cfg(wandb=False, tensorboard=False), is_main_process=True), tmp_path)
    assert list(tmp_path.iterdir()) == []
    # W&B disabled, TensorBoard on: only the TensorBoard folder.
    fake_training(build_tracker(tracker_cfg(mode="disabled"), is_main_process=True), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tensorboard"]


def test_config_mistakes_are_named():
    with pytest.raises(ValueError, match=r"tracker\.wandb\.mode='onlin'"):
        build_tracker(tracker_cfg(mode="onlin"), is_main_process=True)
    with pytest.raises(ValueError, match=r"tracker\.wandb\.log_model is not a W&B tracker option"):
        build_tracker(tracker_cfg(log_model=True), is_main_process=True)


def test_composite_finishes_every_tracker_when_one_fails():
    finished = []

    class Broken(NoOpTracker):
        def finish(self, state, summary=None):
            raise RuntimeError("disk full")

    class Recorder(NoOpTracker):
        def finish(self, state, summary=None):
            finished.append(state)

    with pytest.raises(RuntimeError, match="disk full"):
        CompositeTracker([Broken(), Recorder()]).finish("failed")
    assert finished == ["failed"]


def test_mask_secrets():
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {
            "storage": "postgresql://user:secret@host/db",
            "urls": ["mysql+pymysql://root:p@ss:w0rd@127.0.0.1:3306/x", "https://example.com/path?q=1"],
            "nested": {"plain": "user:secret@host", "api_key": "abc123", "token": None, "lr": 0.1, "num_tokens": 5},
            "sqlite_url": "sqlite:///runs/study.db",
            "journal": "postgresql://user@host/db",
        }
    )
    masked = mask_secrets(config)
    assert masked["storage"] == "postgresql://user:***@host/db"
    assert masked["urls"] == ["mysql+pymysql://root:***@127.0.0.1:3306/x", "https://example.com/path?q=1"]
    assert masked["nested"] == {
        "plain": "user:secret@host",
        "api_key": "***",
        "token": None,
        "lr": 0.1,
        "num_tokens": 5,
    }
    assert masked["sqlite_url"] == "sqlite:///runs/study.db"
    assert masked["journal"] == "postgresql://user@host/db"
    assert mask_secrets("see redis://:hunter2@cache:6379/0 and x") == "see redis://:***@cache:6379/0 and x"
    assert mask_secrets("postgresql://u:pa/ss@db:5432/rpb") == "postgresql://u:***@db:5432/rpb"  # "/" in a password
    assert config.storage == "postgresql://user:secret@host/db"  # the input is left alone


def test_heatmap_tiles_layout_and_colours():
    from experiments.trackers.heatmaps import heatmap_tiles

    maps = np.zeros((3, 5, 7), dtype=np.float32)
    maps[0, 0, 0], maps[1, 4, 6] = 2.0, -1.0
    image = heatmap_tiles(maps, scale=2, gap=1)
    assert image.shape == (10, 3 * 14 + 2, 3) and image.dtype == np.uint8
    assert (image[:, 14] == 255).all()  # the gap between heads is white
    zero, high, low = image[5, 5], image[0, 0], image[9, 14 + 1 + 13]
    assert zero.min() >= 240  # zero bias is (near) white on the diverging map
    assert high[0] > high[2] and low[2] > low[0]  # positive red, negative blue
    assert (image[0:2, 0:2] == high).all()  # nearest upsampling


def test_bias_heatmap_images_of_a_model():
    import torch

    from experiments.tracking import bias_heatmap_images
    from rpb import VisionTransformer

    model = VisionTransformer(
        img_size=16,
        patch_size=4,
        in_channels=1,
        num_classes=3,
        embed_dim=16,
        depth=2,
        num_heads=2,
        rpb_kwargs={"num_heads": 2, "window_size": (4, 4)},
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    images = bias_heatmap_images(model, scale=4)
    assert sorted(images) == ["bias/block_0", "bias/block_1"]
    assert images["bias/block_0"].shape == (7 * 4, 2 * 7 * 4 + 4, 3)
    assert not np.array_equal(images["bias/block_0"], images["bias/block_1"])


def test_online_without_credentials_is_refused_not_prompted(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    tracker = build_tracker(tracker_cfg(mode="online", tensorboard=False), is_main_process=True)
    with pytest.raises(ConfigError, match=r"tracker\.wandb\.mode=online found no W&B credentials"):
        tracker.start({"seed": 0}, tmp_path / "run")  # a ConfigError: rpb-train says it in one sentence, exit 2
    assert not list((tmp_path / "run").glob("wandb/*run-*"))


def test_wandb_speaks_when_verbose(tmp_path):
    # A process of its own: W&B keeps the console settings of its first run in a process (and WANDB_SILENT, which
    # conftest sets, would silence it anyway). That it is quiet by default is checked by tests/test_sigint.py.
    script = (
        "import sys\n"
        "from experiments.tracking import build_tracker\n"
        "from tests.experiments.test_tracking import tracker_cfg\n"
        "tracker = build_tracker(tracker_cfg(tensorboard=False, verbose=True), is_main_process=True)\n"
        "tracker.start({'seed': 0}, sys.argv[1])\n"
        "tracker.finish('completed', {})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"} | {"WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert any(line.startswith("wandb:") for line in (proc.stdout + proc.stderr).splitlines())


def _artifacts(run_dir: Path) -> list[dict]:
    """The artifact records of the run's offline folder, as `wandb leet inspect --json` reads them."""
    return [r["artifact"] for r in leet(run_dir) if r["type"] == "artifact"]


def _write_best_checkpoint(run_dir: Path) -> Path:
    best = run_dir / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_bytes(b"a checkpoint")
    return best


def test_best_checkpoint_is_logged_as_a_model_artifact(tmp_path):
    best = _write_best_checkpoint(tmp_path)
    tracker = build_tracker(tracker_cfg(tensorboard=False), is_main_process=True)
    fake_training(tracker, tmp_path)

    [artifact] = _artifacts(tmp_path)
    assert artifact["type"] == "model" and artifact["name"] == f"model-{tracker.run_id}"
    assert set(artifact["aliases"]) == {"best", "latest"}
    metadata = json.loads(artifact["metadata"])
    assert metadata["state"] == "completed" and metadata["best_val_accuracy"] == 0.75 and metadata["best_epoch"] == 2
    [entry] = artifact["manifest"]["contents"]
    # offline, the artifact's file is the run folder's own checkpoint (no copy in W&B's staging folder)
    assert entry["path"] == "best.pt" and entry["local_path"] == str(best) and int(entry["size"]) == best.stat().st_size


@pytest.mark.parametrize("state", ["failed", "interrupted"])
def test_no_model_artifact_for_a_failed_run_or_without_a_checkpoint(tmp_path, state):
    _write_best_checkpoint(tmp_path / state)
    fake_training(build_tracker(tracker_cfg(tensorboard=False), is_main_process=True), tmp_path / state, state=state)
    assert _artifacts(tmp_path / state) == []  # resumed or retried: it logs its best when it ends
    fake_training(build_tracker(tracker_cfg(tensorboard=False), is_main_process=True), tmp_path / "no-checkpoint")
    assert _artifacts(tmp_path / "no-checkpoint") == []


def _hparams(tensorboard_dir: Path):
    """TensorBoard's hparams plugin data of the run: {tag: HParamsPluginData}, and the scalars' tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    try:
        content = events.PluginTagToContent("hparams")
    except KeyError:  # no hparams in the run
        content = {}
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    return data, events


def test_tensorboard_writes_a_sweep_trials_hparams(tmp_path):
    cfg = tracker_cfg(wandb=False)
    cfg["extra_config"]["trial_params"] = {"optim.lr": 0.01, "model.rpb.window_size": [7, 7], "model.drop": None}
    fake_training(build_tracker(cfg, is_main_process=True), tmp_path)

    data, events = _hparams(tmp_path / "tensorboard")
    start = data["_hparams_/session_start_info"].session_start_info
    assert start.hparams["optim.lr"].number_value == 0.01
    assert start.hparams["model.rpb.window_size"].string_value == "[7, 7]"
    assert "model.drop" not in start.hparams  # None is no hparam
    metrics = {m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos}
    assert {"hparams/best_val_accuracy", "hparams/val_accuracy", "hparams/epochs_run"} <= metrics
    assert "hparams/status" not in metrics and "hparams/run_dir" not in metrics  # numbers only
    # in the run's own folder (one session per trial), beside its curves
    assert [(e.step, e.value) for e in events.Scalars("hparams/best_val_accuracy")] == [(EPOCHS, 0.75)]
    assert [e.value for e in events.Scalars("val_accuracy")] == [0.5, 0.75]
    assert [p.name for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()] == []


def test_tensorboard_writes_no_hparams_outside_a_sweep(tmp_path):
    fake_training(build_tracker(tracker_cfg(wandb=False), is_main_process=True), tmp_path)
    data, _ = _hparams(tmp_path / "tensorboard")
    assert data == {}


def test_a_training_run_logs_its_best_checkpoint_and_a_trials_hparams(compose, tmp_path):
    from experiments.train import train

    cfg = compose(["tracker=default", "+tracker.extra_config.trial_params={optim.lr: 0.001}"])
    result = train(cfg)
    run_dir = Path(result["run_dir"])
    [artifact] = _artifacts(run_dir)
    assert artifact["type"] == "model" and artifact["name"] == f"model-{result['wandb_run_id']}"
    [entry] = artifact["manifest"]["contents"]
    assert entry["local_path"] == str(run_dir / "checkpoints" / "best.pt")
    assert json.loads(artifact["metadata"])["best_epoch"] == result["best_epoch"] == 1
    data, _ = _hparams(run_dir / "tensorboard")
    assert data["_hparams_/session_start_info"].session_start_info.hparams["optim.lr"].number_value == 0.001
