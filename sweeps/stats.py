"""The statistics of an ablation: its settings, one setting's interval over seeds, each setting against a baseline.

Shared by `rpb-ablate` (the verdict table it prints at its end, `sweeps.summary`) and `rpb-report` / the W&B
report (`dashboards`), so both say the same. Plain numbers in, plain numbers out: no Optuna, no torch.

The methods (all from `scipy.stats`), chosen for the handful of seeds an ablation has:

* **A setting's interval**: Student's t over its seeds (`scipy.stats.ttest_1samp(...).confidence_interval`),
  intersected with the metric's range ([0, 1] for an accuracy). The t interval is exact for normally distributed
  seed-to-seed noise at any number of seeds; a bootstrap over 3 seeds has 10 distinct resamples and covers far less
  than its nominal level. Intersecting with the range keeps the coverage (the true mean lies in the range) and
  never reports an impossible accuracy.
* **A setting against the baseline**: the runs of both with the same seeds are paired (same data order and
  initialisation stream); the difference (setting - baseline) is averaged over those seeds, its interval is the
  paired t interval and its test the paired t-test (`scipy.stats.ttest_rel`), two-sided. A sign-flip permutation
  or Wilcoxon test cannot reach p < 0.05 with fewer than 6 pairs (its smallest two-sided p is 2 / 2**n), so with 3
  seeds it could never show a difference.
* **Several settings**: the number of comparisons m is taken into account twice. The verdicts use Holm's
  step-down correction of the p-values (`holm`): the chance of any false "better"/"worse" stays below `alpha`.
  The difference intervals are joint 95% intervals (each at 1 - 0.05/m, Bonferroni): all m cover their true
  difference together with 95% probability. An interval that excludes 0 always comes with a "better"/"worse"
  verdict (Holm rejects whatever Bonferroni rejects, and sometimes more). "No difference shown" is not a proof
  of equality: read the interval's width.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.metrics import metric_direction

CONFIDENCE = 0.95  # of every interval
ALPHA = 0.05  # family-wise error rate of the verdicts (Holm)
ACCURACY_RANGE = (0.0, 1.0)
LOSS_RANGE = (0.0, math.inf)
DEFAULT_BASELINE = "none"  # no position information: what a setting is compared with unless ablation.baseline says
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference shown"
METHOD = (
    "A setting's interval: 95% Student t over its seeds, intersected with the accuracy's range [0, 1]. Against the "
    "baseline: runs with the same seed are paired; Δ = setting - baseline averaged over the paired seeds, with a "
    "joint 95% paired-t interval (Bonferroni over the comparisons); paired t-test (two-sided) with Holm-adjusted "
    "p-values; better / worse when the adjusted p < 0.05, else no difference shown."
)


# --- What is compared: a setting of the ablation grid -----------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One cell of the ablation grid without its seed; ordered by bias type, mode, window area, position embedding.

    Runs without a bias are one setting whatever window and mode their config names (`window_size` None).

    Attributes:
        bias_type: "2d" | "1d" | "none".
        mode: "clip" | "local".
        window_size: (Wh, Ww), None without a bias table.
        pos_embed: the run's ``model.pos_embed`` ("none", "learned", "sincos"; `rpb.options.POS_EMBEDS`), None
            for a run whose config predates that key.
    """

    bias_type: str
    mode: str
    window_size: tuple[int, int] | None
    pos_embed: str | None = None

    def _order(self) -> tuple:
        h, w = self.window_size or (0, 0)
        return (self.bias_type, self.mode, h * w, h, self.pos_embed or "")

    def __lt__(self, other: Setting) -> bool:
        return self._order() < other._order()

    @property
    def absolute(self) -> bool:
        """Whether the model adds an absolute position embedding."""
        return self.pos_embed not in (None, "none")

    @property
    def window_label(self) -> str:
        return "none" if self.window_size is None else f"{self.window_size[0]}x{self.window_size[1]}"

    @property
    def key(self) -> str:
        """How a user names it (``ablation.baseline``, ``rpb-report --baseline``): none, abs, abs-sincos, 2d-7x7,
        2d-7x7-local, 2d-7x7+abs (abs: a learned absolute embedding)."""
        pos = "abs" if self.pos_embed == "learned" else f"abs-{self.pos_embed}"
        if self.window_size is None:
            return pos if self.absolute else "none"
        mode = "" if self.mode == "clip" else f"-{self.mode}"
        return f"{self.bias_type}-{self.window_label}{mode}" + (f"+{pos}" if self.absolute else "")

    @property
    def label(self) -> str:
        """How tables and plots name it, as W&B's ``setting`` key does (`sweeps.ablate.setting_label`): "none",
        "abs (learned)", "rpb 2d 7x7", "abs (sincos)+rpb 2d 7x7 local"."""
        from sweeps.ablate import setting_label  # ablate imports this module

        enabled = self.window_size is not None
        return setting_label(self.pos_embed or "none", enabled, self.bias_type, self.window_label, self.mode)


