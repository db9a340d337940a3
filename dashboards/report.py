"""rpb-report: a self-contained local HTML report of a study (sweep or ablation), plus local dashboards.

Examples:
    rpb-report --storage runs/sweeps/my-ablation.journal --out reports/my-ablation
    rpb-report --storage runs/sweeps/my-sweep.journal --source wandb --entity me --project rpb-lab
    rpb-report --serve optuna --storage runs/sweeps/my-sweep.journal          # http://127.0.0.1:8080
    rpb-report --serve tensorboard --logdir runs/sweeps/my-sweep               # http://127.0.0.1:6006
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
from pathlib import Path

import optuna
import yaml

from dashboards import figures, html
from dashboards.ablation import SettingSummary, summarise
from dashboards.load import LocalRunReader, RunData, RunReader, load_study, trial_runs

FIG_DIR = "figures"


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


class _Figures:
    """Saves figures under <out>/figures/ and returns the page's relative references."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def add(self, fig, name: str, caption: str) -> str:
        if isinstance(fig, str):  # a figure that could not be drawn carries its reason
            return html.note(f"{caption}: {fig}")
        figures.save(fig, self.out_dir / FIG_DIR / f"{name}.png")
        return html.figure(f"{FIG_DIR}/{name}.png", caption)

    def copy(self, src: Path, name: str, caption: str) -> str:
        dst = self.out_dir / FIG_DIR / f"{name}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return html.figure(f"{FIG_DIR}/{name}.png", caption)

    def heatmap(self, run: RunData, block: int, name: str, caption: str) -> str | None:
        fig = figures.heatmap_figure(run, block)
        if fig is not None:
            return self.add(fig, name, caption)
        if block in run.heatmap_images:  # W&B reader: the logged image, no offset maps
            return self.copy(run.heatmap_images[block], name, caption)
        return None


def overview_section(study: optuna.Study, runs: list[tuple[optuna.trial.FrozenTrial, RunData]]) -> str:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    kind = study.user_attrs.get("kind", "sweep")
    direction = ", ".join(d.name.lower() for d in study.directions)
    facts = [
        ("study", study.study_name),
        ("kind", kind),
        ("direction", direction),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"),
        ("runs read", len(runs)),
    ]
    params = _param_names(study)
    rows = [
        [t.number, t.state.name.lower(), "" if t.value is None else _fmt(t.value), r.summary.get("status", "")]
        + [str(t.params.get(p, "")) for p in params]
        for t, r in runs
    ]
    return (
        "<h2>Overview</h2>"
        + html.table(None, facts, left=2)
        + html.table(["trial", "state", "value", "run status", *params], rows, left=2)
    )


def _param_names(study: optuna.Study) -> list[str]:
    names: list[str] = []
    for t in study.get_trials(deepcopy=False):
        names += [p for p in t.params if p not in names]
    return names


def ablation_section(summaries: list[SettingSummary], figs: _Figures, block: int) -> str:
    if not summaries:
        return "<h2>Ablation</h2>" + html.note("no finished runs with a readable run folder yet")
    parts = ["<h2>Ablation: window size</h2>"]
    parts.append(figs.add(figures.accuracy_vs_window(summaries), "ablation_accuracy", "accuracy vs window size"))
    header = [
        "setting",
        "seeds",
        "n",
        "mean best val acc",
        "95% CI (t)",
        "bias-table params",
        "epochs",
        "wall time (s)",
    ]
    rows = [
        (
            s.setting.label,
            ",".join(map(str, sorted(s.seeds))),
            len(s.runs),
            _fmt(s.mean),
            f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]",
            s.bias_params,
            _fmt(s.epochs, 1),
            _fmt(s.wall_time_s, 1),
        )
        for s in summaries
    ]
    parts.append(html.table(header, rows, left=2))
    parts.append(figs.add(figures.learning_curves(summaries), "ablation_curves", "learning curves per setting"))
    parts.append(f"<h3>Learned bias, block {block}, all heads (one seed of each setting)</h3>")
    row = []
    for s in summaries:
        for run in s.runs:
            ref = figs.heatmap(run, block, f"heatmap_{_slug(s.setting.label)}", f"{s.setting.label} ({run.name})")
            if ref is not None:
                row.append(ref)
                break
        else:
            why = "no bias table" if s.setting.bias_type == "none" else "no bias maps saved (run unfinished?)"
            row.append(html.note(f"{s.setting.label}: {why}"))
    parts.append('<div class="row">' + "".join(row) + "</div>")
    return "\n".join(parts)


