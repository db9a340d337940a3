"""rpb-report: a self-contained local HTML report of a study (sweep or ablation), plus local dashboards.

Examples:
    rpb-report --storage runs/sweeps/my-ablation.journal --out reports/my-ablation
    rpb-report --storage runs/sweeps/my-sweep.journal --source wandb --entity me --project rpb-lab
    rpb-report --serve optuna --storage runs/sweeps/my-sweep.journal          # http://127.0.0.1:8080
    rpb-report --serve tensorboard --logdir runs/sweeps/my-sweep               # http://127.0.0.1:6006
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import math
import re
import shutil
from pathlib import Path

import optuna
import yaml

from dashboards import figures, html
from dashboards.ablation import SettingSummary, summarise
from dashboards.load import (
    LocalRunReader,
    Results,
    RunData,
    RunReader,
    load_study,
    results,
    retried_from,
    trial_counts,
)

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


STATE_LABELS = {
    "complete": "complete",
    "pruned": "pruned",
    "fail": "failed",
    "running": "running",
    "waiting": "waiting",
}
ATTEMPT_WORDS = {  # user_attrs["status"] of a FAIL trial -> how the page says what happened to it
    "stale": "killed (its worker died)",
    "interrupted": "interrupted (Ctrl-C)",
    "failed": "failed",
    "duplicate": "duplicate",
}
COUNTS_RE = re.compile(r'<table class="counts" data-counts="([^"]*)"><caption>trials by state</caption>')


def report_counts(study: optuna.Study) -> dict[str, int]:
    """The trial counts the page shows, by state (complete, pruned, fail, running, waiting): the study's own."""
    return trial_counts(study)


def read_counts(index: Path | str) -> dict[str, int]:
    """The trial counts a written page shows (its ``data-counts`` attribute), e.g. to check them in a test."""
    match = COUNTS_RE.search(Path(index).read_text())
    if match is None:
        raise ValueError(f"{index} has no table of trial counts")
    return json.loads(html_lib.unescape(match.group(1)))


def _ranked(study: optuna.Study, complete: list[tuple[optuna.trial.FrozenTrial, RunData | None]]):
    """Complete results, best first (single objective); trial order for a multi-objective study."""
    if len(study.directions) != 1:
        return list(complete)
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(complete, key=lambda tr: (sign * tr[0].value, tr[0].number))


