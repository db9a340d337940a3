"""The statistics of an ablation: one setting's interval over seeds, each setting against a baseline.

Shared by `rpb-ablate` (the verdict table it prints at its end, `sweeps.ablation.verdict`) and `rpb-report` / the
W&B report (`dashboards`), so both say the same. Plain numbers in, plain numbers out: no Optuna, no torch.

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

from experiments.metrics import metric_direction
from sweeps.ablation.settings import Setting

CONFIDENCE = 0.95  # of every interval
ALPHA = 0.05  # family-wise error rate of the verdicts (Holm)
ACCURACY_RANGE = (0.0, 1.0)
LOSS_RANGE = (0.0, math.inf)
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference shown"
METHOD = (
    "A setting's interval: 95% Student t over its seeds, intersected with the accuracy's range [0, 1]. Against the "
    "baseline: runs with the same seed are paired; Δ = setting - baseline averaged over the paired seeds, with a "
    "joint 95% paired-t interval (Bonferroni over the comparisons); paired t-test (two-sided) with Holm-adjusted "
    "p-values; better / worse when the adjusted p < 0.05, else no difference shown."
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
    from scipy import stats  # deferred: scipy is heavy to import, and only the numbers need it

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
    from scipy import stats  # deferred: see mean_interval

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