def sweep_section(study: optuna.Study, best: RunData | None, figs: _Figures) -> str:
    params = _param_names(study)
    slice_params = [p for p in params if "window" in p or p.split(".")[-1] in ("lr", "learning_rate")]
    drawn = figures.sweep_figures(study, slice_params)
    captions = {
        "optimization_history": "optimisation history",
        "param_importances": "parameter importances (Optuna's default evaluator; rough with few trials)",
        "intermediate_values": "intermediate values",
        "parallel_coordinate": "parallel coordinates",
        "slice": "slices: " + (", ".join(slice_params) or "all parameters"),
    }
    parts = ["<h2>Study</h2>", '<div class="row">']
    parts += [figs.add(drawn[name], f"sweep_{name}", captions[name]) for name in captions]
    parts.append("</div>")
    try:
        trial = study.best_trial
    except ValueError:
        return "\n".join([*parts, html.note("no completed trial yet, so no best trial")])
    parts.append(f"<h3>Best trial: #{trial.number}, value {_fmt(trial.value)}</h3>")
    parts.append(html.table(["parameter", "value"], sorted((k, v) for k, v in trial.params.items()), left=2))
    if best is None:
        return "\n".join([*parts, html.note("the best trial's run folder could not be read")])
    parts.append("<pre>" + html.esc(yaml.safe_dump(best.config, sort_keys=False)) + "</pre>")
    maps = best.offset_maps() or {}
    blocks = sorted(maps) or sorted(best.heatmap_images)
    row = [figs.heatmap(best, b, f"best_block_{b:02d}", f"best trial, block {b}") for b in blocks]
    parts.append('<div class="row">' + "".join(r for r in row if r) + "</div>")
    return "\n".join(parts)


def build_report(study: optuna.Study, reader: RunReader, out_dir: Path | str, block: int = 0) -> Path:
    """Write <out_dir>/index.html and <out_dir>/figures/*.png; returns the page's path."""
    out_dir = Path(out_dir)
    if (out_dir / FIG_DIR).is_dir():
        shutil.rmtree(out_dir / FIG_DIR)  # no stale figures from an earlier report
    figs = _Figures(out_dir)
    runs = trial_runs(study, reader)
    sections = [overview_section(study, runs)]
    if study.user_attrs.get("kind") == "ablation":
        sections.append(ablation_section(summarise([r for _, r in runs]), figs, block))
    best = None
    with contextlib.suppress(ValueError):  # no completed trial: no best trial
        best = next((r for t, r in runs if t.number == study.best_trial.number), None)
    sections.append(sweep_section(study, best, figs))
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(html.page(f"rpb-lab report: {study.study_name}", sections))
    return index


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpb-report", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--storage", help="Optuna journal file or database URL of the study")
    p.add_argument("--study", help="study name (optional when the storage holds one study)")
    p.add_argument("--out", help="output folder (default: reports/<study name>)")
    p.add_argument("--source", choices=("local", "wandb"), default="local", help="read runs from folders or W&B")
    p.add_argument("--runs-root", default=".", help="folder that relative run_dir paths start from")
    p.add_argument("--entity", help="W&B entity (--source wandb)")
    p.add_argument("--project", default="rpb-lab", help="W&B project (--source wandb)")
    p.add_argument("--block", type=int, default=0, help="block whose bias heatmaps the ablation compares")
    p.add_argument("--serve", choices=("optuna", "tensorboard"), help="start a local dashboard instead")
    p.add_argument("--logdir", help="folder of run folders for --serve tensorboard")
    p.add_argument("--host", default="127.0.0.1", help="address to bind --serve to (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port for --serve (default 8080 optuna, 6006 tensorboard)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dashboards import serve

    if args.serve == "tensorboard":
        if not args.logdir:
            raise SystemExit("--serve tensorboard needs --logdir, the folder of run folders (e.g. runs/sweeps/NAME).")
        return serve.serve(serve.tensorboard_command(args.logdir, args.host, args.port or 6006))
    if not args.storage:
        raise SystemExit("--storage is required: the study's journal file (runs/sweeps/NAME.journal) or a URL.")
    try:
        if args.serve == "optuna":
            return serve.serve(serve.optuna_dashboard_command(args.storage, args.host, args.port or 8080))
        study = load_study(args.storage, args.study)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.source == "wandb":
        from dashboards.wandb_reader import WandbRunReader

        reader: RunReader = WandbRunReader.from_public_api(args.entity, args.project)
    else:
        reader = LocalRunReader(args.runs_root)
    index = build_report(study, reader, args.out or Path("reports") / study.study_name, block=args.block)
    print(f"report written: {index}\nopen it with: xdg-open {index}  (or file://{index.resolve()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
