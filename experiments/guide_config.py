"""Run the training guide's own YAML files (`project` / `input` / `attention` / `relative_position_bias` keys).

`rpb-train --guide-config conf/guide/rpb_config.yaml [overrides...]` or `compose_guide_config(path, overrides)`.
Each guide key becomes a Hydra override of `conf/train.yaml`, so the result is validated like any config:

    project.name -> name              project.seed -> seed          project.device -> trainer.cpu
    input.batch_size -> data.batch_size                             input.embed_dim -> model.embed_dim
    input.sequence_length: must equal the token grid (img_size / patch_size)^2
    attention.num_heads / head_dim / scale -> model.*               attention.dropout -> model.drop_rate and
                                                                      model.attn_drop_rate (attention and MLP)
    relative_position_bias.{enabled, type, window_size, learnable, init_std} -> model.rpb.{..., bias_type, ...}

The guide's bias window is its token grid (rpb_config: window 7x7, sequence_length 49), so a square 2d window
sets `data.img_size = window * model.patch_size` (7x7 -> 28x28 digits, 14x14 -> 56x56) unless the overrides
given with it set data.img_size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from experiments.config import compose_config, compose_unvalidated
from experiments.config_errors import ConfigError, closest

__all__ = ["GUIDE_KEYS", "compose_guide_config", "guide_overrides", "resolve_guide_overrides"]

# guide section -> guide key -> config key (None: handled specially)
GUIDE_KEYS: dict[str, dict[str, str | None]] = {
    "project": {"name": "name", "seed": "seed", "device": None},
    "input": {"batch_size": "data.batch_size", "sequence_length": None, "embed_dim": "model.embed_dim"},
    "attention": {
        "num_heads": "model.num_heads",
        "head_dim": "model.head_dim",
        "dropout": None,
        "scale": "model.scale",
    },
    "relative_position_bias": {
        "enabled": "model.rpb.enabled",
        "type": "model.rpb.bias_type",
        "window_size": "model.rpb.window_size",
        "learnable": "model.rpb.learnable",
        "init_std": "model.rpb.init_std",
    },
}
DEVICES = ("cuda", "cpu", "auto")


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--guide-config {str(path)!r} is not a file: give the path of a guide YAML file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--guide-config {str(path)!r} is not valid YAML ({exc.__class__.__name__}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--guide-config {str(path)!r} must hold a mapping of sections: {', '.join(GUIDE_KEYS)}.")
    return data


def _value(value: Any) -> str:
    """A Hydra override value: YAML's own spelling (lists as [a, b], null, quoted strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def guide_overrides(path: str | Path) -> tuple[list[str], int | None]:
    """Hydra overrides for a guide YAML file and its `input.sequence_length` (None when absent).

    Raises:
        ConfigError: an unknown section or key (named), or a device that is not cuda / cpu / auto.
    """
    guide = _read(path)
    overrides: list[str] = []
    sequence_length = None
    for section, body in guide.items():
        if section not in GUIDE_KEYS:
            raise ConfigError(
                f"Unknown guide config section {section!r}{closest(str(section), list(GUIDE_KEYS))}: "
                f"the guide's sections are {', '.join(GUIDE_KEYS)}."
            )
        if not isinstance(body, dict):
            raise ConfigError(f"Guide config section {section!r} must be a mapping of keys.")
        known = GUIDE_KEYS[section]
        for key, value in body.items():
            if key not in known:
                raise ConfigError(
                    f"Unknown guide config key '{section}.{key}'{closest(str(key), list(known))}: "
                    f"{section} knows {', '.join(known)}."
                )
            target = known[key]
            if target is not None:
                overrides.append(f"{target}={_value(value)}")
            elif key == "device":
                overrides.append(f"trainer.cpu={_value(_use_cpu(value))}")
            elif key == "dropout":
                overrides += [f"model.drop_rate={_value(value)}", f"model.attn_drop_rate={_value(value)}"]
            elif key == "sequence_length":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"input.sequence_length must be a positive integer, got {value!r}.")
                sequence_length = value
    return overrides, sequence_length


def _grid_side(path: str | Path) -> int | None:
    """The token grid side a guide file implies: its square 2d window (None when it names none)."""
    rpb = _read(path).get("relative_position_bias") or {}
    window = rpb.get("window_size")
    if rpb.get("type", "2d") == "2d" and isinstance(window, list) and len(window) == 2 and window[0] == window[1]:
        return int(window[0])
    return None


def resolve_guide_overrides(path: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """All Hydra overrides of a guide run: the guide's keys, the image size its window implies (unless
    `overrides` set data.img_size), then `overrides`. Checks input.sequence_length against the token grid."""
    guide, sequence_length = guide_overrides(path)
    if not any(o.startswith("experiment=") for o in overrides):
        guide.insert(0, "experiment=guide")  # the guide's recipe (100 epochs, ...) under the keys its file leaves out
    side = _grid_side(path)
    if side is not None and not any(o.lstrip("+").startswith("data.img_size=") for o in overrides):
        patch = compose_unvalidated([*guide, *overrides]).model.patch_size
        guide.append(f"data.img_size={side * patch}")
    full = [*guide, *overrides]
    if sequence_length is not None:
        _check_sequence_length(compose_config(full), sequence_length)
    return full


def _use_cpu(device: Any) -> bool:
    if device not in DEVICES:
        raise ConfigError(f"project.device={device!r} is not allowed: choose one of {', '.join(DEVICES)}.")
    if device == "cpu":
        return True
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        warnings.warn("project.device is 'cuda' but CUDA is not available here: training on the CPU.", stacklevel=3)
        return True
    return False


def compose_guide_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The validated training config of a guide YAML file, with further Hydra `overrides` applied after it."""
    return compose_config(resolve_guide_overrides(path, overrides))


def _check_sequence_length(cfg: DictConfig, sequence_length: int) -> None:
    grid = cfg.data.img_size // cfg.model.patch_size
    if sequence_length != grid * grid:
        side = math.isqrt(sequence_length)
        hint = (
            f"a {side}x{side} grid needs data.img_size={side * cfg.model.patch_size}"
            if side * side == sequence_length
            else "it must be a square number"
        )
        raise ConfigError(
            f"input.sequence_length={sequence_length} does not match the {grid}x{grid} token grid "
            f"({grid * grid} tokens = (data.img_size {cfg.data.img_size} / model.patch_size "
            f"{cfg.model.patch_size})^2): {hint}."
        )
