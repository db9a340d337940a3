"""Check, before any trial starts, that every value the space can give makes a valid training config.

Each dimension is tried at its ends (low, high) or at each of its choices with the other keys at their base
values: the training config's own validation runs, and where the model changes shape (window sizes and other
categorical choices) the model is built (one block), so a window the token grid cannot take is refused
in one sentence that names the dimension and the value.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sweeps.space import Dimension, SweepConfigError, apply_params, fixed_values


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
    # Numeric bounds: all lows together, all highs together (validation is the slow part); one by one on failure.
    numeric = [d for d in dims if d.type != "categorical"]
    for end in ("low", "high"):
        together = {d.path: _value(d, getattr(d, end)) for d in numeric}
        try:
            validate_config(apply_params(base, together, fixed))
        except (ValueError, TypeError):
            for dim in numeric:
                _check_one(base, fixed, dim, _value(dim, getattr(dim, end)))
    for dim in dims:
        if dim.type == "categorical":
            for value in dim.choices:
                _check_one(base, fixed, dim, value)


def _value(dim: Dimension, value):
    return int(value) if dim.type == "int" else value


def _check_one(base: DictConfig, fixed: dict, dim: Dimension, value) -> None:
    from experiments.config import validate_config

    try:
        cfg = validate_config(apply_params(base, {dim.path: value}, fixed))
        if dim.type == "categorical" or dim.path == "model.depth":
            _build_small(cfg, keep_depth=dim.path == "model.depth")
    except (ValueError, TypeError) as e:
        what = "choice" if dim.type == "categorical" else "bound"
        msg = str(e).rstrip(".")
        raise SweepConfigError(f"sweep.space.{dim.path}: the {what} {value!r} cannot be used ({msg}).") from None