NO_BIAS = Setting(bias_type="none", mode="clip", window_size=None)


def setting_of(rpb: Mapping[str, Any], pos_embed: Any = None) -> Setting:
    """The setting of a run from its ``model.rpb`` values (enabled, bias_type, mode, window_size: an int, a pair or
    "HxW") and its ``model.pos_embed`` (None when the config has none)."""
    pos = None if pos_embed is None else str(pos_embed).lower()
    if not rpb.get("enabled", True) or rpb.get("bias_type") == "none":
        return Setting("none", "clip", None, pos)
    window = rpb.get("window_size", (0, 0))
    if isinstance(window, str):
        window = [int(v) for v in window.lower().split("x")]
    window = (int(window), int(window)) if isinstance(window, int) else (int(window[0]), int(window[-1]))
    return Setting(str(rpb.get("bias_type", "2d")), str(rpb.get("mode", "clip")), window, pos)


def find_setting(name: str, settings: Sequence[Setting]) -> Setting:
    """The setting a user named by its key or label (case and spaces ignored; "none" also names the no-position
    setting of a study whose runs do not name their position embedding).

    Raises:
        KeyError: one sentence listing the settings' keys.
    """
    want = " ".join(str(name).lower().split())
    for s in settings:
        if want in (s.key.lower(), s.label.lower()):
            return s
    raise KeyError(
        f"the baseline {name!r} names no setting of this ablation; choose one of: "
        + ", ".join(s.key for s in sorted(settings))
        + " (bias type none must be in ablation.bias_types for the default baseline)"
    )


def metric_range(metric: str) -> tuple[float, float]:
    """The values `metric` can take: [0, 1] for an accuracy, [0, inf) for a loss, anything otherwise."""
    direction = metric_direction(metric)
    if direction == "maximize":
        return ACCURACY_RANGE
    return LOSS_RANGE if direction == "minimize" else (-math.inf, math.inf)


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    return max(low, bounds[0]), min(high, bounds[1])


def mean_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, bounds: tuple[float, float] = ACCURACY_RANGE
) -> tuple[float, float, float]:
    """Mean of one setting's per-seed values and its Student-t interval, intersected with `bounds`.

    Args:
        values: one value per seed (NaN and None are left out).
        confidence: the interval's confidence level.
        bounds: the metric's range (an accuracy: [0, 1]).

    Returns:
        (mean, low, high); NaN bounds with fewer than 2 values, NaN everywhere with none. Seeds that all agree
        give the zero-width interval [mean, mean].
    """
    from scipy import stats

    finite = _finite(values)
    if not finite:
        return math.nan, math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan, math.nan
    if max(finite) == min(finite):
        return mean, mean, mean
    low, high = stats.ttest_1samp(finite, 0.0).confidence_interval(confidence)
    low, high = _clip(float(low), float(high), bounds)
    return mean, low, high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN entries stay NaN and do not count.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) * p_(j)).
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    m = len(tested)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class Comparison:
    """One setting against the baseline over the seeds both have.

    Attributes:
        setting: the setting's label.
        seeds: the paired seeds (sorted).
        difference: mean over the paired seeds of (setting - baseline); NaN without a paired seed.
        low, high: its interval (paired t, intersected with the difference's range); NaN with fewer than 2 pairs.
        p_value: two-sided paired t-test; NaN when it cannot be computed (fewer than 2 pairs, or all paired
            differences equal).
        p_adjusted: Holm-adjusted over the comparisons of one table (`compare_to_baseline`).
        verdict: `BETTER`, `WORSE` or `NO_DIFFERENCE`.
    """

    setting: str
    seeds: tuple[int, ...]
    difference: float
    low: float
    high: float
    p_value: float
    p_adjusted: float = math.nan
    verdict: str = NO_DIFFERENCE


