"""A study's identity: what its trials' values mean. Recorded when the study is created, checked by every command.

Two trials are comparable only if they searched the same space with the same fixed values, were scored by the same
metric, direction and value rule, and trained the same base config. A command whose sweep differs from the study it
names would mix incomparable trials into one record (a dimension that earlier trials never searched, a longer
schedule, another metric), so it is refused with one sentence naming what changed, unless the user asks for it with
`sweep.allow_space_change=true`; the change is then recorded on the study (`identity_changes`, with the first trial
it applies to).

Keys of the base config that change where or how fast a trial runs, not what it computes (`NOT_IDENTITY`), are left
out: workers on different machines may set them differently.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from experiments.config import compose_config, resolve_mixed_precision
from sweeps.config import CheckedSweep, grid_cells, is_cell_study
from sweeps.record import StudyAttr
from sweeps.space import SweepConfigError, fixed_values
from sweeps.storage import describe_storage

IDENTITY_ATTR = StudyAttr.IDENTITY
CHANGES_ATTR = StudyAttr.IDENTITY_CHANGES
# Base-config keys (and prefixes) that do not change what a trial computes.
NOT_IDENTITY = (
    "name",
    "output_dir",
    "run_dir",
    "resume",
    "tracker",
    "sweep",
    "ablation",
    "hydra",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "model.attn_impl",
    "model.grad_checkpointing",
    "trainer.compile",
    "trainer.cpu",
    "trainer.log_every_n_steps",
    "trainer.heatmap_every_n_epochs",
    "trainer.progress_bar",
    "trainer.save_checkpoints",
)
_MAX_NAMED = 4


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _excluded(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in NOT_IDENTITY)


def _json(value: Any) -> Any:
    """As the storage gives it back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, default=str))


def _base_values(base: DictConfig) -> dict[str, Any]:
    """{path: value} of a training config, as an identity records them (JSON-ready)."""
    flat = _flat(OmegaConf.to_container(base, resolve=True))
    # null means the launcher's precision: record the one the trials train in, as their config.yaml does
    flat["trainer.mixed_precision"] = resolve_mixed_precision(OmegaConf.select(base, "trainer.mixed_precision"))[0]
    return _json(flat)


@functools.cache
def default_base_values() -> dict[str, Any]:
    """{path: value} of the default training config (conf/train.yaml composed): what a run used for a key before
    the key existed."""
    return _base_values(compose_config(config_name="train"))


def study_identity(checked: CheckedSweep) -> dict[str, Any]:
    """The identity of the study `checked` describes (JSON-ready).

    Keys: metric, direction, value, space ({param: dimension}), fixed ({path: value}), cells (grid cells, or None),
    base ({path: value} of the base training config, `NOT_IDENTITY` and the keys every trial sets left out).
    """
    sweep, base, dims = checked
    base_flat = _base_values(base)
    set_per_trial = {d.path for d in dims} | set(fixed_values(sweep))
    space = {
        d.path: {k: v for k, v in (("type", d.type), ("low", d.low), ("high", d.high), ("log", d.log),
                                   ("step", d.step), ("choices", list(d.choices))) if v not in (None, [], False)}
        for d in dims
    }  # fmt: skip
    return _json(
        {
            "metric": sweep.metric,
            "direction": sweep.direction,
            "value": sweep.value,
            "space": space,
            "fixed": fixed_values(sweep),
            "cells": grid_cells(sweep, dims) if is_cell_study(sweep) else None,
            # every trial overwrites its dimensions and fixed values: their base values mean nothing
            "base": {k: v for k, v in sorted(base_flat.items()) if not _excluded(k) and k not in set_per_trial},
        }
    )


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def identity_changes(old: dict[str, Any], new: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> list[str]:
    """What differs between two identities, as config keys ("trainer.epochs 5 -> 10", "sweep.space.optim.lr").

    Args:
        defaults: {path: value} of the default training config. A base key `old` lacks (the study was created
            before the key existed) whose new value is its default is no change: the old trials ran with it.
            None: every added key is a change.
    """
    defaults = defaults or {}
    changes = []
    for key in ("metric", "direction", "value"):
        if old.get(key) != new.get(key):
            changes.append(f"sweep.{key} {old.get(key)} -> {new.get(key)}")
    for key, prefix in (("space", "sweep.space."), ("fixed", "sweep.fixed."), ("base", "")):
        before, after = old.get(key) or {}, new.get(key) or {}
        for path in sorted(set(before) | set(after)):
            if path not in after:
                changes.append(f"{prefix}{path} removed")
            elif path not in before:
                if key == "base" and path in defaults and defaults[path] == after[path]:
                    continue  # a key added to the config since, at its default: what the old trials ran with
                changes.append(f"{prefix}{path} added")
            elif before[path] != after[path]:
                what = "changed" if key == "space" else f"{_short(before[path])} -> {_short(after[path])}"
                changes.append(f"{prefix}{path} {what}")
    if (old.get("cells") is None) != (new.get("cells") is None):
        changes.append("sweep.sampler.name grid <-> searched")
    elif old.get("cells") != new.get("cells"):
        changes.append("sweep.cells changed")
    return changes


def check_identity(study: optuna.Study, checked: CheckedSweep) -> None:
    """Record the identity on a new study; on an existing one refuse a change unless sweep.allow_space_change.

    Raises:
        SweepConfigError: one sentence naming what changed (or the direction, which an Optuna study cannot change).
    """
    sweep = checked.sweep
    if study.direction.name.lower() != sweep.direction:
        raise SweepConfigError(
            f"sweep.direction={sweep.direction} but study {sweep.study_name!r} in {describe_storage(sweep)} was "
            f"created to {study.direction.name.lower()}; use that direction or another sweep.study_name."
        )
    new = study_identity(checked)
    old = study.user_attrs.get(IDENTITY_ATTR)
    if old is None:  # a new study (or one created before identities were recorded)
        study.set_user_attr(IDENTITY_ATTR, new)
        return
    added = set(new.get("base") or {}) - set(old.get("base") or {})
    changes = identity_changes(old, new, default_base_values() if added else None)
    if not changes:
        return
    named = ", ".join(changes[:_MAX_NAMED]) + (
        f" and {len(changes) - _MAX_NAMED} more" if len(changes) > _MAX_NAMED else ""
    )
    if not sweep.allow_space_change:
        raise SweepConfigError(
            f"study {sweep.study_name!r} in {describe_storage(sweep)} was run with another config ({named}); run it "
            "as it was, choose another sweep.study_name, or set sweep.allow_space_change=true to add these trials "
            "to it anyway."
        )
    log = [*study.user_attrs.get(CHANGES_ATTR, []), {"from_trial": len(study.trials), "changes": changes}]
    study.set_user_attr(CHANGES_ATTR, log)
    study.set_user_attr(IDENTITY_ATTR, new)
