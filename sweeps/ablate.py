"""rpb-ablate: the window-size ablation, run through the sweep machinery (`sweeps.study.run_study`).

The grid pos_embeds x window_sizes x bias_types x modes x seeds (conf/ablation/window_size.yaml) becomes an
Optuna study of kind "ablation": every (setting, seed) is one cell of a cell study (`sweeps.samplers`), the full product
of the factors or the cells that make sense (bias type "none" trains once per seed; mode "local" needs a 2d bias). So it resumes, runs with many
workers (`ablation.workers=N`) and lands in W&B like any study: one group per ablation, the factors in every run's
config (flat keys window_size, bias_type, mode, pos_embed, setting, seed, ablation) and tags. Pruning is off unless `ablation.prune=true`.

    rpb-ablate                                                     # 3 windows x 3 seeds on digits
    rpb-ablate 'ablation.window_sizes=[3,5,7]' 'ablation.bias_types=[2d,1d,none]' trainer.epochs=5
    rpb-ablate 'ablation.pos_embeds=[none,learned]' 'ablation.bias_types=[2d,none]' ablation.window_sizes=[7]
                                                                   # none / abs / rpb / abs+rpb (Swin's Table 4)
    rpb-report --storage runs/sweeps/rpb-ablate.journal            # the comparison, as an HTML page
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from rpb import options as model_options
from sweeps.space import SweepConfigError, fixed_values, parse_window, window_label

BIAS_TYPES = (*model_options.BIAS_TYPES, "none")  # none: model.rpb.enabled=false
MODES = model_options.MODES
POS_EMBEDS = model_options.POS_EMBEDS
WINDOW, BIAS, MODE, ENABLED, POS, SEED = (
    "model.rpb.window_size",
    "model.rpb.bias_type",
    "model.rpb.mode",
    "model.rpb.enabled",
    "model.pos_embed",
    "seed",
)
TRAIN_FN = "sweeps.ablate:train_trial"
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


def ablation_config(cfg: DictConfig) -> DictConfig:
    """`cfg` with its `sweep` node rewritten from its `ablation` node (the study run_study will run)."""
    ab = cfg.get("ablation")
    if ab is None:
        raise SweepConfigError("the config has no `ablation` node; compose conf/ablate.yaml (rpb-ablate does).")
    unknown = sorted(set(ab) - set(ABLATION_KEYS))
    if unknown:
        raise SweepConfigError(f"ablation.{unknown[0]} is not an ablation key; use one of {', '.join(ABLATION_KEYS)}.")
    trials, dims, full = ablation_grid(ab)
    from sweeps.summary import check_baseline

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


def setting_label(pos_embed: str, rpb_enabled: bool, bias_type: str, window: str, mode: str) -> str:
    """A plain name for one position setting: "none", "abs (learned)", "rpb 2d 7x7", "abs (sincos)+rpb 2d 7x7 local"."""
    parts = [] if pos_embed == "none" else [f"abs ({pos_embed})"]
    if rpb_enabled:
        parts.append(f"rpb {bias_type} {window}" + (f" {mode}" if mode != "clip" else ""))
    elif mode != "clip":
        parts.append(f"{mode} {window}")  # windows without a bias
    return "+".join(parts) or "none"


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
        "ablation": cfg.tracker.wandb.group,
    }


def train_trial(cfg: DictConfig, on_epoch_end: Callable | None = None, train_fn: Callable | None = None) -> dict:
    """Train one ablation trial: the factors go into the W&B config and tags, then `experiments.train.train`."""
    factors = run_factors(cfg)
    wb = cfg.tracker.wandb
    tags = [*wb.tags, "ablation", f"bias-{factors['bias_type']}", f"mode-{factors['mode']}",
            f"pos-{factors['pos_embed']}", f"seed-{factors['seed']}"]  # fmt: skip
    if not any(t.startswith("window-") for t in tags):  # a config that did not come through trial_config
        tags.append(f"window-{factors['window_size']}")
    wb.tags = list(dict.fromkeys(tags))
    with open_dict(cfg.tracker):
        cfg.tracker.extra_config = {**OmegaConf.to_container(cfg.tracker.extra_config), **factors}
    if train_fn is None:
        from experiments.train import train as train_fn
    return train_fn(cfg, on_epoch_end=on_epoch_end)


def run_ablation(cfg: DictConfig):
    """Create or resume the ablation study and run its trials (`sweeps.study.run_study`); returns the study."""
    from sweeps.study import run_study

    return run_study(ablation_config(cfg))


def main(argv: list[str] | None = None) -> int:
    """`rpb-ablate [hydra overrides]`: compose conf/ablate.yaml, run the ablation, say how to look at it."""
    from experiments.config import compose_config
    from sweeps.objective import quiet_optuna
    from sweeps.storage import describe_storage
    from sweeps.study import StudyAlreadyDone, run_study

    overrides = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(overrides):
        from sweeps.cli import ablate_help  # the one help text of rpb-ablate

        print(ablate_help(), end="")
        return 0
    quiet_optuna()  # one line per finished trial, as rpb-sweep (not Optuna's "A new study created" INFO line)
    try:
        cfg = ablation_config(compose_config(overrides, config_name="ablate"))
        study = run_study(cfg)  # run_ablation without converting the config a second time
    except ValueError as err:  # ConfigError and SweepConfigError are ValueErrors with one sentence
        print(f"rpb-ablate: {err}", file=sys.stderr)
        return 2
    except StudyAlreadyDone as done:
        print(f"rpb-ablate: {done}")
        study = done.study
    if study is None:  # a non-main rank of a multi-process launch
        return 0
    from sweeps.summary import print_verdict

    if cfg.ablation.get("baseline"):
        study.set_user_attr("baseline", str(cfg.ablation.baseline))  # rpb-report's default baseline
    print_verdict(study, cfg.ablation.get("baseline"))
    storage = describe_storage(cfg.sweep)
    print(
        f"ablation {study.study_name}: {len(study.trials)} trials in {storage}\n"
        f"report:    rpb-report --storage {storage} --study {study.study_name}\n"
        f"dashboard: rpb-report --serve optuna --storage {storage}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
