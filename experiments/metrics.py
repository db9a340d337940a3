"""The epoch metrics `train` logs and returns, and which way each one improves (torch-free: sweeps import it).

METRICS                      the metrics a sweep or ablation may optimize; `train` returns best_<name> for each
metric_direction("val_loss") "minimize" ("maximize" for an accuracy; None for a name it cannot tell)
better(a, b, direction)      whether value `a` improves on `b`
"""

from __future__ import annotations

__all__ = ["DIRECTIONS", "METRICS", "better", "metric_direction"]

METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
DIRECTIONS = ("maximize", "minimize")  # Optuna's names


def metric_direction(name: str) -> str | None:
    """ "minimize" for a loss, "maximize" for an accuracy (a name ending in "accuracy" or "acc"), None otherwise."""
    if name.endswith("loss"):
        return "minimize"
    if name.endswith(("accuracy", "acc")):
        return "maximize"
    return None


def better(a: float, b: float | None, direction: str) -> bool:
    """True when `a` is strictly better than `b` in `direction` ("maximize" or "minimize"); anything beats None.

    A tie is not an improvement (the first epoch to reach a value stays the best), and a NaN never improves.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if b is None:
        return a == a  # not NaN
    return a > b if direction == "maximize" else a < b
