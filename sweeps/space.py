"""The search space: config entries in, Optuna suggestions out, trial params back into a training config.

A space is a nested mapping under `sweep.space` whose leaves are dimension specs (mappings with a `type`); the
path of a leaf is the training-config key it sets, and also the Optuna param name:

    sweep.space.optim.lr={type: float, low: 1e-4, high: 1e-2, log: true}     -> param "optim.lr"
    sweep.space.model.rpb.window_size={type: categorical, choices: [3, "5x7"]}  -> param "model.rpb.window_size"

`sweep.fixed` is a nested mapping of config values applied to every trial; a fixed key removes the dimension of
the same path from the space. Window sizes are categoricals of ints (square windows) or "HxW" strings.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import AnyNode, DictConfig, ListConfig, OmegaConf, ValueNode

from experiments.config_errors import SweepConfigError
from rpb.options import OptionError, to_2tuple

DIMENSION_TYPES = ("float", "int", "categorical")
_ALLOWED_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_MISSING = object()


@dataclass(frozen=True)
class Dimension:
    """One searched config key (`path`) and its Optuna distribution arguments."""

    path: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = field(default_factory=tuple)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.path, list(self.choices))

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution `suggest` draws from (what samplers are asked to sample)."""
        if self.type == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def values(self) -> list[Any]:
        """Every value of a finite dimension (categorical, int, stepped float); raises ValueError otherwise."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.type == "float" and self.step is not None:
            n = round((self.high - self.low) / self.step) + 1
            return [self.low + i * self.step for i in range(n) if self.low + i * self.step <= self.high + 1e-12]
        raise ValueError(f"{_key(self.path)} is a continuous {self.type} range: it has no list of values.")

    def size(self) -> int | None:
        """How many values a finite dimension has; None for a continuous one."""
        try:
            return len(self.values())
        except ValueError:
            return None

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high


def _key(path: str) -> str:
    return f"sweep.space.{path}"


def _is_spec(node: Any) -> bool:
    return isinstance(node, (Mapping, DictConfig)) and "type" in node


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested mapping keyed by dotted path; a mapping with a `type` key is a leaf (a dimension)."""
    out: dict[str, Any] = {}
    for name, child in node.items():
        path = f"{prefix}{name}"
        if _is_spec(child) or not isinstance(child, (Mapping, DictConfig)):
            out[path] = child
        else:
            out.update(_flatten(child, f"{path}."))
    return out


def parse_window(value: Any, key: str = "window_size") -> list[int]:
    """An int (square window), an "HxW" string or a pair -> [H, W] (`rpb.options.to_2tuple`, the one spelling of a
    window in training, sweeps and ablations)."""
    try:
        return list(to_2tuple(list(value) if isinstance(value, ListConfig) else value))
    except OptionError:
        raise SweepConfigError(
            f"{key}: {value!r} is not a window size; use an int such as 7 or a string such as '7x7'."
        ) from None


def window_label(value: Any) -> str:
    """A window size as "HxW" (for tags and tables)."""
    h, w = parse_window(value)
    return f"{h}x{w}"


