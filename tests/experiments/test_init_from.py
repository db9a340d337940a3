"""model.init_from: a run folder, a checkpoint file or a timm state dict; every key used or the load refused."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from experiments.checkpoint import save_checkpoint
from experiments.config_errors import ConfigError
from experiments.init_from import load_init_weights
from experiments.run_dir import RunDir
from experiments.train import train
from rpb import VisionTransformer

TINY_VIT = dict(img_size=16, patch_size=4, in_channels=1, num_classes=5, embed_dim=32, depth=2, num_heads=4)


def vit(seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**{**TINY_VIT, **kw}).eval()


def test_a_run_starts_at_the_accuracy_of_the_run_it_starts_from(compose, tmp_path, capsys):
    # no augmentation: the tiny model's 2 short epochs get clear of chance (0.21 at seed 42; ~0.15 with the crops)
    source = train(compose(["trainer.epochs=2", "trainer.limit_train_batches=24", "optim.lr=3e-3", "data.augment=false",
                            f"run_dir={tmp_path}/source"]))  # fmt: skip
    assert source["status"] == "completed" and source["best_val_accuracy"] > 0.15  # 10 classes: above chance
    # lr 1e-12: the one epoch of training changes no prediction, so its validation is the loaded model's
    tuned = train(compose([f"model.init_from={tmp_path}/source", "optim.lr=1e-12", "schedule.min_lr=0",
                           f"run_dir={tmp_path}/tuned"]))  # fmt: skip
    assert tuned["val_accuracy"] == source["best_val_accuracy"]
    best = RunDir(tmp_path / "source").read_metrics()[source["best_epoch"] - 1]
    assert tuned["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)  # the same model, not just as accurate
    saved = OmegaConf.load(tmp_path / "tuned" / "config.yaml")
    assert saved.model.init_from == str((tmp_path / "source" / "checkpoints" / "best.pt").resolve())
    # resuming the fine-tuned run continues from its own checkpoint, not from init_from again
    (tmp_path / "source" / "checkpoints" / "best.pt").unlink()
    resumed = train(compose([f"resume={tmp_path}/tuned", "trainer.epochs=1"]))
    assert resumed["epochs_run"] == 1


def test_a_run_folder_without_best_pt_gives_its_last_checkpoint(compose, tmp_path):
    train(compose([f"run_dir={tmp_path}/source"]))
    (tmp_path / "source" / "checkpoints" / "best.pt").unlink()
    cfg = compose()
    from experiments.config import build_model

    model = build_model(cfg)
    path, notes = load_init_weights(model, tmp_path / "source")
    assert path.name == "model.safetensors" and path.parent.name.startswith("state-e") and notes == []


def test_a_guide_checkpoint_loads_exactly(tmp_path):
    src = vit(1)
    save_checkpoint(src, None, 3, {"accuracy": 0.5}, tmp_path / "best_model.pth")
    dst = vit(2)
    path, notes = load_init_weights(dst, tmp_path / "best_model.pth")
    assert notes == [] and path == (tmp_path / "best_model.pth").resolve()
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_another_number_of_classes_reinitialises_the_classifier_in_one_line(tmp_path):
    src = vit(1)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    dst = vit(2, num_classes=3)
    head = dst.head.weight.clone()
    _, notes = load_init_weights(dst, tmp_path / "sd.pt")
    assert notes == ["model.init_from: the classifier is re-initialised (5 classes there, 3 here)"]
    assert torch.equal(dst.head.weight, head) and torch.equal(
        dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight
    )


def test_another_window_resizes_the_bias_tables(tmp_path):
    src = vit(1, window_size=(3, 3))
    torch.save({"model": src.state_dict()}, tmp_path / "w3.pt")
    dst = vit(2)  # window = the 4x4 grid
    _, notes = load_init_weights(dst, tmp_path / "w3.pt")
    assert notes == [
        "model.init_from: 2 bias table(s) resized to this model's window ([28, 4] -> [52, 4], rows x heads)"
    ]
    table = dst.blocks[0].attn.relative_position_bias.relative_position_bias_table
    assert torch.equal(table[-3:], src.blocks[0].attn.relative_position_bias.relative_position_bias_table[-3:])


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (dict(depth=1), r"13 of its keys have no place in the model \(blocks\.1\.attn\.proj\.bias, .* and \d+ more\)"),
        (dict(depth=3), r"it lacks \d+ of the model's \(blocks\.2\."),
        (dict(layer_scale_init=1e-5), r"it lacks 4 of the model's \(blocks\.0\.ls1\.gamma"),
        (dict(mlp_ratio=2.0), r"6 tensor\(s\) differ in shape \(blocks\.0\.mlp\.fc1\.weight \[128, 32\] vs \[64, 32\]"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_and_nothing_loads(tmp_path, change, sentence):
    torch.save(vit(1).state_dict(), tmp_path / "sd.pt")
    dst = vit(2, **change)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ConfigError, match=sentence):
        load_init_weights(dst, tmp_path / "sd.pt")
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_missing_sources_and_non_checkpoints_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.init_from='.*nowhere' does not exist: give a run folder"):
        load_init_weights(vit(), tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"is a folder without checkpoints/best\.pt or checkpoints/last/model"):
        load_init_weights(vit(), tmp_path)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"notes\.pt' is not a readable checkpoint"):
        load_init_weights(vit(), tmp_path / "notes.pt")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        load_init_weights(vit(), tmp_path / "meta.pt")


def test_a_timm_state_dict_converts_with_timms_logits(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, img_size=16, patch_size=4,
                               in_chans=1, num_classes=5, embed_dim=32, depth=2, num_heads=4).eval()  # fmt: skip
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.2 * torch.randn_like(p))
    torch.save(theirs.state_dict(), tmp_path / "timm.pth")
    ours = vit(qkv_bias=False, class_token=False, global_pool="avg", fc_norm=True, layer_scale_init=1e-6,
               norm_eps=1e-6)  # fmt: skip
    _, notes = load_init_weights(ours, tmp_path / "timm.pth")
    assert notes == ["model.init_from: a timm VisionTransformerRelPos state dict, converted (rpb.timm_convert)"]
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-5
    plain = vit()  # the default model: no LayerScale, a class token, qkv bias
    with pytest.raises(ConfigError, match=r"timm\.pth' does not fit the configured model: .* have no place .*ls1"):
        load_init_weights(plain, tmp_path / "timm.pth")


def test_rpb_train_refuses_a_missing_init_from_with_exit_2(tmp_path, capsys):
    from experiments.cli import main

    with pytest.raises(SystemExit) as info:
        main(["tracker=none", f"run_dir={tmp_path}/run", f"model.init_from={tmp_path}/nowhere"])
    assert info.value.code == 2
    assert f"model.init_from='{tmp_path}/nowhere' does not exist" in capsys.readouterr().err
