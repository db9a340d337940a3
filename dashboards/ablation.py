"""Summarise an ablation: group runs by (bias type, mode, window size), mean and 95% t-interval over seeds, cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from dashboards.load import RunData, params_cell


@dataclass(frozen=True, order=True)
class Setting:
    """One cell of the ablation grid; ordered by bias type, mode, then window area.

    Runs without a bias are one setting whatever their config's window and mode: `NO_BIAS` (no window).
    """

    bias_type: str  # "2d" | "1d" | "none"
    mode: str  # "clip" | "local"
    window_size: tuple[int, int] | None  # None: no bias table, so no window

    @property
    def window_label(self) -> str:
        return "none" if self.window_size is None else f"{self.window_size[0]}x{self.window_size[1]}"

    @property
    def label(self) -> str:
        if self.window_size is None:
            return "no bias"
        return f"{self.window_label} {self.bias_type}" + (f" {self.mode}" if self.mode != "clip" else "")


NO_BIAS = Setting(bias_type="none", mode="clip", window_size=None)


@dataclass
class SettingSummary:
    """The seeds of one setting: accuracy statistics and training cost."""

    setting: Setting
    runs: list[RunData] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    bias_params: int = 0
    epochs: float = math.nan
    wall_time_s: float = math.nan


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def setting_of(run: RunData) -> Setting:
    """The ablation factors of a run, read from its resolved config (``model.rpb.*``); `NO_BIAS` without a bias."""
    rpb = _get(run.config, "model.rpb", {}) or {}
    if not rpb.get("enabled", True):
        return NO_BIAS
    window = rpb.get("window_size", [0, 0])
    window = (int(window), int(window)) if isinstance(window, int) else (int(window[0]), int(window[-1]))
    return Setting(bias_type=str(rpb.get("bias_type", "2d")), mode=str(rpb.get("mode", "clip")), window_size=window)


def ablation_cell(trial: optuna.trial.FrozenTrial, run: RunData | None) -> object:
    """The cell of an ablation trial for `dashboards.load.results`: its setting and seed, read from its run's
    config (its params when the run could not be read), so one (setting, seed) is one result."""
    if run is None or not run.config or "seed" not in run.config:
        return params_cell(trial, run)
    return ("ablation", setting_of(run), int(run.config["seed"]))


def run_accuracy(run: RunData) -> float:
    """Best validation accuracy of a run: the summary's, else the best epoch's (a run cut off before its summary)."""
    best = run.summary.get("best_val_accuracy")
    if isinstance(best, (int, float)) and math.isfinite(best):
        return float(best)
    values = [row["val_accuracy"] for row in run.history if isinstance(row.get("val_accuracy"), (int, float))]
    return max(values) if values else math.nan


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided Student-t confidence interval of the mean (NaN bounds for fewer than 2 values)."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(finite) / n
    if n < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def bias_table_params(config: dict[str, Any]) -> int:
    """Parameters in all relative position bias tables of the model a config builds (0 when disabled)."""
    rpb = _get(config, "model.rpb", {}) or {}
    if not rpb or not rpb.get("enabled", True):
        return 0
    from rpb import RelativePositionBias

    setting = setting_of(RunData(name="", config=config, history=[], summary={}))
    img, patch = _get(config, "data.img_size", 28), _get(config, "model.patch_size", 4)
    img = img if isinstance(img, int) else img[0]
    module = RelativePositionBias(
        int(rpb.get("num_heads") or _get(config, "model.num_heads", 1)),
        setting.window_size,
        bias_type=setting.bias_type,
        class_token=bool(_get(config, "model.class_token", True)),
        grid_size=(img // patch, img // patch),
        mode=setting.mode,
    )
    # One table per block (the model holds a RelativePositionBias in every attention layer).
    return module.relative_position_bias_table.numel() * int(_get(config, "model.depth", 1))


def summarise(runs: list[RunData]) -> list[SettingSummary]:
    """Group runs by setting (in grid order) and compute accuracy statistics and cost per setting.

    `runs` are results of complete trials, one per (setting, seed): `dashboards.load.trial_runs` (the rule is in
    `dashboards.load.results`). Runs of pruned or failed trials must not be passed in: they would enter the mean.
    """
    groups: dict[Setting, SettingSummary] = {}
    for run in runs:
        setting = setting_of(run)
        group = groups.setdefault(setting, SettingSummary(setting=setting))
        group.runs.append(run)
        group.seeds.append(int(run.config.get("seed", -1)))
        group.accuracies.append(run_accuracy(run))
    for group in groups.values():
        group.mean, group.ci_low, group.ci_high = t_interval(group.accuracies)
        group.bias_params = bias_table_params(group.runs[0].config)
        epochs = [float(r.summary.get("epochs_run", len(r.history))) for r in group.runs]
        times = [sum(float(row.get("epoch_time", 0.0)) for row in r.history) for r in group.runs]
        group.epochs = sum(epochs) / len(epochs)
        group.wall_time_s = sum(times) / len(times)
    return [groups[s] for s in sorted(groups)]
