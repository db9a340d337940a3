"""Configs: every group composes and builds a model, the defaults and the guide's presets, mistakes refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.config import CONF_DIR, ConfigError, build_model, compose_config, to_yaml, validate_config
from experiments.optimizers import lr_factor

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null"]
GROUPS = ("data", "model", "optim", "schedule", "trainer", "tracker", "experiment")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_builds_a_model(group, option):
    # Big presets (ViT-B/16) are built as they are; others with a tiny model to keep the test fast.
    # ViT-B/16 keeps its width, heads and patch but is built one block deep (86M parameters take ~10 s here).
    big = option == "vit_b16"
    extra = ["data.img_size=224"] if (group, option) == ("model", "vit_b16") else []
    cfg = compose_config([f"{group}={option}", *(["model.depth=1"] if big else TINY_MODEL), *extra])
    assert cfg[group if group != "experiment" else "model"] is not None
    model = build_model(cfg)
    x = torch.randn(1, cfg.data.in_channels, cfg.data.img_size, cfg.data.img_size)
    if not big:
        assert model(x).shape == (1, cfg.data.num_classes)
    grid = cfg.data.img_size // cfg.model.patch_size
    assert model.grid_size == (grid, grid)


def test_defaults_are_the_short_recipe_that_learns_digits_in_two_minutes():
    # The recipe chosen for issue 13 (experiments/bench_defaults.py measures it): a smaller model than the guide's,
    # no dropout, more epochs, label smoothing; the bias stays on, with no absolute position embedding.
    cfg = compose_config()
    m, t = cfg.model, cfg.trainer
    assert (cfg.seed, cfg.data.name, cfg.data.batch_size, cfg.data.augment) == (42, "digits", 32, True)
    assert (cfg.data.img_size // m.patch_size) ** 2 == 49  # the guide's 7x7 token grid: windows 3, 5, 7 all fit
    assert (m.embed_dim, m.depth, m.num_heads, m.head_dim, m.drop_rate, m.attn_drop_rate) == (64, 4, 4, 16, 0.0, 0.0)
    assert (m.rpb.enabled, list(m.rpb.window_size), m.pos_embed) == (True, [7, 7], "none")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-3, 0.05)
    assert (cfg.schedule.name, cfg.schedule.warmup_epochs) == ("warmup_cosine", 2.0)
    assert (t.epochs, t.label_smoothing, t.mixed_precision, t.clip_grad_norm) == (40, 0.1, None, 1.0)  # None: launch's
    small, guide = (build_model(c) for c in (cfg, compose_config(["experiment=guide"])))
    n_small, n_guide = (sum(p.numel() for p in model.parameters()) for model in (small, guide))
    assert n_small < 0.5 * n_guide  # 4 blocks of width 64 against 6 of width 96


def test_experiment_guide_reproduces_the_guides_rpb_config_and_training_loop():
    cfg = compose_config(["experiment=guide"])
    assert (cfg.name, cfg.seed, cfg.data.batch_size) == ("guide", 42, 32)
    assert (cfg.data.img_size // cfg.model.patch_size) ** 2 == 49  # sequence_length 49: a 7x7 token grid
    assert (cfg.model.embed_dim, cfg.model.num_heads, cfg.model.head_dim) == (96, 4, 24)
    assert cfg.model.drop_rate == cfg.model.attn_drop_rate == 0.1
    rpb = cfg.model.rpb
    assert (rpb.enabled, rpb.bias_type, list(rpb.window_size), rpb.learnable, rpb.init_std) == (
        True, "2d", [7, 7], True, 0.02,
    )  # fmt: skip
    bias = build_model(cfg).blocks[0].attn.relative_position_bias
    assert bias.relative_position_bias_table.shape == (13 * 13 + 3, 4)
    assert 0.005 < bias.relative_position_bias_table.std().item() < 0.03
    # the guide's loop: AdamW 1e-3, weight decay 0.05, 100 epochs, 10 of LinearLR warmup from 0.1, cosine to 0
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.epochs) == ("adamw", 1e-3, 0.05, 100)
    s = cfg.schedule
    assert (s.name, s.warmup_epochs, s.warmup_start_factor, s.min_lr) == ("warmup_cosine", 10.0, 0.1, 0.0)
    assert (cfg.trainer.clip_grad_norm, cfg.trainer.label_smoothing, cfg.model.depth) == (1.0, 0.0, 6)


def test_experiment_guide_agrees_with_the_guides_own_yaml_file():
    """conf/guide/rpb_config.yaml (the guide's keys, through --guide-config) and experiment=guide set the same model."""
    from experiments.guide_config import compose_guide_config

    preset, from_file = (
        compose_config(["experiment=guide"]),
        compose_guide_config(CONF_DIR / "guide" / "rpb_config.yaml"),
    )
    for key in ("seed", "data.batch_size", "data.img_size", "model.embed_dim", "model.num_heads", "model.head_dim",
                "model.drop_rate", "model.attn_drop_rate", "model.scale", "model.rpb"):  # fmt: skip
        assert OmegaConf.select(preset, key) == OmegaConf.select(from_file, key), key


def test_experiment_presets_reproduce_the_guides_my_experiment_and_vit_b16():
    cfg = compose_config(["experiment=guide_my_experiment"])
    assert (cfg.name, cfg.seed, cfg.data.batch_size) == ("my_experiment", 123, 64)
    assert (cfg.trainer.epochs, cfg.schedule.warmup_epochs, cfg.model.depth) == (100, 10.0, 6)  # the guide's loop
    assert (cfg.model.embed_dim, cfg.model.num_heads, list(cfg.model.rpb.window_size)) == (192, 8, [14, 14])
    assert cfg.data.img_size // cfg.model.patch_size == 14  # 56x56 digits, patch 4
    cfg = compose_config(["experiment=vit_b16"])
    m = cfg.model
    assert (cfg.data.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads) == (224, 16, 768, 12, 12)
    assert list(m.rpb.window_size) == [14, 14] and cfg.data.name == "synthetic" and cfg.data.num_classes == 1000


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.embed_dimm=64"], "model.embed_dimm"),  # misspelt key
        (["+model.foo=1"], "model.foo"),  # a key the schema does not have
        (["model.depth=two"], "model.depth"),  # wrong type
        (["data.augment=maybe"], "data.augment"),
        (["optim.lr=-0.001"], "optim.lr"),  # negative learning rate
        (["model.rpb.window_size=[9,9]"], "model.rpb.window_size"),  # window larger than the 7x7 grid
        (["model.num_heads=5", "model.head_dim=null"], "model.num_heads"),  # heads do not divide the width
        (["model.num_heads=8"], "model.head_dim"),  # 8 heads of 24 is not width 96
        (["trainer.mixed_precision=fp8"], "trainer.mixed_precision"),
        (["model=vit_huge"], "model=vit_huge"),  # unknown group option
        (["data.img_size=30"], "model.patch_size"),
        (["model.rpb.mode=local"], "model.rpb.mode"),  # local windows have no class token
    ],
)
def test_bad_configs_are_refused_in_one_sentence_naming_the_key(overrides, named):
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    message = str(info.value)
    assert named in message
    assert "\n" not in message and message.endswith((".", "?)"))


