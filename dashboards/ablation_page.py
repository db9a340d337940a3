"""The ablation's part of the report: the verdict table that opens the page, accuracy beside cost, the plots that
compare settings and one heatmap per setting (`dashboards.report` puts the page together)."""

from __future__ import annotations

import yaml

from dashboards import figures, html
from dashboards.ablation import Setting, SettingSummary, Verdict
from dashboards.figures import PageFigures
from dashboards.load import Results
from sweeps.ablation.stats import METHOD, format_accuracy, format_interval
from sweeps.format import format_number


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _meaning(setting: Setting) -> str:
    """What a setting without a bias table gives the model, in words (empty for the others)."""
    if setting.window_size is not None:
        return ""
    return ": absolute position only" if setting.absolute else ": no position information"


def verdict_section(result: Verdict) -> str:
    """The verdict table: every setting against the baseline, in words a reader can act on."""
    parts = ["<h2>Verdict: does each setting beat the baseline?</h2>"]
    if result.baseline is None:
        return "\n".join([*parts, html.note(f"No verdict: {result.problem}.")])
    n = len(result.comparisons)
    parts.append(
        f"<p>Baseline: <b>{html.esc(result.baseline.label)}</b>{_meaning(result.baseline)} "
        f"(<code>{html.esc(result.baseline.key)}</code>; "
        f"another with <code>rpb-report --baseline KEY</code> or <code>ablation.baseline=KEY</code>). "
        f"The mean is over each run's best {html.esc(result.metric)} ({result.direction}d); "
        f"Δ is setting − baseline over the seeds both ran; "
        f"{n} comparison{'s' * (n != 1)}.</p>"
    )
    parts.append(html.table(result.header, result.rows, left=1, cls="verdict"))
    parts.append(f'<p class="method">{html.esc(METHOD)}</p>')
    return "\n".join(parts)


def cost_rows(summaries: list[SettingSummary]) -> tuple[list[str], list[tuple]]:
    """Accuracy beside cost per setting: parameters, training images/s, wall time, epochs ("n/a" when missing)."""
    header = ["setting", "seeds", "mean acc", "95% CI", "params", "bias-table params", "train img/s", "wall s/run",
              "epochs"]  # fmt: skip
    rows = [
        (
            s.setting.label,
            ",".join(map(str, sorted(s.seeds))),
            format_accuracy(s.mean),
            format_interval(s.ci_low, s.ci_high),
            format_number(s.num_params),
            format_number(s.bias_params),
            format_number(s.images_per_s),
            format_number(s.wall_time_s),
            format_number(s.epochs),
        )
        for s in summaries
    ]
    return header, rows


def ablation_section(summaries: list[SettingSummary], figs: PageFigures, block: int, res: Results | None = None) -> str:
    """Accuracy and cost per setting, the accuracy-vs-cost view, learning curves and one heatmap per setting."""
    pruned = [t.number for t, _ in res.pruned] if res is not None else []
    which = f"trial{'s' * (len(pruned) != 1)} {', '.join(map(str, pruned))}"
    apart = (
        [
            html.note(
                f"{len(pruned)} pruned run{'s' * (len(pruned) != 1)} ({which}) stopped early: in no setting's "
                "seeds, mean or interval (listed under Overview below)."
            )
        ]
        if pruned
        else []
    )
    if not summaries:
        return "\n".join(["<h2>Ablation</h2>", html.note("no complete runs with a readable run folder yet"), *apart])
    parts = ["<h2>Accuracy and cost per setting</h2>"]
    parts.append(
        html.note(
            "Each setting holds one complete run per seed: a killed attempt counts through its retry only, and "
            "pruned runs are left out. Cost: the model's parameters and training images/s from each run's "
            "summary.json, wall time from summary.json or else the trial's start and end in the study; n/a where "
            "no run recorded it."
        )
    )
    parts += apart
    header, rows = cost_rows(summaries)
    parts.append(html.table(header, rows, left=2))
    parts.append(
        '<div class="row">'
        + figs.add(figures.accuracy_vs_window(summaries), "ablation_accuracy", "accuracy vs window size")
        + figs.add(figures.accuracy_vs_cost(summaries), "ablation_cost", "accuracy vs cost (Pareto view)")
        + "</div>"
    )
    parts.append(figs.add(figures.learning_curves(summaries), "ablation_curves", "learning curves per setting"))
    parts.append(f"<h3>Learned bias, block {block}, all heads (one seed of each setting)</h3>")
    # One seed of each setting: the first whose run saved its bias.
    shown = {
        s.setting: next((r for r in s.runs if r.offset_maps() or block in r.heatmap_images), None) for s in summaries
    }
    items = [(run, block, f"heatmap_{_slug(st.label)}", f"{st.label} ({run.name})") for st, run in shown.items() if run]
    drawn = iter(figs.heatmaps(items))
    row = []
    for s in summaries:
        ref = next(drawn) if shown[s.setting] else None
        if ref is None:
            why = "no bias table" if s.setting.bias_type == "none" else "no bias maps saved (run unfinished?)"
            ref = html.note(f"{s.setting.label}: {why}")
        row.append(ref)
    parts.append('<div class="heatmaps">' + "".join(row) + "</div>")
    config = summaries[0].runs[0].config
    parts.append(
        html.details(
            f"training config of {summaries[0].runs[0].name} (the others differ in their setting and seed)",
            "<pre>" + html.esc(yaml.safe_dump(config, sort_keys=False)) + "</pre>",
        )
    )
    return "\n".join(parts)
