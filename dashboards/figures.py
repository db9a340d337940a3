"""Matplotlib figures of the report (Agg backend, no display): ablation plots, sweep plots, bias heatmaps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from dashboards.ablation import SettingSummary
from dashboards.load import RunData


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(summaries: Sequence[SettingSummary]) -> dict[tuple[str, str], list[SettingSummary]]:
    """One line per (bias type, mode); window sizes along x."""
    out: dict[tuple[str, str], list[SettingSummary]] = {}
    for s in summaries:
        out.setdefault((s.setting.bias_type, s.setting.mode), []).append(s)
    return out


def accuracy_vs_window(summaries: Sequence[SettingSummary]) -> Figure:
    """Best validation accuracy against window size: seeds as dots, mean with its 95% t-interval as error bars.

    One line per (bias type, mode); the setting without a window (no bias) is a horizontal baseline band.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = _series([s for s in summaries if s.setting.window_size is not None])
    for base in (s for s in summaries if s.setting.window_size is None):
        ax.axhline(base.mean, color="grey", linestyle="--", label=f"{base.setting.label} (mean, 95% CI)")
        if math.isfinite(base.ci_low):
            ax.axhspan(base.ci_low, base.ci_high, color="grey", alpha=0.15)
    labels = sorted({s.setting.window_size for g in series.values() for s in g}, key=lambda w: (w[0] * w[1], w))
    xpos = {w: i for i, w in enumerate(labels)}
    width = 0.5 / max(len(series), 1)
    for k, ((bias_type, mode), group) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        xs = [xpos[s.setting.window_size] + offset for s in group]
        means = [s.mean for s in group]
        err = [
            [s.mean - s.ci_low if math.isfinite(s.ci_low) else 0.0 for s in group],
            [s.ci_high - s.mean if math.isfinite(s.ci_high) else 0.0 for s in group],
        ]
        label = bias_type if mode == "clip" else f"{bias_type} {mode}"
        line = ax.errorbar(xs, means, yerr=err, marker="o", capsize=5, label=f"{label} (mean, 95% CI)")
        for x, s in zip(xs, group):
            ax.scatter([x] * len(s.accuracies), s.accuracies, s=14, alpha=0.5, color=line[0].get_color())
    ax.set_xticks(range(len(labels)), [f"{w[0]}x{w[1]}" for w in labels])
    ax.set_xlabel("window size")
    ax.set_ylabel("best validation accuracy")
    ax.set_title("Validation accuracy by window size (dots: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def learning_curves(summaries: Sequence[SettingSummary]) -> Figure:
    """Validation accuracy and training loss per epoch: the mean over seeds per setting, seeds faint."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(summaries):
        color = cycle[i % len(cycle)]
        for ax, key in zip(axes, ("val_accuracy", "train_loss")):
            curves = [[(row["epoch"], row[key]) for row in run.history if key in row] for run in s.runs]
            for curve in curves:
                if curve:
                    ax.plot(*zip(*curve), color=color, alpha=0.25, linewidth=0.8)
            epochs = sorted({e for c in curves for e, _ in c})
            # An epoch's mean counts only the seeds that reached it (pruned or early-stopped runs end early).
            mean = [
                sum(v for c in curves for e2, v in c if e2 == e) / sum(1 for c in curves for e2, _ in c if e2 == e)
                for e in epochs
            ]
            if epochs:
                ax.plot(epochs, mean, color=color, marker="o", markersize=3, label=s.setting.label)
    for ax, title in zip(axes, ("validation accuracy", "training loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(f"{title} (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def heatmap_figure(run: RunData, block: int, window_size: tuple[int, int] | None = None) -> Figure | None:
    """All heads of one block's learned offset map (rpb.plot.plot_bias_offset_map); None if the run saved none."""
    maps = run.offset_maps()
    if not maps:
        return None
    if block not in maps:
        block = sorted(maps)[0]
    from rpb.plot import plot_bias_offset_map

    return plot_bias_offset_map(maps[block], block=block, window_size=window_size)


def intermediate_values(study: optuna.Study) -> Figure:
    """Each result's reported values per epoch; pruned trials in red, ending in a cross where they were stopped.

    Draws every COMPLETE and PRUNED trial of `study`; failed attempts (killed, interrupted) and running or waiting
    trials are never drawn (a waiting retry carries the values its killed attempt reported).
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    shown = {"pruned": False, "complete": False}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        pruned = trial.state == TrialState.PRUNED
        kind = "pruned" if pruned else "complete"
        color = "tab:red" if pruned else "tab:blue"
        ax.plot(steps, values, color=color, alpha=0.6, label=None if shown[kind] else kind)
        shown[kind] = True
        if pruned:
            ax.scatter([steps[-1]], [values[-1]], marker="x", color=color, s=40, zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (epoch)")
    ax.set_ylabel("intermediate value")
    ax.set_title("Intermediate values (x: pruned here)")
    ax.grid(alpha=0.3)
    if any(shown.values()):
        ax.legend(fontsize=8)
    return fig


def _optuna_figure(ax_or_axes) -> Figure:
    first = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    fig = first.get_figure()
    fig.set_size_inches(max(fig.get_size_inches()[0], 6.5), max(fig.get_size_inches()[1], 4))
    return fig


def sweep_figures(study: optuna.Study, slice_params: Sequence[str]) -> dict[str, Figure | str]:
    """Optuna's matplotlib plots of a study; a figure that cannot be drawn becomes the one-sentence reason why.

    Optuna's plots read the COMPLETE trials only (pruned and failed ones are skipped).
    """
    from optuna.visualization import matplotlib as ovm

    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study),
        "param_importances": lambda: ovm.plot_param_importances(study),
        "intermediate_values": lambda: intermediate_values(study),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study),
        "slice": lambda: ovm.plot_slice(study, params=list(slice_params) or None),
    }
    out: dict[str, Figure | str] = {}
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every optuna matplotlib plot
                result = draw()
            out[name] = result if isinstance(result, Figure) else _optuna_figure(result)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            out[name] = f"not drawn: {err}"
    return out
