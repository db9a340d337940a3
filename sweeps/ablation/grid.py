"""The ablation's grid as a sweep: pos_embeds x window_sizes x bias_types x modes x seeds
(conf/ablation/window_size.yaml) becomes an Optuna study of kind "ablation".

Every (setting, seed) is one cell of a cell study (`sweeps.samplers`), the full product of the factors or the cells
that make sense (bias type "none" trains once per seed; mode "local" needs a 2d bias). So it resumes, runs with many
workers (`ablation.workers=N`) and lands in W&B like any study: one group per ablation, the factors in every run's
config (flat keys window_size, bias_type, mode, pos_embed, setting, seed, ablation) and tags. Pruning is off unless
`ablation.prune=true`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from sweeps.ablation.settings import (
    BIAS,
    BIAS_TYPES,
    DEFAULT_BASELINE,
    ENABLED,
    MODE,
    MODES,
    POS,
    POS_EMBEDS,
    SEED,
    WINDOW,
    find_setting,
    setting_label,
    trial_setting,
)
from sweeps.objective import params_text as sweep_params_text
from sweeps.space import SweepConfigError, fixed_values, parse_window, window_label
from sweeps.study import run_study

TRAIN_FN = "sweeps.ablation.grid:train_trial"
ABLATION_KEYS = ("study_name", "window_sizes", "bias_types", "modes", "pos_embeds", "seeds", "workers", "prune",
                 "baseline")  # fmt: skip


def _values(ab: DictConfig, key: str, allowed: Sequence[str] | None = None) -> list[Any]:
    """A factor of the grid: a non-empty list without repeats (of `allowed` values when given)."""
    node = ab.get(key)
    values = list(OmegaConf.to_container(node)) if isinstance(node, ListConfig) else node
    if not isinstance(values, (list, tuple)) or not values:
        raise SweepConfigError(f"ablation.{key} must be a non-empty list, e.g. ablation.{key}=[...].")
    if len(set(map(str, values))) != len(values):
        raise SweepConfigError(f"ablation.{key}={list(values)} repeats a value; list each value once.")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise SweepConfigError(f"ablation.{key} has {bad}; choose from {list(allowed)}.")
    return list(values)


def ablation_grid(ab: DictConfig) -> tuple[list[dict[str, Any]], dict[str, list[Any]], bool]:
    """The trials of the ablation as param dicts, the categorical dimension of each param, and whether the
    trials are the full product of those dimensions (then a GridSampler can enumerate them).

    Raises:
        SweepConfigError: an empty or malformed factor, or a grid with no trainable cell.
    """
    windows = [window_label(parse_window(w, "ablation.window_sizes")) for w in _values(ab, "window_sizes")]
    bias_types = _values(ab, "bias_types", BIAS_TYPES)
    modes = _values(ab, "modes", MODES)
    pos_embeds = _values(ab, "pos_embeds", POS_EMBEDS) if ab.get("pos_embeds") is not None else ["none"]
    seeds = _values(ab, "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepConfigError(f"ablation.seeds={seeds} must be integers, e.g. ablation.seeds=[0,1,2].")
    trials: list[dict[str, Any]] = []
    for pos, bias in itertools.product(pos_embeds, bias_types):
        if bias == "none":  # no bias table: window and mode change nothing, so one run per seed
            trials += [{WINDOW: windows[0], BIAS: "2d", MODE: "clip", ENABLED: False, POS: pos, SEED: s} for s in seeds]
            continue
        for window, mode, seed in itertools.product(windows, modes, seeds):
            if mode == "local" and bias != "2d":
                continue  # local windows exist for 2d biases only
            trials.append({WINDOW: window, BIAS: bias, MODE: mode, ENABLED: True, POS: pos, SEED: seed})
    if not trials:
        raise SweepConfigError("ablation.modes=[local] needs a 2d bias; add 2d to ablation.bias_types.")
    dims = {path: list(dict.fromkeys(t[path] for t in trials)) for path in (WINDOW, BIAS, MODE, ENABLED, POS, SEED)}
    for path, single in ((ENABLED, [True]), (POS, ["none"])):  # a factor that never varies from the default
        if dims[path] == single:
            dims.pop(path)
            for t in trials:
                t.pop(path)
    full = len(trials) == len(list(itertools.product(*dims.values())))
    return trials, dims, full


def check_baseline(name: str | None, cells: Sequence[Mapping[str, Any]]) -> None:
    """Check that ``ablation.baseline`` names a setting of the grid `cells` (param dicts). The default baseline
    may be absent (then the verdict says so at the end); a baseline the user named must be there.

    Raises:
        SweepConfigError: a named baseline that is not in the grid, with the settings it could name.
    """
    settings = list(dict.fromkeys(trial_setting(c) for c in cells))
    if name is None or (name == DEFAULT_BASELINE and all(s.key != name for s in settings)):
        return
    try:
        find_setting(name, settings)
    except KeyError as err:
        raise SweepConfigError(f"ablation.baseline={name!r}: {err.args[0]}.") from None


def ablation_config(cfg: DictConfig) -> DictConfig:
    """`cfg` with its `sweep` node rewritten from its `ablation` node (the study run_study will run)."""
    ab = cfg.get("ablation")
    if ab is None:
        raise SweepConfigError("the config has no `ablation` node; compose conf/ablate.yaml (rpb-ablate does).")
    unknown = sorted(set(ab) - set(ABLATION_KEYS))
    if unknown:
        raise SweepConfigError(f"ablation.{unknown[0]} is not an ablation key; use one of {', '.join(ABLATION_KEYS)}.")
    trials, dims, full = ablation_grid(ab)
    check_baseline(ab.get("baseline"), trials)  # a misnamed baseline is said now, not after the runs
    cfg = cfg.copy()
    with open_dict(cfg):
        sweep = cfg.sweep if cfg.get("sweep") is not None else OmegaConf.create({})
        clash = [p for p in dims if p in fixed_values(sweep)]
        if clash:
            raise SweepConfigError(
                f"sweep.fixed sets the ablation factor {clash[0]}; set it through ablation.* instead."
            )
        sweep.study_name = ab.study_name
        sweep.kind = "ablation"
        sweep.workers = int(ab.get("workers", 1))
        sweep.space = {p: {"type": "categorical", "choices": v} for p, v in dims.items()}
        # A cell study: every (setting, seed) is one enqueued cell, run once by whichever worker pops it.
        sweep.sampler = {"name": "grid", "seed": 0}
        if not ab.get("prune", False):
            sweep.pruner = {"name": "none"}
        sweep.enqueue_defaults = False
        sweep.enqueue = []
        sweep.cells = [] if full else trials
        sweep.n_trials = None
        sweep.train_fn = TRAIN_FN
        cfg.sweep = sweep
    return cfg


def run_factors(cfg: DictConfig) -> dict[str, Any]:
    """The ablation factors of one trial's training config, as flat W&B config keys (no bias: window "none"), and
    `setting`, its plain label (`setting_label`)."""
    rpb = cfg.model.rpb
    window = window_label(list(rpb.window_size))
    return {
        "window_size": window if rpb.enabled else "none",
        "bias_type": rpb.bias_type if rpb.enabled else "none",
        "mode": rpb.mode,
        "pos_embed": cfg.model.pos_embed,
        "setting": setting_label(cfg.model.pos_embed, rpb.enabled, rpb.bias_type, window, rpb.mode),
        "seed": int(cfg.seed),
        "ablation": OmegaConf.select(cfg, "tracker.wandb.group") or OmegaConf.select(cfg, "tracker.extra_config.study_name"),
    }


def params_text(params: Mapping[str, Any]) -> str:
    """An ablation trial's params for its line: its setting and seed ("setting none, seed 0"), since a run without
    a bias still carries the window and bias type of its config; other params as any trial's."""
    if ENABLED in params:
        rest = {k: v for k, v in params.items() if k == SEED or not k.startswith(("model.rpb.", "model.pos_embed"))}
        params = {"setting": trial_setting(params).label, **rest}
    return sweep_params_text(params)


