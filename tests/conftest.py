"""Shared test setup: never prompt, never reach a network, draw headless."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


# --- Training fixtures (training helper): a tiny digits run composed from the real conf/ ---------------------
import pytest

# depth 2, width 32, 2 heads, 1 epoch of 8 train + 4 val batches, trackers off: a full train() in a few seconds on 2 cores.
TINY_OVERRIDES = (
    "model.depth=2",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.head_dim=null",
    "trainer.epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=4",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=4",
    "tracker=none",
)


@pytest.fixture
def compose(tmp_path):
    """compose(overrides=(), config_name="train") -> the tiny validated config with run_dir and output_dir under
    tmp_path; later overrides win (e.g. compose(["tracker=default", "trainer.epochs=2"]))."""
    from experiments.config import compose_config

    def _compose(overrides=(), config_name: str = "train"):
        base = [*TINY_OVERRIDES, f"output_dir={tmp_path}/runs", f"run_dir={tmp_path}/run"]
        return compose_config([*base, *overrides], config_name=config_name)

    return _compose


@pytest.fixture
def tiny_cfg(compose):
    """A composed, validated DictConfig of a tiny one-epoch digits run writing to tmp_path/run."""
    return compose()