def _retries(study: optuna.Study, res: Results) -> dict[int, optuna.trial.FrozenTrial]:
    """Attempt number -> the trial that retried it: the one that became its cell's result, else the latest retry."""
    kept = {t.number for t in res.trials()}
    out: dict[int, optuna.trial.FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        for earlier in retried_from(trial):
            if earlier not in out or out[earlier].number not in kept:
                out[earlier] = trial
    return out


def _attempt_notes(study: optuna.Study, res: Results) -> tuple[list[str], list[list[object]]]:
    """Sentences about the FAIL trials (grouped by what happened to them) and one table row each."""
    retried = _retries(study, res)
    groups: dict[str, list[str]] = {}
    rows = []
    for trial in res.attempts:
        status = str(trial.user_attrs.get("status") or "failed")
        then = retried.get(trial.number)
        after = f"retried as trial {then.number} ({STATE_LABELS[then.state.name.lower()]})" if then else "not retried"
        groups.setdefault(status, []).append(f"trial {trial.number} {after}")
        rows.append([trial.number, status, trial.user_attrs.get("reason", ""), after])
    notes = []
    for status, items in groups.items():
        what = ATTEMPT_WORDS.get(status, f"failed (status {status!r})")
        n = len(items)
        notes.append(f"{n} attempt{'s' * (n != 1)} {what}: " + "; ".join(items) + ".")
    if notes:
        notes.append("Failed attempts are never results: they are counted here, never plotted, ranked or averaged.")
    return notes, rows


def overview_section(study: optuna.Study, res: Results) -> str:
    """The study's trial counts (as stored, by state), its results and what was left out of them and why."""
    kind = study.user_attrs.get("kind", "sweep")
    direction = ", ".join(d.name.lower() for d in study.directions)
    counts = res.counts
    read = len(res.runs("complete")) + len(res.runs("pruned"))
    facts = [
        ("study", study.study_name),
        ("kind", kind),
        ("direction", direction),
        ("trials", ", ".join(f"{counts[s]} {label}" for s, label in STATE_LABELS.items())),
        ("results", f"{len(res.complete)} complete (ranked), {len(res.pruned)} pruned (stopped early, listed apart)"),
        ("runs read", read),
    ]
    parts = [
        "<h2>Overview</h2>",
        html.table(None, facts, left=2),
        html.counts("trials by state", {s: counts[s] for s in STATE_LABELS}, STATE_LABELS),
        html.note(
            "One trial, one result: only complete trials are ranked and averaged; pruned trials were stopped early "
            "and are listed apart; failed, running and waiting trials are not results."
        ),
    ]
    notes, attempt_rows = _attempt_notes(study, res)
    parts += [html.note(n) for n in notes]
    if res.duplicates:
        dup = "; ".join(
            f"trial {t.number} ({t.state.name.lower()}) repeats trial {k.number}" for t, k in res.duplicates
        )
        parts.append(
            html.note(
                f"{len(res.duplicates)} trial(s) hold a cell that already has a result, so each cell "
                f"is counted once: {dup}."
            )
        )
    params = _param_names(res.trials())
    ranked = _ranked(study, res.complete)
    rows = [
        [i + 1, t.number, "" if t.value is None else _fmt(t.value), _run_status(r)]
        + [str(t.params.get(p, "")) for p in params]
        for i, (t, r) in enumerate(ranked)
    ]
    parts.append(f"<h3>Complete trials ({len(ranked)}, best first)</h3>")
    parts.append(html.table(["rank", "trial", "value", "run status", *params], rows, left=0))
    if res.pruned:
        pruned_rows = []
        for t, r in res.pruned:
            step = max(t.intermediate_values) if t.intermediate_values else None
            last = "" if step is None else _fmt(t.intermediate_values[step])
            pruned_rows.append(
                [t.number, "" if step is None else step, last, _run_status(r)]
                + [str(t.params.get(p, "")) for p in params]
            )
        parts.append(f"<h3>Pruned trials ({len(res.pruned)}): stopped early, not ranked, in no mean</h3>")
        parts.append(html.table(["trial", "stopped at step", "last value", "run status", *params], pruned_rows, left=0))
    if attempt_rows:
        parts.append(f"<h3>Failed attempts ({len(attempt_rows)}): not results</h3>")
        parts.append(html.table(["trial", "status", "reason", "what followed"], attempt_rows, left=0))
    return "\n".join(parts)


def _run_status(run: RunData | None) -> str:
    return "run not readable" if run is None else str(run.summary.get("status", ""))


def _param_names(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [p for p in t.params if p not in names]
    return names


def ablation_section(summaries: list[SettingSummary], figs: _Figures, block: int, res: Results | None = None) -> str:
    pruned = [t.number for t, _ in res.pruned] if res is not None else []
    which = f"trial{'s' * (len(pruned) != 1)} {', '.join(map(str, pruned))}"
    apart = (
        [
            html.note(
                f"{len(pruned)} pruned run{'s' * (len(pruned) != 1)} ({which}) stopped early: in no setting's "
                "seeds, mean or interval (see the pruned trials above)."
            )
        ]
        if pruned
        else []
    )
    if not summaries:
        return "\n".join(["<h2>Ablation</h2>", html.note("no complete runs with a readable run folder yet"), *apart])
    parts = ["<h2>Ablation: window size</h2>"]
    parts.append(
        html.note(
            "Each setting holds one complete run per seed (n): a killed attempt counts through its "
            "retry only, and pruned runs are left out."
        )
    )
    parts += apart
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


def best_result(study: optuna.Study, res: Results) -> tuple[optuna.trial.FrozenTrial, RunData | None] | None:
    """The best kept complete result (ties: the earlier trial); None without one."""
    if not res.complete or study._is_multi_objective():
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(res.complete, key=lambda tr: (sign * tr[0].value, -tr[0].number))


def sweep_section(study: optuna.Study, res: Results, figs: _Figures) -> str:
    """Optuna's plots (they read the study's COMPLETE trials; failed attempts never) and the best result."""
    params = _param_names(study.get_trials(deepcopy=False))
    slice_params = [p for p in params if "window" in p or p.split(".")[-1] in ("lr", "learning_rate")]
    drawn = figures.sweep_figures(study, slice_params)
    n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    n_pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    of = f" ({n_complete} complete trials)"
    captions = {
        "optimization_history": "optimisation history" + of,
        "param_importances": "parameter importances (Optuna's default evaluator; rough with few trials)" + of,
        "intermediate_values": f"intermediate values ({n_complete} complete, {n_pruned} pruned in red)",
        "parallel_coordinate": "parallel coordinates" + of,
        "slice": "slices: " + (", ".join(slice_params) or "all parameters") + of,
    }
    parts = [
        "<h2>Study</h2>",
        html.note(
            f"Drawn from the study's {n_complete} complete trials; Optuna's plots leave pruned trials out, "
            "the intermediate values show them apart in red; failed attempts are never drawn."
        ),
        '<div class="row">',
    ]
    parts += [figs.add(drawn[name], f"sweep_{name}", captions[name]) for name in captions]
    parts.append("</div>")
    found = best_result(study, res)
    if found is None:
        return "\n".join([*parts, html.note("no completed trial yet, so no best trial")])
    trial, best = found
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
    """Write <out_dir>/index.html and <out_dir>/figures/*.png; returns the page's path.

    Everything on the page reads `dashboards.load.results` (one trial, one result); the trial counts are the
    study's own (`report_counts`, readable back with `read_counts`).
    """
    out_dir = Path(out_dir)
    if (out_dir / FIG_DIR).is_dir():
        shutil.rmtree(out_dir / FIG_DIR)  # no stale figures from an earlier report
    figs = _Figures(out_dir)
    res = results(study, reader)
    sections = [overview_section(study, res)]
    if study.user_attrs.get("kind") == "ablation":
        sections.append(ablation_section(summarise([r for _, r in res.runs("complete")]), figs, block, res))
    sections.append(sweep_section(study, res, figs))
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
