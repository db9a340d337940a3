"""Summarise an ablation: group runs by setting (bias type, mode, window size), mean and interval over seeds, cost,
and the verdict of each setting against the baseline (the statistics live in `sweeps.stats`, shared with
`rpb-ablate`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from dashboards.cells import config_value, setting_of
from dashboards.runs import RunData
from experiments.metrics import metric_direction
from sweeps.ablation.settings import DEFAULT_BASELINE, NO_BIAS, Setting, find_setting
from sweeps.ablation.settings import setting_of as setting_of_rpb
from sweeps.ablation.stats import Comparison, mean_interval, metric_range, verdict_table
from sweeps.record import StudyAttr

__all__ = ["DEFAULT_BASELINE", "NO_BIAS", "Setting", "SettingSummary", "Verdict", "setting_of", "summarise", "verdict"]


@dataclass
class SettingSummary:
    """The seeds of one setting: accuracy statistics and training cost (means over its seeds).

    Attributes:
        accuracies: each run's best value of the summarised metric (`summarise`; validation accuracy by default).
        mean, ci_low, ci_high: their mean and 95% interval (`sweeps.stats.mean_interval`).
        bias_params: parameters of all bias tables of the model.
        num_params: trainable parameters of the model (summary.json ``num_params``); NaN when no run recorded it.
        images_per_s: training images per second (summary.json ``train_images_per_s``); NaN when not recorded.
        wall_time_s: seconds a run took (summary.json ``wall_s``, else the trial's start-to-end time in the study).
    """

    setting: Setting
    runs: list[RunData] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    bias_params: int = 0
    epochs: float = math.nan
    num_params: float = math.nan
    images_per_s: float = math.nan
    wall_time_s: float = math.nan


def study_metric(study: optuna.Study) -> tuple[str, str]:
    """(metric, direction) of a study: what its trials' values are and which way they improve."""
    return str(study.user_attrs.get(StudyAttr.METRIC, "val_accuracy")), study.direction.name.lower()


def run_value(run: RunData, metric: str = "val_accuracy", direction: str | None = None) -> float:
    """The best `metric` of a run (in `direction`, default the metric's): the summary's ``best_<metric>``, else the
    best epoch's (a run cut off before its summary, or one from before train() kept that key); NaN without any."""
    best = run.summary.get(f"best_{metric}")
    if isinstance(best, (int, float)) and math.isfinite(best):
        return float(best)
    values = [row[metric] for row in run.history if isinstance(row.get(metric), (int, float))]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan
    return min(values) if (direction or metric_direction(metric)) == "minimize" else max(values)


def bias_table_params(config: dict[str, Any]) -> int:
    """Parameters in all relative position bias tables of the model a config builds (0 when disabled)."""
    rpb = config_value(config, "model.rpb", {}) or {}
    if not rpb or not rpb.get("enabled", True):
        return 0
    from rpb import RelativePositionBias  # torch, deferred on purpose: only an ablation's cost table needs it

    setting = setting_of_rpb(rpb)
    img, patch = config_value(config, "data.img_size", 28), config_value(config, "model.patch_size", 4)
    img = img if isinstance(img, int) else img[0]
    module = RelativePositionBias(
        int(rpb.get("num_heads") or config_value(config, "model.num_heads", 1)),
        setting.window_size,
        bias_type=setting.bias_type,
        class_token=bool(config_value(config, "model.class_token", True)),
        grid_size=(img // patch, img // patch),
        mode=setting.mode,
    )
    # One table per block (the model holds a RelativePositionBias in every attention layer).
    return module.relative_position_bias_table.numel() * int(config_value(config, "model.depth", 1))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def wall_time(run: RunData) -> float:
    """Seconds one run took: summary.json's ``wall_s``, else the study's start-to-end time of its trial; NaN."""
    wall = run.summary.get("wall_s")
    if isinstance(wall, (int, float)) and math.isfinite(wall):
        return float(wall)
    return math.nan if run.study_wall_s is None else float(run.study_wall_s)


def summarise(runs: list[RunData], metric: str = "val_accuracy", direction: str | None = None) -> list[SettingSummary]:
    """Group runs by setting (in grid order) and compute the statistics of each run's best `metric` (in
    `direction`: the study's) and the cost per setting.

    `runs` are results of complete trials, one per (setting, seed): `dashboards.load.trial_runs` (the rule is in
    `dashboards.load.results`). Runs of pruned or failed trials must not be passed in: they would enter the mean.
    """
    groups: dict[Setting, SettingSummary] = {}
    for run in runs:
        setting = setting_of(run)
        group = groups.setdefault(setting, SettingSummary(setting=setting))
        group.runs.append(run)
        group.seeds.append(int(run.config.get("seed", -1)))
        group.accuracies.append(run_value(run, metric, direction))
    for group in groups.values():
        group.mean, group.ci_low, group.ci_high = mean_interval(group.accuracies, bounds=metric_range(metric))
        group.bias_params = bias_table_params(group.runs[0].config)
        group.epochs = _mean([float(r.summary.get("epochs_run", len(r.history))) for r in group.runs])
        group.num_params = _mean([r.summary.get("num_params") for r in group.runs])
        group.images_per_s = _mean([r.summary.get("train_images_per_s") for r in group.runs])
        group.wall_time_s = _mean([wall_time(r) for r in group.runs])
    return [groups[s] for s in sorted(groups)]


@dataclass
class Verdict:
    """The verdict table of an ablation (`sweeps.stats.verdict_table`), or why there is none.

    Attributes:
        baseline: the baseline setting (None when it could not be found).
        header, rows: the formatted table (baseline first).
        comparisons: each other setting against the baseline.
        problem: one sentence when there is no table (no baseline runs, an unknown baseline name).
    """

    baseline: Setting | None
    header: tuple[str, ...] = ()
    rows: list[tuple[str, ...]] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    problem: str = ""
    metric: str = "val_accuracy"  # what the table compares, and which way it improves
    direction: str = "maximize"


def verdict(
    summaries: list[SettingSummary],
    baseline: str = DEFAULT_BASELINE,
    metric: str = "val_accuracy",
    direction: str | None = None,
) -> Verdict:
    """Every setting against the one `baseline` names (a key such as ``none``, ``abs``, ``2d-7x7``, or a label), on
    the summaries' `metric` (`summarise`), better in `direction` (default: the metric's)."""
    settings = [s.setting for s in summaries]
    if not settings:
        return Verdict(None, problem="no complete runs yet, so nothing to compare")
    try:
        base = find_setting(baseline, settings)
    except KeyError as err:
        return Verdict(None, problem=str(err.args[0]))
    seeds = {s.setting: {seed: acc for seed, acc in zip(s.seeds, s.accuracies)} for s in summaries}
    direction = direction or metric_direction(metric) or "maximize"
    header, rows, comparisons = verdict_table(seeds, base, metric, direction)
    return Verdict(base, header, rows, comparisons, metric=metric, direction=direction)
