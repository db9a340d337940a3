"""Check, before any trial starts, that every value the space can give makes a valid training config.

Each dimension is tried at its ends (low, high) or at each of its choices with the other keys at their base
values: the training config's own validation runs, and where the model changes shape (window sizes and other
categorical choices) the model is built (one block), so a window the token grid cannot take is refused
in one sentence that names the dimension and the value.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sweeps.space import Dimension, SweepConfigError, apply_params, fixed_values


def _candidates(dim: Dimension) -> list:
    return list(dim.choices) if dim.type == "categorical" else [dim.low, dim.high]


def _build_small(cfg: DictConfig, keep_depth: bool = False) -> None:
    """Build the model with one block (what a window size can break does not depend on depth): fast for ViT-B too."""
    from experiments.config import build_model

    if not keep_depth:
        cfg = cfg.copy()
        cfg.model.depth = 1
    build_model(cfg)


def check_trial_values(base: DictConfig, sweep: DictConfig, dims: list[Dimension]) -> None:
    """Raise SweepConfigError for the first value of the space (or of sweep.fixed) the training config refuses."""
    from experiments.config import validate_config

    fixed = fixed_values(sweep)
    try:
        cfg = validate_config(apply_params(base, {}, fixed))
        _build_small(cfg)
    except (ValueError, TypeError) as e:
        raise SweepConfigError(f"sweep.fixed / the base config cannot be trained: {e}") from None
    for dim in dims:
        for value in _candidates(dim):
            if dim.type == "int":
                value = int(value)
            try:
                cfg = validate_config(apply_params(base, {dim.path: value}, fixed))
                if dim.type == "categorical":
                    _build_small(cfg, keep_depth=dim.path == "model.depth")
            except (ValueError, TypeError) as e:
                what = "choice" if dim.type == "categorical" else "bound"
                msg = str(e).rstrip(".")
                raise SweepConfigError(
                    f"sweep.space.{dim.path}: the {what} {value!r} cannot be used ({msg})."
                ) from None
