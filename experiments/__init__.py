"""Training of rpb models: Hydra configs, the Accelerate loop, checkpoints, trackers, data.

The training guide's API is importable from here; modules load lazily, so `import experiments` stays light
(no torch, Hydra or W&B until a name is used):

    from experiments import train_epoch, evaluate, save_checkpoint, visualize_relative_position_bias
    from experiments import SyntheticImageDataset, compose_config, train
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "experiments.train",
    "train_epoch": "experiments.engine",
    "evaluate": "experiments.engine",
    "save_checkpoint": "experiments.checkpoint",
    "compose_config": "experiments.config",
    "validate_config": "experiments.config",
    "build_model": "experiments.config",
    "ConfigError": "experiments.config_errors",
    "compose_guide_config": "experiments.guide_config",
    "SyntheticImageDataset": "experiments.data",
    "build_dataloaders": "experiments.data",
    "visualize_relative_position_bias": "rpb.plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
