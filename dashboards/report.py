"""rpb-report: write a study's report (sweep or ablation) as one HTML file, or serve a local dashboard.

The page (reports/<study>/index.html; reports/<study>-vs-<baseline>/ with --baseline) carries its plots inside it:
copy or mail it alone. A folder holding the report of another study or baseline is not written over without
--force; the same command again refreshes its own report. An ablation's page
opens with the verdict of every setting against the baseline (--baseline; default: the study's
ablation.baseline, else "none", no position information).

Examples:
    rpb-report --storage runs/sweeps/my-ablation.journal --out reports/my-ablation
    rpb-report --storage runs/sweeps/rpb-ablate.journal --baseline 2d-3x3            # compare with 3x3 instead
    rpb-report --storage runs/sweeps/my-sweep.journal --source wandb --entity me --project rpb-lab
    rpb-report --serve optuna --storage runs/sweeps/my-sweep.journal          # http://127.0.0.1:8080
    rpb-report --serve tensorboard --logdir runs/sweeps/my-sweep               # http://127.0.0.1:6006
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import shutil
import sys
from pathlib import Path

import optuna
import yaml

from dashboards import figures, html, serve
from dashboards.ablation import DEFAULT_BASELINE, study_metric, summarise, verdict
from dashboards.ablation_page import ablation_section, verdict_section
from dashboards.cells import retried_from
from dashboards.cli_parser import ToolParser
from dashboards.figures import PageFigures
from dashboards.load import Results, load_study, results, trial_counts
from dashboards.runs import LocalRunReader, RunData, RunReader
from dashboards.wandb_reader import WandbRunReader
from experiments.launch import EXIT_CONFIG
from sweeps.format import format_number, short_names
from sweeps.record import DUPLICATE, FAILED, INTERRUPTED, STALE, StudyAttr, TrialAttr

OLD_FIG_DIR = "figures"  # where reports before the one-file page kept their images: removed on rewrite


def _fmt(value: float, digits: int = 4) -> str:
    """A metric value at `digits` significant digits ("n/a" when missing)."""
    return format_number(value, digits)


STATE_LABELS = {
    "complete": "complete",
    "pruned": "pruned",
    "fail": "failed",
    "running": "running",
    "waiting": "waiting",
}
ATTEMPT_WORDS = {  # user_attrs["status"] of a FAIL trial -> how the page says what happened to it
    STALE: "killed (its worker died)",
    INTERRUPTED: "interrupted (Ctrl-C)",
    FAILED: "failed",
    DUPLICATE: "duplicate",
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
        status = str(trial.user_attrs.get(TrialAttr.STATUS) or FAILED)
        then = retried.get(trial.number)
        after = f"retried as trial {then.number} ({STATE_LABELS[then.state.name.lower()]})" if then else "not retried"
        groups.setdefault(status, []).append(f"trial {trial.number} {after}")
        rows.append([trial.number, status, trial.user_attrs.get(TrialAttr.REASON, ""), after])
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
    kind = study.user_attrs.get(StudyAttr.KIND, "sweep")
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
    names = short_names(params)
    ablation = kind == "ablation"
    ranked = list(res.complete) if ablation else _ranked(study, res.complete)  # seeds are not ranked
    rows = [
        ([] if ablation else [i + 1])
        + [t.number, "" if t.value is None else _fmt(t.value), _run_status(r)]
        + [format_number(t.params.get(p, "")) for p in params]
        for i, (t, r) in enumerate(ranked)
    ]
    tables = [f"<h3>Complete trials ({len(ranked)}{'' if ablation else ', best first'})</h3>"]
    head = ([] if ablation else ["rank"]) + ["trial", "value", "run status"]
    tables.append(html.table([*head, *names], rows, left=0, titles=[*([""] * len(head)), *params]))
    if res.pruned:
        pruned_rows = []
        for t, r in res.pruned:
            step = max(t.intermediate_values) if t.intermediate_values else None
            last = "" if step is None else _fmt(t.intermediate_values[step])
            pruned_rows.append(
                [t.number, "" if step is None else step, last, _run_status(r)]
                + [format_number(t.params.get(p, "")) for p in params]
            )
        tables.append(f"<h3>Pruned trials ({len(res.pruned)}): stopped early, not ranked, in no mean</h3>")
        head = ["trial", "stopped at step", "last value", "run status"]
        tables.append(html.table([*head, *names], pruned_rows, left=0, titles=[*([""] * len(head)), *params]))
    if attempt_rows:
        tables.append(f"<h3>Failed attempts ({len(attempt_rows)}): not results</h3>")
        tables.append(html.table(["trial", "status", "reason", "what followed"], attempt_rows, left=0))
    if ablation:  # the settings' tables below say what the runs mean; the runs themselves are one click away
        return "\n".join([*parts, html.details(f"every run of the ablation ({len(ranked)} complete)", "".join(tables))])
    return "\n".join(parts + tables)


def _run_status(run: RunData | None) -> str:
    return "run not readable" if run is None else str(run.summary.get("status", ""))


def _param_names(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [p for p in t.params if p not in names]
    return names


def best_result(study: optuna.Study, res: Results) -> tuple[optuna.trial.FrozenTrial, RunData | None] | None:
    """The best kept complete result (ties: the earlier trial); None without one."""
    if not res.complete or len(study.directions) > 1:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(res.complete, key=lambda tr: (sign * tr[0].value, -tr[0].number))


def sweep_section(study: optuna.Study, res: Results, figs: PageFigures) -> str:
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
    kept = sorted([*res.runs("complete"), *res.runs("pruned")], key=lambda tr: tr[0].number)
    parts.append(figs.add(figures.trial_curves(kept), "sweep_trial_curves",
                          f"validation curves of the {len(kept)} kept trials (complete and pruned), by trial number"))  # fmt: skip
    parts.append("</div>")
    found = best_result(study, res)
    if found is None:
        return "\n".join([*parts, html.note("no completed trial yet, so no best trial")])
    trial, best = found
    parts.append(f"<h3>Best trial: #{trial.number}, value {_fmt(trial.value)}</h3>")
    parts.append(
        html.table(["parameter", "value"], sorted((k, format_number(v)) for k, v in trial.params.items()), left=2)
    )
    if best is None:
        return "\n".join([*parts, html.note("the best trial's run folder could not be read")])
    parts.append(
        html.details(
            f"training config of trial {trial.number} (YAML)",
            "<pre>" + html.esc(yaml.safe_dump(best.config, sort_keys=False)) + "</pre>",
        )
    )
    maps = best.offset_maps() or {}
    blocks = sorted(maps) or sorted(best.heatmap_images)
    row = figs.heatmaps([(best, b, f"best_block_{b:02d}", f"best trial, block {b}") for b in blocks])
    parts.append('<div class="heatmaps">' + "".join(r for r in row if r) + "</div>")
    return "\n".join(parts)


def build_report(
    study: optuna.Study, reader: RunReader, out_dir: Path | str, block: int = 0, baseline: str | None = None
) -> Path:
    """Write <out_dir>/index.html, one file with its plots inside; returns its path.

    A sweep's page: overview, Optuna's plots, the best trial. An ablation's page: the verdict table first (each
    setting against `baseline`, default the study's ``baseline`` attribute, else "none"), accuracy beside cost,
    the plots that compare settings, heatmaps; no plot that would rank the seeds as a hyperparameter.
    Everything on the page reads `dashboards.load.results` (one trial, one result); the trial counts are the
    study's own (`report_counts`, readable back with `read_counts`).
    """
    out_dir = Path(out_dir)
    if (out_dir / OLD_FIG_DIR).is_dir():
        shutil.rmtree(out_dir / OLD_FIG_DIR)  # the side folder of an older report: the page needs none now
    figs = PageFigures()
    res = results(study, reader)
    if study.user_attrs.get(StudyAttr.KIND) == "ablation":
        metric = study_metric(study)
        summaries = summarise([r for _, r in res.runs("complete")], *metric)
        name = baseline or study.user_attrs.get(StudyAttr.BASELINE) or DEFAULT_BASELINE
        sections = [
            verdict_section(verdict(summaries, name, *metric)),
            ablation_section(summaries, figs, block, res),
            overview_section(study, res),
        ]
    else:
        sections = [overview_section(study, res), sweep_section(study, res, figs)]
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(html.page(f"rpb-lab report: {study.study_name}", sections))
    (out_dir / REPORT_STAMP).write_text(json.dumps({"study": study.study_name, "baseline": baseline}))
    return index


def _parser() -> argparse.ArgumentParser:
    purpose, _, doc = __doc__.split("\n", 2)  # the purpose line heads the help, the rest follows the usage
    p = ToolParser("rpb-report", purpose.removeprefix("rpb-report: "), description=doc,
                   formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--storage", help="Optuna journal file or database URL of the study")
    p.add_argument("--study", help="study name (optional when the storage holds one study)")
    p.add_argument("--out", help="output folder (default: reports/<study name>)")
    p.add_argument("--force", action="store_true", help="write over a report of another study or baseline in --out")
    p.add_argument("--baseline", help="ablation: the setting every other one is compared with (none, abs, 2d-7x7, ...)")
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


def _fail(message: str) -> int:
    print(f"rpb-report: error: {message}", file=sys.stderr)
    return EXIT_CONFIG


REPORT_STAMP = "report.json"  # beside index.html: the study and baseline it was made for


def default_out_dir(study_name: str, baseline: str | None) -> Path:
    """reports/<study>, or reports/<study>-vs-<baseline> for an ablation against a named baseline: a report
    against another baseline gets a folder of its own instead of overwriting the last one."""
    return Path("reports") / (f"{study_name}-vs-{baseline}" if baseline else study_name)


def _describe(made_for: dict) -> str:
    against = f" against {made_for['baseline']}" if made_for.get("baseline") else ""
    return f"the report of study {made_for.get('study')!r}{against}"


def main(argv: list[str] | None = None) -> int:
    """`rpb-report [options]`; returns the exit status (2 and one sentence on stderr for a mistake)."""
    args = _parser().parse_args(argv)
    if args.serve == "tensorboard" and not args.logdir:
        return _fail("--serve tensorboard needs --logdir, the folder of run folders (e.g. runs/sweeps/NAME).")
    if args.serve != "tensorboard" and not args.storage:
        return _fail("--storage is required: the study's journal file (runs/sweeps/NAME.journal) or a URL.")
    try:
        if args.serve == "tensorboard":
            return serve.serve(serve.tensorboard_command(args.logdir, args.host, args.port or 6006))
        if args.serve == "optuna":
            return serve.serve(serve.optuna_dashboard_command(args.storage, args.host, args.port or 8080))
        study = load_study(args.storage, args.study)
    except (ValueError, TimeoutError) as err:  # a missing study or tool, a server that never answered
        return _fail(str(err))
    if args.source == "wandb":
        reader: RunReader = WandbRunReader.from_public_api(args.entity, args.project)
    else:
        reader = LocalRunReader(args.runs_root)
    if args.baseline and study.user_attrs.get(StudyAttr.KIND) != "ablation":
        return _fail(
            f"--baseline is for ablations; study {study.study_name!r} is a {study.user_attrs.get(StudyAttr.KIND, 'sweep')}."
        )
    out = Path(args.out) if args.out else default_out_dir(study.study_name, args.baseline)
    made_for = {"study": study.study_name, "baseline": args.baseline}
    stamp = out / REPORT_STAMP
    if (out / "index.html").is_file() and not args.force:
        previous = json.loads(stamp.read_text()) if stamp.is_file() else None
        if previous != made_for:
            what = "another report" if previous is None else _describe(previous)
            return _fail(f"{out} holds {what}: pass --out with another folder, or --force to write over it.")
    index = build_report(study, reader, out, args.block, args.baseline)
    print(f"report written: {index} (one file: open it, copy it or mail it as it is)\nopen it with: xdg-open {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
