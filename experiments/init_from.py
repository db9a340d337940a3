"""`model.init_from=`: start a run from the weights of another run, a checkpoint file or a timm state dict.

    load_init_weights(model, "runs/rpb-vit-2026...")        # a run folder: checkpoints/best.pt, else checkpoints/last
    load_init_weights(model, "model.safetensors")           # .pt/.pth ({"model": state_dict, ...} or a state dict)
    load_init_weights(model, "vit_relpos_small.pth")        # timm's VisionTransformerRelPos (rpb.timm_convert)

Every key of the file is used, or the load is refused with one sentence (`ConfigError`) that names the keys: never
a silent partial load. Two differences are adapted and said in one line each: bias tables of another window or
grid are resized (`rpb.resize_rel_pos_bias_in_state_dict`; an MLP bias of timm is evaluated at the model's window),
and a classifier for another number of classes is left as initialised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from experiments.config_errors import ConfigError
from experiments.run_dir import RunDir

__all__ = ["LAST_WEIGHTS", "load_init_weights", "read_state_dict", "resolve_weights", "run_weights"]

LAST_WEIGHTS = "model.safetensors"  # the model's file in checkpoints/last (accelerator.save_state)
_HEAD = ("head.weight", "head.bias")
_WRAPPERS = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel prefixes


def run_weights(run_dir: str | Path) -> Path | None:
    """The weights of a run folder: checkpoints/best.pt, else checkpoints/last/model.safetensors, else None."""
    run = RunDir(run_dir)
    for path in (run.best_checkpoint, run.last_checkpoint / LAST_WEIGHTS):
        if path.is_file():
            return path.resolve()
    return None


def resolve_weights(source: str | Path, key: str = "model.init_from") -> Path:
    """The weights file `source` names (a run folder: `run_weights`), as an absolute path.

    Raises:
        ConfigError: `source` does not exist, or is a folder without weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        weights = run_weights(path)
        if weights is None:
            raise ConfigError(
                f"{key}={str(source)!r} is a folder without checkpoints/best.pt or checkpoints/last/{LAST_WEIGHTS}: "
                "give a run folder that finished an epoch, or a checkpoint file."
            )
        return weights
    if not path.is_file():
        raise ConfigError(
            f"{key}={str(source)!r} does not exist: give a run folder, a .pt/.pth/.safetensors checkpoint or a timm "
            "state dict."
        )
    return path.resolve()


def read_state_dict(path: str | Path, key: str = "model.init_from") -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors file, or in a torch file: the guide's {"model": state_dict, ...}, a
    {"state_dict": ...} wrapper or a plain state dict (loaded with weights_only=True: no code runs).

    Raises:
        ConfigError: the file is not readable as one of those.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a truncated file, not a checkpoint at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}={str(path)!r} is not a readable checkpoint ({reason[:200]}).") from None
    if isinstance(payload, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(payload.get(wrapper), Mapping):
                payload = payload[wrapper]
                break
    if (
        not isinstance(payload, Mapping)
        or not payload
        or not all(isinstance(v, torch.Tensor) for v in payload.values())
    ):
        raise ConfigError(
            f"{key}={str(path)!r} holds no state dict (a mapping of names to tensors, alone or under 'model'): give "
            "a checkpoint of a model."
        )
    return {_unwrapped(k): v for k, v in payload.items()}


def _unwrapped(name: str) -> str:
    for prefix in _WRAPPERS:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _listed(keys: list[str], most: int = 4) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _bias_window(model: nn.Module) -> tuple[int, int] | None:
    from rpb import RelativePositionBias

    for module in model.modules():
        if isinstance(module, RelativePositionBias) and module.bias_type == "2d":
            return module.window_size
    return getattr(model, "grid_size", None)


def _from_timm(state: dict[str, torch.Tensor], model: nn.Module, key: str, where: str) -> tuple[dict, list[str]]:
    from rpb.timm_convert import TIMM_NORM_EPS, TimmConversionError, convert_timm_relpos_state_dict

    try:
        state = convert_timm_relpos_state_dict(state, _bias_window(model))
    except TimmConversionError as err:
        raise ConfigError(f"{where}: {err}") from None
    notes = [f"{key}: a timm VisionTransformerRelPos state dict, converted (rpb.timm_convert)"]
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if eps and eps != {TIMM_NORM_EPS}:
        notes.append(
            f"{key}: timm trained with LayerNorm eps {TIMM_NORM_EPS}, this model uses {min(eps)}: set "
            f"model.norm_eps={TIMM_NORM_EPS} to reproduce its outputs"
        )
    return state, notes


def load_init_weights(model: nn.Module, source: str | Path, key: str = "model.init_from") -> tuple[Path, list[str]]:
    """Load the weights `source` names into `model` (see the module docstring); the model's other state is kept.

    Returns:
        (the weights file used, as an absolute path; one line per adaptation: conversion, resize, new classifier).

    Raises:
        ConfigError: one sentence naming the keys that do not fit; nothing is loaded then.
    """
    from rpb import resize_rel_pos_bias_in_state_dict
    from rpb.timm_convert import is_timm_relpos_state_dict

    path = resolve_weights(source, key)
    where = f"{key}={str(path)!r}"
    state = read_state_dict(path, key)
    notes: list[str] = []
    if is_timm_relpos_state_dict(state):
        state, notes = _from_timm(state, model, key, where)
    own = model.state_dict()
    new_head = "head.weight" in own and (
        "head.weight" not in state or state["head.weight"].shape[0] != own["head.weight"].shape[0]
    )
    if new_head:
        there = f"{state['head.weight'].shape[0]} classes there" if "head.weight" in state else "none there"
        notes.append(f"{key}: the classifier is re-initialised ({there}, {own['head.weight'].shape[0]} here)")
        state = {k: v for k, v in state.items() if k not in _HEAD}
    unused = sorted(set(state) - set(own))
    lacking = sorted(set(own) - set(state) - (set(_HEAD) if new_head else set()))
    if unused or lacking:
        parts = [f"{len(unused)} of its keys have no place in the model ({_listed(unused)})"] if unused else []
        if lacking:
            parts.append(f"it lacks {len(lacking)} of the model's ({_listed(lacking)})")
        raise ConfigError(
            f"{where} does not fit the configured model: {'; '.join(parts)}; nothing was loaded: set the model.* "
            "options it was trained with."
        )
    resized = [k for k, v in state.items() if k.endswith("relative_position_bias_table") and v.shape != own[k].shape]
    if resized:
        before = list(state[resized[0]].shape)
        try:
            state = resize_rel_pos_bias_in_state_dict(state, model)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        notes.append(
            f"{key}: {len(resized)} bias table(s) resized to this model's window ({before} -> "
            f"{list(own[resized[0]].shape)}, rows x heads)"
        )
    wrong = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(
            f"{where} does not fit the configured model: {len(wrong)} tensor(s) differ in shape ({_listed(wrong, 3)}); "
            "nothing was loaded: set the model.* options it was trained with."
        )
    model.load_state_dict(state, strict=not new_head)  # every other key checked above
    return path, notes
