"""Work with runs from Python: a run's config and its trained model, a sweep's best.yaml.

model, cfg = load_run("runs/rpb-vit-20261201-120000-000000")   # eval mode, its best checkpoint (else its last)
cfg = load_config("runs/sweeps/my-study/best.yaml")            # as rpb-train --config-dir=... --config-name=best
result = train(load_config("runs/sweeps/my-study/best.yaml", ["trainer.epochs=60"]))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.config import build_model, compose_config, validate_config
from experiments.config_errors import ConfigError
from experiments.init_from import load_init_weights
from experiments.run_dir import RunDir

__all__ = ["load_config", "load_run"]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The validated training config a file or run folder describes.

    Args:
        path: a run folder (its config.yaml), a run's config.yaml (resolved: used as it is), or a Hydra primary
            config with a `defaults` list such as a sweep's best.yaml (`defaults: [train, _self_]`), composed as
            `rpb-train --config-dir=<its folder> --config-name=<its name>` composes it.
        overrides: Hydra overrides (`"trainer.epochs=60"`) on top.

    Raises:
        ConfigError: no such file, or a config that does not validate (one sentence).
    """
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).config
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist: give a run folder, its config.yaml or a best.yaml.")
    if "defaults" in OmegaConf.load(path):
        return compose_config(overrides, config_name=path.stem, config_dir=path.parent)
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return validate_config(cfg)


def load_run(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """A trained run's model (its best checkpoint, else its last; in eval mode, on the CPU) and its config.

    Every key of the checkpoint is loaded into the model its config.yaml builds (`experiments.init_from`).

    Raises:
        ConfigError: not a run folder, or a run without a checkpoint yet.
    """
    run = RunDir(path)
    if not run.config.is_file():
        raise ConfigError(f"{str(path)!r} is not a run folder (no config.yaml): give the folder of a run.")
    cfg = load_config(run.config)
    model = build_model(cfg)
    load_init_weights(model, run.path, key="load_run")
    return model.eval(), cfg