def _dimension(path: str, spec: Any) -> Dimension:
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    kind = spec.get("type")
    if kind not in DIMENSION_TYPES:
        raise SweepConfigError(f"{_key(path)}.type is {kind!r}; use one of {', '.join(DIMENSION_TYPES)}.")
    unknown = set(spec) - _ALLOWED_KEYS[kind]
    if unknown:
        raise SweepConfigError(
            f"{_key(path)} has unknown field(s) {sorted(unknown)}; a {kind} dimension takes {sorted(_ALLOWED_KEYS[kind])}."
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SweepConfigError(f"{_key(path)}.choices is empty; give a non-empty list of values.")
        if len(set(map(repr, choices))) != len(choices):
            raise SweepConfigError(f"{_key(path)}.choices {choices} repeats a value; list each value once.")
        return Dimension(path, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
    for name, v in (("low", low), ("high", high)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise SweepConfigError(f"{_key(path)}.{name} is {v!r}; give a finite number.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SweepConfigError(f"{_key(path)}: an int dimension needs integer low and high, got {low} and {high}.")
    if low >= high:
        what = "empty" if low == high else "inverted"
        raise SweepConfigError(
            f"{_key(path)} has an {what} range (low={low}, high={high}); set low < high, or fix the value with "
            f"sweep.fixed.{path}=<value>."
        )
    if log and low <= 0:
        raise SweepConfigError(f"{_key(path)} is log-scaled but low={low}; use a positive low or log: false.")
    if step is not None and (log or step <= 0):
        raise SweepConfigError(f"{_key(path)}.step={step} needs log: false and a positive step.")
    return Dimension(path, kind, low=low, high=high, log=log, step=step)


def parse_space(sweep_cfg: DictConfig | Mapping, train_cfg: DictConfig) -> list[Dimension]:
    """Dimensions of `sweep.space` minus the keys of `sweep.fixed`, checked against the training config.

    Raises:
        SweepConfigError: a malformed entry, an empty/inverted range, or a path the training config lacks.
    """
    space = _flatten(sweep_cfg.get("space") or {})
    fixed = fixed_values(sweep_cfg)
    dims = []
    for path, spec in space.items():
        if path in fixed:
            continue
        if not _is_spec(spec):
            raise SweepConfigError(
                f"{_key(path)} is {spec!r}, not a dimension; write {{type: float|int|categorical, ...}} or move "
                f"the value to sweep.fixed.{path}."
            )
        if OmegaConf.select(train_cfg, path, default=_MISSING) is _MISSING:
            raise SweepConfigError(f"{_key(path)}: the training config has no key {path!r}; check its spelling.")
        dims.append(_dimension(path, spec))
    for path in fixed:
        if OmegaConf.select(train_cfg, path, default=_MISSING) is _MISSING:
            raise SweepConfigError(f"sweep.fixed.{path}: the training config has no key {path!r}; check its spelling.")
    return dims


def fixed_values(sweep_cfg: DictConfig | Mapping) -> dict[str, Any]:
    """`sweep.fixed` flattened to {config path: value}."""
    fixed = sweep_cfg.get("fixed") or {}
    if isinstance(fixed, DictConfig):
        fixed = OmegaConf.to_container(fixed, resolve=True)
    return _flatten(fixed)


def to_config_value(path: str, value: Any) -> Any:
    """A param as the training config wants it: window sizes (keys ending in `window_size`; "HxW" or int) become
    [H, W]; every other value (a pair such as optim.betas too) is set as it is."""
    if path.endswith("window_size"):
        return parse_window(value, path)
    return value


def to_param_value(dim: Dimension, config_value: Any) -> Any:
    """The inverse of `to_config_value` for one dimension: the config's value as one of its params (or _MISSING)."""
    if dim.type != "categorical":
        return config_value if dim.contains(config_value) else _MISSING
    for choice in dim.choices:
        try:
            same = to_config_value(dim.path, choice) == to_config_value(dim.path, config_value)
        except SweepConfigError:
            same = choice == config_value
        if same:
            return choice
    return _MISSING


class ConfigTemplate:
    """A training config copied once per trial: pickled once, each copy unpickled.

    A typed `DictConfig.copy()` of the default config takes ~4 ms (a deep copy of every node); unpickling the same
    config ~0.7 ms, its types, flags and struct mode included (`sweeps.bench_overhead` measures a study's cost).
    `apply_params` takes it in place of the config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self._cfg = cfg.copy()  # a config holding an object pickle cannot write is copied as before
        try:
            self._blob: bytes | None = pickle.dumps(self._cfg, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            self._blob = None

    def copy(self) -> DictConfig:
        return self._cfg.copy() if self._blob is None else pickle.loads(self._blob)


def unshared(cfg: DictConfig, held: int) -> list[Any] | None:
    """The nodes of `cfg` (root first) when nothing holds the config or any node of it but `held` references to
    the root (CPython reference counts: a child's are its parent's `_content` and its own children's `_parent`);
    None when something else does (a train_fn that kept the config or a node of it, a traceback)."""
    nodes: list[Any] = []
    kids: list[int] = []  # each node's children: each holds a reference to it (its `_parent`)
    stack: list[Any] = [cfg]
    while stack:
        node = stack.pop()
        content = node.__dict__.get("_content")
        children = list(content.values()) if isinstance(content, dict) else content if isinstance(content, list) else []
        nodes.append(node)
        kids.append(len(children))
        stack.extend(children)
    del node, children, content
    # A node's references, when nothing else holds it: its holder (its parent's `_content`; the root: the `held`
    # ones and this function's argument), its children's `_parent`, `nodes`, getrefcount's argument.
    for i in range(len(nodes)):
        if sys.getrefcount(nodes[i]) != (held + 1 if i == 0 else 1) + kids[i] + 2:
            return None
    return nodes


def release_config(cfg: DictConfig, held_by_caller: int = 1) -> bool:
    """Free a config now rather than at the garbage collector's next pass: OmegaConf nodes point to their parents,
    so a config is ~600 objects in reference cycles, which only the collector frees (a trial's config was all of a
    worker's cyclic garbage: ~0.5 ms of collections a trial, `sweeps.bench_overhead`). The parent links are cut
    only when nothing but the caller's `held_by_caller` references holds the config or any node of it
    (`unshared`); a config kept elsewhere (a train_fn that stores it, a traceback, `TrialConfigs` reusing it) is
    left whole. Returns whether it was released."""
    nodes = unshared(cfg, held_by_caller + 1)  # + this function's argument
    if nodes is None:
        return False
    for node in nodes[1:]:
        node.__dict__["_parent"] = None
    return True


def apply_params(
    train_cfg: DictConfig | ConfigTemplate, params: Mapping[str, Any], fixed: Mapping[str, Any] = (), copy: bool = True
) -> DictConfig:
    """A copy of `train_cfg` (a config or its `ConfigTemplate`) with `fixed` then `params` set at their paths
    (`copy=False`: set on `train_cfg` itself, a config)."""
    cfg = train_cfg.copy() if copy else train_cfg
    for path, value in {**dict(fixed), **dict(params)}.items():
        set_value(cfg, path, to_config_value(path, value))
    return cfg


_LEAF_TYPES = (bool, int, float, str, type(None))


def set_value(cfg: DictConfig, path: str, value: Any) -> None:
    """`OmegaConf.update(cfg, path, value, merge=False)`, ~20x faster where an existing leaf is set (`set_item`).

    Raises what OmegaConf raises (a value of the wrong type, a read-only config, a key the config does not have)."""
    *head, last = path.split(".")
    parent: Any = cfg
    for key in head:
        parent = _child(parent, key)
    if not _set_leaf(parent, last, value):
        OmegaConf.update(cfg, path, value, merge=False, force_add=False)


def set_item(container: DictConfig | ListConfig, key: str | int, value: Any) -> None:
    """`container[key] = value`, ~20x faster where an existing leaf is set (`_set_leaf`)."""
    if not _set_leaf(container, key, value):
        container[key] = value


def _set_leaf(container: Any, key: str | int, value: Any) -> bool:
    """Set `container[key] = value` where it is a leaf value (or a list of them, set element by element onto a list
    of the same length) set on an existing value node; returns False, having set nothing, otherwise (a new key, a
    mapping, a node OmegaConf would replace): the caller sets it through OmegaConf.

    The value goes straight to the node's `_set_value`, which is what OmegaConf's `__setitem__` calls on such a
    node once it has found it (`BaseContainer._set_item_impl`): the node's type check and conversion, interpolation
    strings and the read-only flag apply as they do through OmegaConf, without the ~40 us of its lookups and
    checks per set (a trial's config is ~25 sets)."""
    node = _child(container, key)
    if isinstance(value, _LEAF_TYPES) and _settable(node):
        node._set_value(value)
        return True
    if (
        isinstance(value, list | tuple)
        and isinstance(node, ListConfig)
        and isinstance(items := node.__dict__["_content"], list)  # not None, missing or an interpolation
        and len(items) == len(value)
        and all(isinstance(v, _LEAF_TYPES) and _settable(item) for item, v in zip(items, value))
    ):
        for item, v in zip(items, value):
            item._set_value(v)
        return True
    return False


def config_node(cfg: DictConfig, path: str) -> Any:
    """The node at dotted `path` in `cfg` (a `DictConfig`/`ListConfig` for a mapping or list, else a value node),
    None where there is none or it is None; read without OmegaConf's per-access checks (~10x faster than
    attribute access, which also resolves a leaf to its value)."""
    node: Any = cfg
    for key in path.split("."):
        node = _child(node, key)
    return None if node is None or node._is_none() else node


def _child(container: Any, key: str | int) -> Any:
    """The node at `container[key]` (None where there is none), read without OmegaConf's access checks."""
    content = container.__dict__.get("_content") if isinstance(container, DictConfig | ListConfig) else None
    if isinstance(content, dict):
        return content.get(key)
    if isinstance(content, list) and isinstance(key, int) and -len(content) <= key < len(content):
        return content[key]
    return None


def _settable(node: Any) -> bool:
    """Whether OmegaConf sets a leaf on `node` by `node._set_value` (typed nodes, untyped `AnyNode`s)."""
    return isinstance(node, ValueNode) and (node._has_ref_type() or isinstance(node, AnyNode))


def config_params(dims: list[Dimension], train_cfg: DictConfig) -> dict[str, Any]:
    """The training config's own values as trial params (the defaults trial); dims whose value is outside are left out."""
    params = {}
    for dim in dims:
        value = to_param_value(dim, OmegaConf.select(train_cfg, dim.path))
        if value is not _MISSING:
            params[dim.path] = value
    return params


def grid_search_space(dims: list[Dimension]) -> dict[str, list[Any]]:
    """The GridSampler search space; every dimension must be categorical (or an int range with a step)."""
    grid = {}
    for dim in dims:
        if dim.type == "categorical":
            grid[dim.path] = list(dim.choices)
        elif dim.type == "int" and not dim.log:
            grid[dim.path] = list(range(int(dim.low), int(dim.high) + 1, int(dim.step or 1)))
        else:
            raise SweepConfigError(
                f"{_key(dim.path)} is a {dim.type} range, which a grid cannot enumerate; make it "
                f"{{type: categorical, choices: [...]}} or use another sweep.sampler.name."
            )
    return grid
