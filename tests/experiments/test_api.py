"""The Python API: load_run (a run's model and config) and load_config (a run, its config.yaml or a best.yaml)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from experiments.api import load_config, load_run
from experiments.checkpoint import load_best
from experiments.config import compose_config, validate_config
from experiments.config_errors import ConfigError
from experiments.train import train
from tests.conftest import TINY_OVERRIDES


@pytest.fixture
def tiny_run(compose, tmp_path):
    """A finished tiny run (2 epochs) in tmp_path/run and its result."""
    return tmp_path / "run", train(compose(["trainer.epochs=2"]))


def test_load_run_gives_the_best_model_in_eval_mode_and_its_config(tiny_run):
    run, result = tiny_run
    model, cfg = load_run(run)
    assert not model.training and cfg.model.depth == 2 and cfg.run_dir == str(run)
    best = load_best(run / "checkpoints" / "best.pt")
    assert best["epoch"] == result["best_epoch"]
    for key, value in best["model"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_run_falls_back_to_the_last_checkpoint(tiny_run):
    run, _ = tiny_run
    (run / "checkpoints" / "best.pt").unlink()
    model, _ = load_run(run)
    from safetensors.torch import load_file

    last = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in last.items())


def test_load_run_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        load_run(tmp_path)


def test_load_config_of_a_run_folder_equals_its_config_yaml(tiny_run):
    run, _ = tiny_run
    assert load_config(run) == validate_config(OmegaConf.load(run / "config.yaml"))
    assert load_config(run / "config.yaml", ["trainer.epochs=5"]).trainer.epochs == 5


def test_a_best_yaml_composes_as_rpb_train_config_name_best(tmp_path):
    # the format sweeps.summary.write_best_config writes: a header, `defaults: [train, _self_]`, the trial's config
    body = {"seed": 7, "model": {"depth": 2, "embed_dim": 32, "num_heads": 2, "head_dim": None}, "optim": {"lr": 2e-3}}
    best = tmp_path / "study" / "best.yaml"
    best.parent.mkdir()
    doc = OmegaConf.create({"defaults": ["train", "_self_"], **body})
    best.write_text("# Best trial 3 of study study (val_accuracy = 0.9000).\n" + OmegaConf.to_yaml(doc))
    with pytest.raises(ConfigError, match="defaults"):  # the symptom: the file alone is not a config
        validate_config(OmegaConf.load(best))
    cfg = load_config(best, ["trainer.epochs=3"])
    overrides = ["seed=7", "model.depth=2", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null",
                 "optim.lr=2e-3", "trainer.epochs=3"]  # fmt: skip
    assert cfg == compose_config(overrides)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nothing.yaml")


def test_a_best_yaml_trains(tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("defaults:\n- train\n- _self_\nseed: 3\n")
    result = train(load_config(best, [*TINY_OVERRIDES, f"run_dir={tmp_path}/run"]))
    assert result["status"] == "completed"
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").seed == 3
