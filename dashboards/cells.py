"""A trial's cell: what makes two trials one result (`dashboards.load.results` keeps one result per cell).

A sweep's cell is a trial's params; an ablation's is its setting and seed, read from its run's config, so one
(setting, seed) is one result whatever the sampler recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import optuna

from dashboards.runs import RunData
from sweeps.ablation.settings import Setting
from sweeps.ablation.settings import setting_of as setting_of_rpb
from sweeps.record import StudyAttr, TrialAttr, retry_history

Cell = Callable[[optuna.trial.FrozenTrial, "RunData | None"], Hashable]


def retried_from(trial: optuna.trial.FrozenTrial) -> set[int]:
    """Numbers of the earlier attempts `trial` retries (its retry history, and the trial it is the retry of)."""
    earlier = {int(n) for n in retry_history(trial)}
    if trial.user_attrs.get(TrialAttr.RETRY_OF) is not None:
        earlier.add(int(trial.user_attrs[TrialAttr.RETRY_OF]))
    return earlier


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def config_value(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``"a.b"`` in a resolved (plain, nested) config; `default` where a key is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def setting_of(run: RunData) -> Setting:
    """The ablation factors of a run, read from its resolved config (``model.rpb.*``, ``model.pos_embed``)."""
    return setting_of_rpb(config_value(run.config, "model.rpb", {}) or {}, config_value(run.config, "model.pos_embed"))


def params_cell(trial: optuna.trial.FrozenTrial, run: RunData | None = None) -> Hashable:
    """A trial's cell: its params; a trial without params is a cell of its own (with the attempts it retries)."""
    if trial.params:
        return ("params", _hashable(trial.params))
    return ("trial", min({trial.number, *retried_from(trial)}))


def ablation_cell(trial: optuna.trial.FrozenTrial, run: RunData | None) -> Hashable:
    """The cell of an ablation trial: its setting and seed, read from its run's config (its params when the run
    could not be read), so one (setting, seed) is one result."""
    if run is None or not run.config or "seed" not in run.config:
        return params_cell(trial, run)
    return ("ablation", setting_of(run), int(run.config["seed"]))


def default_cell(study: optuna.Study) -> Cell:
    """`params_cell`, or for an ablation study (kind "ablation") `ablation_cell`."""
    return ablation_cell if study.user_attrs.get(StudyAttr.KIND) == "ablation" else params_cell
