"""Helpers the trackers share: plain configs, secret masking, which x-axis a key is logged against."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# Final states that mark the run as failed in W&B (exit code 1); everything else (completed, pruned, early_stopped,
# diverged) is a run that ended by the loop's own decision and has a result.
FAILED_STATES = frozenset({"failed", "interrupted", "crashed"})
STEP_PREFIX = "train/"  # keys logged per optimizer step, against `global_step`; all others against `epoch`
EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time")
EPOCH_GLOBS = ("grad_norm/*", "bias/*", "bias_stats/*")

# The password runs to the last "@" of the URL: it may hold "/" (SQLAlchemy accepts that) and "@"; masking too
# much of an odd URL is the safe side.
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>\S*)@")
# Whole key names (or their last `_` part) only: `db_password` and `api_key` are masked, `num_tokens` is not.
_SECRET_KEY = re.compile(r"^(?:.*_)?(?:password|passwd|secret|token|api_?key)$", re.IGNORECASE)


def to_plain(obj: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or any mapping/sequence as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # omegaconf is an optional dependency of the tracker module
        pass
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def mask_secrets(obj: Any) -> Any:
    """Copy of `obj` with passwords hidden: `scheme://user:secret@host` -> `scheme://user:***@host` in every string,
    and the value of any key that names a secret (password, token, api_key, ...) -> "***".

    Works on nested dicts, lists, tuples and DictConfigs; returns plain Python objects.
    """
    obj = to_plain(obj)
    if isinstance(obj, str):
        return _URL_CREDENTIALS.sub(r"\g<head>:***@", obj)
    if isinstance(obj, Mapping):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v else mask_secrets(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [mask_secrets(v) for v in obj]
    return obj


def merge_config(base: dict, extra: Mapping) -> dict:
    """`base` updated with `extra`, merging nested dicts instead of replacing them."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge_config(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
        )
    return out


def split_by_family(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    step_metrics = {k: v for k, v in metrics.items() if k.startswith(STEP_PREFIX)}
    epoch_metrics = {k: v for k, v in metrics.items() if not k.startswith(STEP_PREFIX)}
    return step_metrics, epoch_metrics


def scalar(value: Any) -> float | None:
    """A float for numbers and 0-d tensors/arrays; None for anything else (strings, None)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def scalar_or_text(value: Any) -> bool | int | float | str | None:
    """A cell of a tracker's table (W&B table, TensorBoard hparams): numbers, strings, booleans and None as they
    are, anything else (a window's [7, 7]) as its JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(to_plain(value), default=str)