def train_trial(cfg: DictConfig, on_epoch_end: Callable | None = None, train_fn: Callable | None = None) -> dict:
    """Train one ablation trial: the factors go into the W&B config and tags, then `experiments.train.train`."""
    factors = run_factors(cfg)
    wb = cfg.tracker.get("wandb")  # None with tracker=none
    tags = [*(wb.tags if wb is not None else []), "ablation", f"bias-{factors['bias_type']}", f"mode-{factors['mode']}",
            f"pos-{factors['pos_embed']}", f"seed-{factors['seed']}"]  # fmt: skip
    if not any(t.startswith("window-") for t in tags):  # a config that did not come through trial_config
        tags.append(f"window-{factors['window_size']}")
    if wb is not None:
        wb.tags = list(dict.fromkeys(tags))
    with open_dict(cfg.tracker):
        cfg.tracker.extra_config = {**OmegaConf.to_container(cfg.tracker.extra_config), **factors}
    if train_fn is None:
        from experiments.train import train as train_fn  # deferred: torch, in the process that trains only

    return train_fn(cfg, on_epoch_end=on_epoch_end)


train_trial.describe_params = params_text  # how the trial lines of an ablation name its cells (`sweeps.objective`)


def run_ablation(cfg: DictConfig):
    """Create or resume the ablation study and run its trials (`sweeps.study.run_study`); returns the study."""
    return run_study(ablation_config(cfg))
