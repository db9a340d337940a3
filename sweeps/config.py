"""The `sweep` config node: its schema (types only), checks, samplers, pruners.

`rpb-sweep` composes `conf/sweep.yaml`; other tools (`rpb-ablate`) may hand `run_study` any training config with a
`sweep` node: keys it leaves out take their values from `conf/sweep/default.yaml` (`sweep_defaults`), the one home
of the defaults; misspelt ones are refused.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from experiments.config import composed_defaults, fill_defaults
from experiments.config_errors import closest, known_keys_sentence
from experiments.metrics import DIRECTIONS, METRICS, metric_direction
from sweeps.devices import parse_devices
from sweeps.optuna_internals import WorkerStudy
from sweeps.pruners import RetryAwareHyperbandPruner, RetryAwareSuccessiveHalvingPruner
from sweeps.samplers import CellStudy, TrialSeededSampler
from sweeps.space import Dimension, SweepConfigError, grid_search_space, parse_space
from sweeps.storage import journal_path

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
DEFAULT_TRAIN_FN = "experiments.train:train"
LAUNCHERS = ("local", "slurm")
CLUSTERS = ("slurm", "local")  # submitit executors (`sweeps.cluster`); "local" runs the jobs as processes here


@dataclass
class SamplerConfig:
    name: str = MISSING
    seed: int | None = MISSING
    n_startup_trials: int = MISSING


@dataclass
class PrunerConfig:
    name: str = MISSING
    n_startup_trials: int = MISSING
    n_warmup_steps: int = MISSING
    min_resource: int = MISSING
    reduction_factor: int = MISSING


@dataclass
class LauncherConfig:
    """Where the workers run (conf/sweep/launcher/): `local` processes, or `slurm` jobs (sweeps.cluster)."""

    name: str = MISSING
    cluster: str = MISSING
    partition: str | None = MISSING
    array_size: int = MISSING
    array_parallelism: int | None = MISSING
    gpus_per_job: int = MISSING
    cpus_per_job: int = MISSING
    mem_gb: int | None = MISSING
    timeout_min: int = MISSING
    account: str | None = MISSING
    qos: str | None = MISSING
    constraint: str | None = MISSING
    setup: list[str] = MISSING
    additional: dict[str, Any] = MISSING
    wait: bool = MISSING
    resubmit: int = MISSING


@dataclass
class SweepConfig:
    study_name: str = MISSING
    kind: str = MISSING
    direction: str | None = MISSING  # None: the metric's own (`experiments.metrics.metric_direction`)
    metric: str = MISSING
    value: str = MISSING
    n_trials: int | None = MISSING
    timeout: float | None = MISSING
    workers: int = MISSING
    devices: list[Any] = MISSING
    storage: str | None = MISSING
    output_dir: str = MISSING
    enqueue_defaults: bool = MISSING
    enqueue: list[Any] = MISSING
    cells: list[Any] = MISSING
    allow_space_change: bool = MISSING
    max_failures: int = MISSING
    max_retry: int | None = MISSING
    heartbeat_interval: int | None = MISSING
    grace_period: int = MISSING
    train_fn: str = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    space: dict[str, Any] = MISSING
    fixed: dict[str, Any] = MISSING


def _choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SweepConfigError(
            f"{key}={value!r} is not known{closest(str(value), options)}; use one of {', '.join(options)}."
        )


def sweep_defaults() -> dict[str, Any]:
    """The `sweep` node's defaults: conf/sweep/default.yaml as composed (launcher local), with the keys local.yaml
    leaves out (the cluster's, unused by local workers) from conf/sweep/launcher/slurm.yaml, so that a launcher
    named alone (`sweep.launcher.name=slurm`) has them too."""
    sweep = composed_defaults("sweep/default")["sweep"]
    sweep["launcher"] = {**composed_defaults("sweep/default", ["sweep/launcher=slurm"])["sweep"]["launcher"],
                         **sweep["launcher"]}  # fmt: skip
    return sweep


def sweep_config(cfg: DictConfig) -> DictConfig:
    """`cfg.sweep` typed and checked (names, counts; the space is checked by `parse_space`); the keys it leaves out
    take their values from `sweep_defaults` (the space, a mapping, is given whole or taken whole)."""
    node = cfg.get("sweep") if isinstance(cfg, DictConfig) else None
    if node is None:
        raise SweepConfigError("the config has no `sweep` node; compose conf/sweep.yaml or add `sweep: {...}`.")
    try:
        plain = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
        sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig), fill_defaults(plain, SweepConfig, sweep_defaults))
        OmegaConf.resolve(sweep)
    except OmegaConfBaseException as e:
        key = f"sweep.{e.full_key}" if getattr(e, "full_key", None) else "sweep"
        if isinstance(e, ConfigKeyError | ConfigAttributeError):  # a misspelt key (added with + past the schema)
            parent = OmegaConf.select(OmegaConf.structured(SweepConfig), key.split(".", 1)[1].rpartition(".")[0])
            known = list(parent.keys()) if isinstance(parent, DictConfig) else []
            name = key.rpartition(".")[2]
            raise SweepConfigError(
                f"Unknown config key {key!r}{closest(name, known)}{known_keys_sentence(known)}."
            ) from None
        msg = str(e).splitlines()[0]
        raise SweepConfigError(f"{key}: {msg}; check the key's spelling and type in conf/sweep/default.yaml.") from None
    missing = sorted(OmegaConf.missing_keys(sweep))
    if missing:
        raise SweepConfigError(f"sweep.{missing[0]} has no value (???): set it, e.g. `sweep.{missing[0]}=...`.")
    _choice("sweep.sampler.name", sweep.sampler.name, SAMPLERS)
    _choice("sweep.pruner.name", sweep.pruner.name, PRUNERS)
    sweep.direction = study_direction(sweep.metric, sweep.direction, sweep.train_fn)
    _choice("sweep.value", sweep.value, ("best", "last"))
    for key in ("n_trials", "timeout"):
        v = sweep[key]
        if v is not None and v <= 0:
            raise SweepConfigError(f"sweep.{key}={v} must be positive (or null for no limit).")
    if sweep.workers < 1:
        raise SweepConfigError(f"sweep.workers={sweep.workers} must be at least 1.")
    parse_devices(sweep.devices)
    _choice("sweep.launcher.name", sweep.launcher.name, LAUNCHERS)
    _choice("sweep.launcher.cluster", sweep.launcher.cluster, CLUSTERS)
    check_launcher(sweep)
    if not sweep.study_name or "/" in sweep.study_name:
        raise SweepConfigError(f"sweep.study_name={sweep.study_name!r} must be a non-empty name without '/'.")
    return sweep


def check_launcher(sweep: DictConfig) -> None:
    """The slurm launcher's storage and counts, checked with the sweep (one sentence naming the key to change)."""
    launcher = sweep.launcher  # its name and cluster are checked with the other choices (`sweep_config`)
    if launcher.name != "slurm":
        return
    storage = str(sweep.storage or "")
    if journal_path(sweep.storage, sweep.output_dir, sweep.study_name) is not None or storage.startswith("sqlite"):
        raise SweepConfigError(
            f"sweep/launcher=slurm needs sweep.storage on a database server every node reaches (e.g. "
            f"postgresql://user@host/db), not {storage or 'the default journal file'!r}: workers on other hosts "
            "cannot share a journal file or SQLite database."
        )
    for key, minimum in (("array_size", 1), ("gpus_per_job", 0), ("cpus_per_job", 1), ("timeout_min", 1),
                         ("resubmit", 0)):  # fmt: skip
        if launcher[key] < minimum:
            raise SweepConfigError(f"sweep.launcher.{key}={launcher[key]} must be at least {minimum}.")


def study_direction(metric: str, direction: str | None, train_fn: str = DEFAULT_TRAIN_FN) -> str:
    """The direction a study on `metric` optimizes: the metric's own (losses minimized, accuracies maximized).

    A metric of `experiments.train:train` must be one of `experiments.metrics.METRICS`; a user `train_fn` may report
    any metric, and must state the direction of one whose name does not tell it.

    Raises:
        SweepConfigError: an unknown metric, a direction that contradicts the metric, or a user metric without one.
    """
    if direction is not None:
        _choice("sweep.direction", direction, DIRECTIONS)
    if train_fn == DEFAULT_TRAIN_FN:
        _choice("sweep.metric", metric, METRICS)
    own = metric_direction(metric)
    if own is None:
        if direction is None:
            raise SweepConfigError(
                f"sweep.metric={metric} is not a metric whose direction is known: set sweep.direction=maximize "
                "or sweep.direction=minimize."
            )
        return direction
    if direction is not None and direction != own:
        raise SweepConfigError(
            f"sweep.direction={direction} contradicts sweep.metric={metric}, which is {own}d: "
            f"drop sweep.direction (or set it to {own})."
        )
    return own


def train_base(cfg: DictConfig) -> DictConfig:
    """The training config every trial starts from: `cfg` without the sweep/ablation nodes."""
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    for key in ("sweep", "ablation", "hydra"):
        if key in base:
            base[key] = None
    OmegaConf.set_struct(base, True)
    return base


def load_train_fn(spec: str) -> Callable:
    """`module:function` -> the function (the injection point for fake trainers in tests)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name or "train")
    except (ImportError, AttributeError) as e:
        raise SweepConfigError(f"sweep.train_fn={spec!r} cannot be imported ({e}); use module:function.") from e


def sampler_factory(sweep: DictConfig) -> Callable[[int | None], optuna.samplers.BaseSampler]:
    """`factory(seed) -> sampler` of `sweep.sampler.name` (TPE, random, GP or CMA-ES), one per trial."""
    s = sweep.sampler
    if s.name == "tpe":
        return lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "cmaes":
        return lambda seed: optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False
        )
    if s.name == "gp":
        return lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return lambda seed: optuna.samplers.RandomSampler(seed=seed)


def build_sampler(sweep: DictConfig, dims: list[Dimension]) -> optuna.samplers.BaseSampler:
    """The study's sampler: per-trial seeded and repeat-free (`sweeps.samplers`). A grid's cells are enqueued
    trials, so its sampler is never asked for a value (a seeded random sampler stands in)."""
    seed = sweep.sampler.seed
    if is_cell_study(sweep):
        return optuna.samplers.RandomSampler(seed=seed)
    return TrialSeededSampler(sampler_factory(sweep), dims, seed)


def is_cell_study(sweep: DictConfig) -> bool:
    """A grid (or an explicit list of cells): every trial is an enqueued cell (`sweeps.samplers`)."""
    return sweep.sampler.name == "grid"


def study_class(sweep: DictConfig) -> type[WorkerStudy]:
    """`CellStudy` for cell studies (workers only pop enqueued cells), `WorkerStudy` otherwise (both record the
    worker on a trial as they take it)."""
    return CellStudy if is_cell_study(sweep) else WorkerStudy


def grid_cells(sweep: DictConfig, dims: list[Dimension]) -> list[dict[str, Any]]:
    """The cells of a grid study: `sweep.cells` when given (rpb-ablate's partial grids), else the full product of
    the space, in a fixed order.

    Raises:
        SweepConfigError: a cell that misses a dimension, has an unknown key, or a value outside its dimension.
    """
    if not sweep.cells:
        space = grid_search_space(dims)
        names = list(space)
        return [dict(zip(names, values)) for values in itertools.product(*space.values())]
    by_path = {d.path: d for d in dims}
    cells = []
    for i, cell in enumerate(OmegaConf.to_container(sweep.cells, resolve=True)):
        if not isinstance(cell, dict) or set(cell) != set(by_path):
            raise SweepConfigError(
                f"sweep.cells[{i}] must set exactly the space's keys {sorted(by_path)}, got {cell!r}."
            )
        for path, value in cell.items():
            if not by_path[path].contains(value):
                raise SweepConfigError(f"sweep.cells[{i}].{path}={value!r} is not one of the space's values.")
        cells.append(cell)
    return cells


def build_pruner(sweep: DictConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The study's pruner; successive halving and Hyperband judge a retried trial as the trial it continues
    (`sweeps.pruners`)."""
    p = sweep.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return RetryAwareSuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return RetryAwareHyperbandPruner(
            min_resource=p.min_resource,
            max_resource=max(int(epochs), p.min_resource),
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


class CheckedSweep(NamedTuple):
    """A sweep checked once per command (`check_sweep`) and passed along: to the workers, the summary, best.yaml.

    Unpacks as `sweep, base, dims = checked`.
    """

    sweep: DictConfig  # the `sweep` node, typed, the keys it left out from conf/sweep/default.yaml
    base: DictConfig  # the training config every trial starts from (no sweep/ablation nodes)
    dims: list[Dimension]  # the searched dimensions (sweep.space minus sweep.fixed)


def check_sweep(cfg: DictConfig | CheckedSweep) -> CheckedSweep:
    """Everything that can be checked before a trial starts, checked once (a `CheckedSweep` is returned as is).

    Raises:
        SweepConfigError: one sentence naming the key to change.
    """
    if isinstance(cfg, CheckedSweep):
        return cfg
    sweep = sweep_config(cfg)
    base = train_base(cfg)
    dims = parse_space(sweep, base)
    if not dims:
        raise SweepConfigError("sweep.space has no dimension left to search; add one or remove keys from sweep.fixed.")
    if is_cell_study(sweep):
        grid_cells(sweep, dims)
    elif sweep.cells:
        raise SweepConfigError("sweep.cells lists grid cells; set sweep.sampler.name=grid or remove sweep.cells.")
    return CheckedSweep(sweep, base, dims)