def paired_difference(
    setting: Mapping[int, float],
    baseline: Mapping[int, float],
    label: str = "",
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] = ACCURACY_RANGE,
) -> Comparison:
    """The paired comparison of one setting with the baseline (seed -> value each), before any correction."""
    from scipy import stats

    seeds = tuple(sorted(s for s in setting if s in baseline and len(_finite([setting[s], baseline[s]])) == 2))
    a = [float(setting[s]) for s in seeds]
    b = [float(baseline[s]) for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    if not diffs:
        return Comparison(label, seeds, math.nan, math.nan, math.nan, math.nan)
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return Comparison(label, seeds, mean, math.nan, math.nan, math.nan)
    if max(diffs) == min(diffs):  # no spread: the t statistic is undefined (0/0 or x/0)
        return Comparison(label, seeds, mean, mean, mean, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b)
        low, high = result.confidence_interval(confidence)
    span = bounds[1] - bounds[0]
    low, high = _clip(float(low), float(high), (-span, span))
    return Comparison(label, seeds, mean, low, high, float(result.pvalue))


def verdict(difference: float, p_adjusted: float, alpha: float = ALPHA, direction: str = "maximize") -> str:
    """ "better" / "worse" when the adjusted p is below `alpha` (by the sign of the difference: a higher value is
    better when the metric is maximized, a lower one when it is minimized), else "no difference shown"."""
    if not math.isfinite(p_adjusted) or p_adjusted >= alpha or difference == 0:
        return NO_DIFFERENCE
    return BETTER if (difference > 0) == (direction == "maximize") else WORSE


def compare_to_baseline(
    settings: Mapping[str, Mapping[int, float]],
    baseline: str,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    bounds: tuple[float, float] = ACCURACY_RANGE,
    direction: str = "maximize",
) -> list[Comparison]:
    """Every setting but the baseline against the baseline, in the order of `settings`: joint (Bonferroni) intervals
    at `confidence`, Holm-adjusted p-values and verdicts at `alpha`.

    Args:
        settings: setting label -> {seed: value} (e.g. best validation accuracy per seed).
        baseline: the label of the baseline setting, a key of `settings`.
        bounds: the metric's range (`metric_range`). direction: the metric's ("maximize" or "minimize").

    Raises:
        KeyError: when `baseline` is not one of the settings (the message lists them).
    """
    if baseline not in settings:
        raise KeyError(f"the baseline {baseline!r} is not among the settings: {', '.join(settings)}")
    others = {k: v for k, v in settings.items() if k != baseline}
    base = settings[baseline]
    m = sum(len(paired_difference(v, base).seeds) >= 2 for v in others.values()) or 1
    joint = 1 - (1 - confidence) / m  # Bonferroni: the m intervals hold together at `confidence`
    raw = [paired_difference(v, base, k, joint, bounds) for k, v in others.items()]
    adjusted = holm([c.p_value for c in raw])
    return [
        Comparison(c.setting, c.seeds, c.difference, c.low, c.high, c.p_value, p, verdict(c.difference, p, alpha, direction))
        for c, p in zip(raw, adjusted)
    ]


# --- How the numbers are printed (terminal, HTML and W&B alike) -------------------------------------------------


def format_number(value: object, digits: int = 3) -> str:
    """A number at `digits` significant digits, without exponent for everyday magnitudes: 0.00125, 590, 12.3k,
    1.23M; integers below 10,000 as they are; "n/a" for None, NaN and non-numbers; other values as str()."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    if isinstance(value, int) and abs(value) < 10_000:
        return str(value)
    text = f"{value:.{digits}g}"
    if abs(value) >= 1000 or ("e" in text and abs(value) >= 1):
        for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= size * (1 - 0.5 * 10 ** (-digits)):
                return f"{value / size:.{digits}g}{suffix}"
    if "e" in text:  # a short exponent: 3.12e-5
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def short_names(paths: Sequence[str]) -> list[str]:
    """Column names for config paths: the last part ("lr" for optim.lr) unless two paths share it (then whole)."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return [name if last.count(name) == 1 else path for name, path in zip(last, paths)]


def format_accuracy(value: float, signed: bool = False) -> str:
    """An accuracy (or a difference of accuracies) at 3 decimals, i.e. to 0.1 percentage point; "n/a" for NaN."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_interval(low: float, high: float, signed: bool = False) -> str:
    """ "[low, high]" at the accuracy's precision; "n/a" when either bound is NaN."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{format_accuracy(low, signed)}, {format_accuracy(high, signed)}]"


def format_p(p: float) -> str:
    """A p-value at 2 significant digits ("<0.001" below that); "n/a" for NaN."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


VERDICT_TABLE_HEADER = ("setting", "n", "mean acc", "95% CI", "Δ vs baseline", "Δ joint 95% CI", "p (Holm)", "verdict")
MEAN_COLUMN = 2  # the header's "mean <metric>" column


def mean_label(metric: str) -> str:
    """The column head of a setting's mean: "mean acc" for val_accuracy, "mean loss" for val_loss."""
    short = {"maximize": "acc", "minimize": "loss"}.get(metric_direction(metric) or "", metric)
    return f"mean {short}" if metric.startswith("val_") or short == metric else f"mean {metric}"


def verdict_table(
    settings: Mapping[Setting, Mapping[int, float]],
    baseline: Setting,
    metric: str = "val_accuracy",
    direction: str | None = None,
) -> tuple[tuple[str, ...], list[tuple[str, ...]], list[Comparison]]:
    """The verdict table of an ablation: the baseline first, then every other setting in grid order.

    Args:
        settings: setting -> {seed: the run's best value of `metric`}.
        baseline: one of `settings`' keys (`find_setting`).
        metric: what the values are; its range bounds the intervals.
        direction: which difference is "better" (default: the metric's, `metric_direction`; maximize if unknown).

    Returns:
        (the header, `VERDICT_TABLE_HEADER` with the mean's column named after `metric`, formatted rows, the
        comparisons in row order after the baseline's row): what `rpb-ablate`, `rpb-report` and the W&B report print.
    """
    direction, bounds = direction or metric_direction(metric) or "maximize", metric_range(metric)
    order = [baseline, *sorted(s for s in settings if s != baseline)]
    by_label = {s.label: dict(settings[s]) for s in order}
    comparisons = compare_to_baseline(by_label, baseline.label, bounds=bounds, direction=direction)
    header = list(VERDICT_TABLE_HEADER)
    header[MEAN_COLUMN] = mean_label(metric)
    rows = []
    for setting in order:
        mean, low, high = mean_interval(list(settings[setting].values()), bounds=bounds)
        stats_cells = (setting.label, str(len(settings[setting])), format_accuracy(mean), format_interval(low, high))
        if setting == baseline:
            rows.append((*stats_cells, "baseline", "", "", ""))
            continue
        c = comparisons[len(rows) - 1]
        cells = (format_accuracy(c.difference, True), format_interval(c.low, c.high, True), format_p(c.p_adjusted))
        rows.append((*stats_cells, *cells, c.verdict))
    return tuple(header), rows, comparisons