def test_validate_config_refuses_plain_dicts_with_wrong_types():
    cfg = OmegaConf.to_container(compose_config(), resolve=True)
    cfg["trainer"]["epochs"] = "many"
    with pytest.raises(ConfigError, match=r"trainer\.epochs must be an integer"):
        validate_config(cfg)
    cfg["trainer"]["epochs"] = 2
    cfg["trainer"]["epoch"] = 2
    with pytest.raises(ConfigError, match=r"'trainer\.epoch' \(did you mean 'epochs'\?\)"):
        validate_config(cfg)


def test_cli_prints_the_sentence_without_traceback_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "optim.lr=-1", f"output_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "rpb-train: optim.lr=-1.0 is out of range: it must be > 0."
    assert not list(tmp_path.iterdir())  # refused before any work


def test_saved_config_masks_passwords():
    cfg = compose_config(["+tracker.extra_config.storage='postgresql://rpb:hunter2@db:5432/optuna'"])
    text = to_yaml(cfg)
    assert "hunter2" not in text and "postgresql://rpb:***@db:5432/optuna" in text


def test_dataset_names_match_the_data_module():
    import experiments.config
    import experiments.data

    assert experiments.config.DATASETS == experiments.data.DATASETS
    assert sorted(experiments.data.DATASETS) == _options("data")


def test_warmup_cosine_factor():
    kw = dict(warmup_steps=10, total_steps=110, start_factor=0.1, min_factor=0.01, cosine=True)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.505)
    assert lr_factor(110, **kw) == lr_factor(500, **kw) == pytest.approx(0.01)
    assert lr_factor(50, **{**kw, "cosine": False}) == 1.0
