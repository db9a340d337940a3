"""Matplotlib figures of the report (Agg backend, no display): ablation plots, cost plots, sweep plots, heatmaps.

`encode` turns a figure into what the one-file page embeds: a PNG data URI, its pixel size and the size in pixels
of its smallest text (what a reader sees when the page shows the image at its natural size).
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox
from optuna.trial import TrialState

from dashboards import html
from dashboards.ablation import SettingSummary
from dashboards.runs import RunData
from sweeps.record import StudyAttr

DPI = 100  # plots: matplotlib's default 10 pt text is 14 px, legends at 8 pt are 11 px
HEATMAP_DPI = 130  # heatmaps: their 6 pt tick labels are 10.8 px
HEATMAP_PANEL_IN = 0.9  # inches per head panel: 4 heads make a 585 px wide figure, two side by side


@dataclass(frozen=True)
class Encoded:
    """A figure as the page embeds it: ``data:image/png;base64,...``, its size in pixels and its smallest text."""

    uri: str
    width: int
    height: int
    min_text_px: float


def min_text_pt(fig: Figure) -> float:
    """The smallest font size (points) of the figure's visible, non-empty texts; NaN without text."""
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) if sizes else math.nan


def encode(fig: Figure, dpi: int = DPI) -> Encoded:
    """The figure as a PNG data URI cut to its tight box (then freed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    text_px = min_text_pt(fig) * dpi / 72
    plt.close(fig)
    return _png(buffer.getvalue(), text_px)


def encode_alike(figs: Sequence[Figure], dpi: int = HEATMAP_DPI) -> list[Encoded]:
    """Figures of one kind (the heatmaps of a model) as PNG data URIs of exactly one size: each is cut to the union
    of their tight boxes, so nothing sticking out of a figure is clipped and a row of them lines up."""
    boxes = []
    for fig in figs:
        fig.canvas.draw()
        boxes.append(fig.get_tightbbox(fig.canvas.get_renderer()))  # inches
    union = Bbox.union(boxes).padded(0.05) if boxes else None
    out = []
    for fig in figs:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches=union)
        text_px = min_text_pt(fig) * dpi / 72
        plt.close(fig)
        out.append(_png(buffer.getvalue(), text_px))
    return out


def encode_file(path: Path) -> Encoded:
    """A PNG file (a heatmap image logged to W&B) as a data URI; its text size is unknown (NaN)."""
    return _png(Path(path).read_bytes(), math.nan)


def _png(data: bytes, text_px: float) -> Encoded:
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    return Encoded("data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height, text_px)


def _series(summaries: Sequence[SettingSummary]) -> dict[str, list[SettingSummary]]:
    """One line per (bias type, mode, position embedding), named by its settings' label without the window;
    window sizes along x."""
    out: dict[str, list[SettingSummary]] = {}
    for s in summaries:
        out.setdefault(s.setting.label.replace(f" {s.setting.window_label}", ""), []).append(s)
    return out


def accuracy_vs_window(summaries: Sequence[SettingSummary]) -> Figure:
    """Best validation accuracy against window size: seeds as dots, mean with its 95% interval (`sweeps.stats`) as error bars.

    One line per (bias type, mode, position embedding); each setting without a window (no bias: no position, or
    absolute position only) is a horizontal line with its interval as a band.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = _series([s for s in summaries if s.setting.window_size is not None])
    bases = [s for s in summaries if s.setting.window_size is None]
    for base, (color, style) in zip(bases, [("grey", "--"), ("black", ":"), ("tab:brown", "-.")] * len(bases)):
        ax.axhline(base.mean, color=color, linestyle=style, label=f"{base.setting.label} (mean, 95% CI)")
        if math.isfinite(base.ci_low):
            ax.axhspan(base.ci_low, base.ci_high, color=color, alpha=0.12)
    labels = sorted({s.setting.window_size for g in series.values() for s in g}, key=lambda w: (w[0] * w[1], w))
    xpos = {w: i for i, w in enumerate(labels)}
    width = 0.5 / max(len(series), 1)
    for k, (label, group) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        xs = [xpos[s.setting.window_size] + offset for s in group]
        means = [s.mean for s in group]
        err = [
            [s.mean - s.ci_low if math.isfinite(s.ci_low) else 0.0 for s in group],
            [s.ci_high - s.mean if math.isfinite(s.ci_high) else 0.0 for s in group],
        ]
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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats on both (cheaper or as cheap and at least as
    accurate, better in one), in order of cost; points with a NaN are left out."""
    ok = [i for i, (c, a) in enumerate(points) if math.isfinite(c) and math.isfinite(a)]
    front = []
    for i in ok:
        ci, ai = points[i]
        beaten = any(
            points[j][0] <= ci and points[j][1] >= ai and (points[j][0] < ci or points[j][1] > ai) for j in ok if j != i
        )
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


COSTS = (  # (SettingSummary attribute, axis label): what accuracy is drawn against
    ("num_params", "parameters (model)"),
    ("wall_time_s", "wall time per run (s)"),
)


def accuracy_vs_cost(summaries: Sequence[SettingSummary]) -> Figure | str:
    """Mean best validation accuracy (with its 95% interval) against each cost in `COSTS`, one point per setting
    (window sizes and modes), the Pareto front (nothing cheaper is as accurate) as a line.

    Returns the reason instead of a figure when no cost was recorded.
    """
    costs = [(attr, label) for attr, label in COSTS if any(math.isfinite(getattr(s, attr)) for s in summaries)]
    if not costs:
        return "no run recorded its parameter count or wall time"
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {b: cycle[i % len(cycle)] for i, b in enumerate(dict.fromkeys(s.setting.bias_type for s in summaries))}
    for ax, (attr, label) in zip(axes[0], costs):
        points = [(getattr(s, attr), s.mean) for s in summaries]
        for s, (x, y) in zip(summaries, points):
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            low = y - s.ci_low if math.isfinite(s.ci_low) else 0.0
            high = s.ci_high - y if math.isfinite(s.ci_high) else 0.0
            marker = "s" if s.setting.mode == "local" else "o"
            ax.errorbar([x], [y], yerr=[[low], [high]], marker=marker, color=colors[s.setting.bias_type], capsize=4)
            ax.annotate(s.setting.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = pareto_front(points)
        if len(front) > 1:
            ax.plot(*zip(*(points[i] for i in front)), color="grey", linestyle=":", zorder=0, label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(label)
        ax.set_ylabel("best validation accuracy")
        ax.set_title(f"accuracy vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    fig.suptitle("Cost beside accuracy (mean over seeds, 95% interval; squares: local mode)", fontsize=10)
    fig.tight_layout()
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
    from rpb.plot import plot_bias_offset_map  # torch, deferred on purpose: only a page with bias maps needs it

    return plot_bias_offset_map(maps[block], block=block, window_size=window_size, panel_in=HEATMAP_PANEL_IN)


def intermediate_values(study: optuna.Study) -> Figure:
    """Each result's reported values per epoch, each curve labelled with its trial number at its end; pruned trials
    in red, ending in a cross where they were stopped; the y axis names the study's metric and direction.

    Draws every COMPLETE and PRUNED trial of `study`; failed attempts (killed, interrupted) and running or waiting
    trials are never drawn (a waiting retry carries the values its killed attempt reported).
    """
    metric = str(study.user_attrs.get(StudyAttr.METRIC, "value"))
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
        ax.annotate(f"#{trial.number}", (steps[-1], values[-1]), xytext=(3, 0), textcoords="offset points",
                    fontsize=7, color=color, va="center")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({study.direction.name.lower()}d)" if len(study.directions) == 1 else metric)
    ax.set_title(f"{metric} per epoch, by trial (x: pruned here)")
    ax.grid(alpha=0.3)
    if any(shown.values()):
        ax.legend(fontsize=8)
    return fig


def trial_curves(results: Sequence[tuple[optuna.trial.FrozenTrial, RunData]]) -> Figure | str:
    """Validation accuracy and loss per epoch of each kept trial's run (`dashboards.load.Results.runs`), read from
    its metrics.jsonl, each curve labelled with its trial number; the reason as a string when no run has any."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for trial, run in results:
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            curve = [(row["epoch"], row[key]) for row in run.history if key in row and "epoch" in row]
            if not curve:
                continue
            line = ax.plot(*zip(*curve), alpha=0.7, linewidth=1, marker="o", markersize=2)
            ax.annotate(f"#{trial.number}", curve[-1], xytext=(3, 0), textcoords="offset points", fontsize=7,
                        color=line[0].get_color(), va="center")  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(fig)
        return "not drawn: no trial's run folder holds a metrics.jsonl with validation metrics"
    for ax, title in zip(axes, ("validation accuracy", "validation loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(f"{title} per trial")
        ax.grid(alpha=0.3)
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
    from optuna.visualization import matplotlib as ovm  # deferred on purpose: slow to import, a sweep page only

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


class PageFigures:
    """Turns figures into images inside the page (PNG data URIs at their natural size)."""

    def add(self, fig, name: str, caption: str) -> str:
        if isinstance(fig, str):  # a figure that could not be drawn carries its reason
            return html.note(f"{caption}: {fig}")
        return self._figure(encode(fig), name, caption)

    def heatmaps(self, items: list[tuple[RunData, int, str, str]]) -> list[str | None]:
        """Bias heatmaps of (run, block, name, caption): drawn from the runs' offset maps, all cut to one size (a
        row lines up; the smallest text is 10.8 px), else the image W&B logged; None where a run has neither."""
        drawn = {i: heatmap_figure(run, block) for i, (run, block, _, _) in enumerate(items)}
        drawn = {i: fig for i, fig in drawn.items() if fig is not None}
        encoded = dict(zip(drawn, encode_alike(list(drawn.values()))))
        out: list[str | None] = []
        for i, (run, block, name, caption) in enumerate(items):
            if i in encoded:
                out.append(self._figure(encoded[i], name, caption))
            elif block in run.heatmap_images:  # W&B reader: the logged image, no offset maps
                out.append(self._figure(encode_file(run.heatmap_images[block]), name, caption))
            else:
                out.append(None)
        return out

    @staticmethod
    def _figure(enc: Encoded, name: str, caption: str) -> str:
        return html.figure(enc.uri, caption, enc.width, enc.height, enc.min_text_px, name=name)
