"""rpb-wandb-workspace: the W&B sweep workspace and ablation report as code (wandb-workspaces).

Offline (the default) it writes the definitions to a JSON file and prints how to publish them later; with
``--publish`` (and a W&B login) it saves the workspace view and the report to the entity/project.

    rpb-wandb-workspace --out runs/wandb_dashboards.json --group my-ablation
    WANDB_API_KEY=... rpb-wandb-workspace --publish --entity me --project rpb-lab --group my-ablation \\
        --storage runs/sweeps/my-ablation.journal       # the report opens with the ablation's verdict table

The keys below are the ones training logs (experiments.train, experiments.tracking): per-step ``train/*`` against
``global_step``, per-epoch metrics against ``epoch``, images ``bias/block_{i}``, summary ``best_val_accuracy``.
Sweep and ablation runs carry the full resolved config (``model.rpb.window_size``, ``optim.lr``, ...); ablation
runs also carry the flat keys ``window_size``, ``bias_type``, ``mode``, ``seed`` and ``ablation`` (sweeps.ablate).

One trial, one result (as `dashboards.load.results`): the run sets hold only runs whose summary ``status`` (written
by the tracker when training ends, ``experiments.train``) is a completed one. A killed attempt never wrote it (its
retry is a new run of the same trial), an interrupted or failed run wrote ``interrupted``/``failed``: all left out.
Pruned (and diverged) runs are not mixed into the means and rankings either; the ablation report shows them apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dashboards.ablation import DEFAULT_BASELINE, Verdict, study_metric, summarise, verdict
from dashboards.cli_parser import ToolParser
from dashboards.load import load_study, results
from dashboards.runs import LocalRunReader
from experiments.launch import EXIT_CONFIG
from sweeps.ablation.stats import METHOD
from sweeps.record import COMPLETE_STATUSES, PRUNED_STATUSES, StudyAttr

EPOCH_X, STEP_X = "epoch", "global_step"
TARGET = "best_val_accuracy"  # W&B summary key kept by the tracker (max of val_accuracy)
SWEEP_PARAMS = ("optim.lr", "optim.weight_decay", "model.drop_rate", "model.rpb.init_std")  # conf/sweep/default.yaml
WINDOW = "model.rpb.window_size"  # the searched config path (a list in the run config)
WINDOW_LABEL = "window_size"  # the flat "7x7" every trial and ablation run also carries: what panels group by
# train()'s final status, kept in the W&B summary by the tracker's finish() (also as "state"; "status" is used here
# because wandb-workspaces prints a summary key "state" as W&B's own run State when it shows a filter).
STATUS = "status"


def status_filter(statuses: Sequence[str]) -> str:
    """A run-set filter expression: the runs whose summary status is one of `statuses` (wandb-workspaces syntax)."""
    return f"SummaryMetric('{STATUS}') in [{', '.join(repr(str(s)) for s in statuses)}]"


COMPLETED = status_filter(COMPLETE_STATUSES)  # one run per trial: the attempt that completed
STOPPED_EARLY = status_filter(PRUNED_STATUSES)


def runs_filter(group: str | None, statuses: str = COMPLETED) -> str:
    """The filter of a run set: the study's W&B group (None: any) and a status filter."""
    return " and ".join(f for f in (f"Metric('group') = '{group}'" if group else "", statuses) if f)


def _modules():
    with warnings.catch_warnings():  # the library still declares pydantic-v1 validators
        warnings.simplefilter("ignore", DeprecationWarning)
        # wandb-workspaces is optional and slow to import: deferred on purpose, to when definitions are built.
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws

    return wr, ws


def heatmap_keys(depth: int) -> list[str]:
    return [f"bias/block_{i}" for i in range(depth)]


def _curves(wr, groupby) -> list:
    """Loss/accuracy curves; grouped lines show the mean over runs with a standard-error band."""
    group = dict(groupby=groupby, groupby_aggfunc="mean", groupby_rangefunc="stderr") if groupby else {}
    return [
        wr.LinePlot(title="validation accuracy", x=EPOCH_X, y=["val_accuracy"], **group),
        wr.LinePlot(title="validation loss", x=EPOCH_X, y=["val_loss"], **group),
        wr.LinePlot(title="training loss (epoch)", x=EPOCH_X, y=["train_loss"], **group),
        wr.LinePlot(title="training loss (step)", x=STEP_X, y=["train/loss"], smoothing_type="exponential"),
        wr.LinePlot(title="learning rate", x=STEP_X, y=["train/lr"]),
        wr.LinePlot(title="gradient norm", x=STEP_X, y=["train/grad_norm"]),
    ]


def sweep_workspace(
    entity: str, project: str, study_name: str | None = None, params: Sequence[str] = SWEEP_PARAMS, depth: int = 3
):
    """The workspace of a sweep: parallel coordinates, importances, accuracy by window size, heatmaps, losses.

    Its run set holds the completed runs only (`COMPLETED`): one per trial, no killed attempt, no pruned run.

    Args:
        study_name: restrict the runs to one study (its W&B group); None shows every run of the project.
        params: config paths of the searched hyperparameters (the sweep's `space`).
        depth: model depth, i.e. how many `bias/block_{i}` image keys there are.
    """
    wr, ws = _modules()
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in (*params, WINDOW_LABEL)]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(TARGET)))
    by_window = wr.Config(WINDOW_LABEL)
    sections = [
        ws.Section(
            name="Search",
            is_open=True,
            panels=[
                wr.ParallelCoordinatesPlot(title="hyperparameters vs best validation accuracy", columns=columns),
                wr.ParameterImportancePlot(with_respect_to=TARGET),
                wr.BarPlot(
                    title="best validation accuracy by window size",
                    metrics=[wr.SummaryMetric(TARGET)],
                    groupby=by_window,
                    groupby_aggfunc="mean",
                    groupby_rangefunc="stderr",
                ),
            ],
        ),
        ws.Section(name="By window size", is_open=True, panels=_curves(wr, by_window)[:3]),
        ws.Section(
            name="Relative position bias",
            is_open=True,
            panels=[wr.MediaBrowser(title="bias heatmaps", media_keys=heatmap_keys(depth), num_columns=depth)],
        ),
        ws.Section(name="Training", panels=_curves(wr, None)),
    ]
    runsets = ws.RunsetSettings(filters=runs_filter(study_name))
    name = f"sweep {study_name}" if study_name else "rpb-lab sweeps"
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections, runset_settings=runsets)


def verdict_markdown(result: Verdict) -> str:
    """The verdict table as Markdown (what the W&B report shows at its top), or the sentence saying why none."""
    if result.baseline is None:
        return f"No verdict: {result.problem}."
    lines = [
        f"Each setting against **{result.baseline.label}** (`{result.baseline.key}`), best validation accuracy.",
        "",
        "| " + " | ".join(result.header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(result.header) - 2) + [":---"]) + "|",
        *("| " + " | ".join(row) + " |" for row in result.rows),
        "",
        METHOD,
    ]
    return "\n".join(lines)


def ablation_report(
    entity: str,
    project: str,
    group: str,
    depth: int = 3,
    *,
    runset_project: bool = True,
    verdict: Verdict | None = None,
):
    """The report of one ablation: its verdict table first, then the runs of the group, grouped by window size and
    bias type (mean over seeds).

    The means are over the completed runs only (`COMPLETED`: one per trial); the runs stopped early (pruned or
    diverged) are in a run set and panel grid of their own below, never in the means.

    Args:
        runset_project: point the run set at entity/project (W&B looks the project up, so only when online).
        verdict: the study's verdict (`dashboards.ablation.verdict`, computed from the study); W&B panels cannot
            pair seeds or correct for several comparisons, so without it the report says how to add it.
    """
    wr, _ = _modules()
    where = dict(entity=entity, project=project) if runset_project else {}
    runset = wr.Runset(
        name=f"ablation {group}",
        filters=runs_filter(group),
        groupby=["config.window_size", "config.bias_type", "config.mode", "config.pos_embed"],
        **where,
    )
    stopped = wr.Runset(name=f"ablation {group}: stopped early", filters=runs_filter(group, STOPPED_EARLY), **where)
    panels = [
        wr.BarPlot(
            title="best validation accuracy (mean ± stderr over seeds)",
            metrics=[wr.SummaryMetric(TARGET)],
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
        ),
        *_curves(wr, wr.Config("window_size"))[:3],
        wr.MediaBrowser(title="learned bias per block", media_keys=heatmap_keys(depth), num_columns=depth),
        wr.RunComparer(diff_only="split"),
    ]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"Window-size ablation: {group}",
        description="Validation accuracy, learning curves and learned relative position bias per window size.",
        blocks=[
            wr.H1(f"Window-size ablation {group}"),
            wr.H2("Verdict"),
            wr.MarkdownBlock(
                text=verdict_markdown(verdict)
                if verdict is not None
                else f"Write the verdict here with `rpb-wandb-workspace --storage runs/sweeps/{group}.journal "
                f"--group {group} --publish ...` (it reads the study and compares every setting with the baseline)."
            ),
            wr.P(
                "Runs are grouped by window size, bias type, mode and position embedding; curves are the mean over seeds. Only completed "
                "runs are shown, one per trial: a killed attempt's run and runs stopped early are left out."
            ),
            wr.PanelGrid(runsets=[runset], panels=panels),
            wr.H2("Stopped early"),
            wr.P("Runs that were pruned or diverged: shown apart, in no mean above."),
            wr.PanelGrid(
                runsets=[stopped],
                panels=[
                    wr.LinePlot(title="validation accuracy (runs stopped early)", x=EPOCH_X, y=["val_accuracy"]),
                    wr.RunComparer(diff_only="split"),
                ],
            ),
            wr.H2("Local report"),
            wr.MarkdownBlock(
                text=f"`rpb-report --storage runs/sweeps/{group}.journal` writes the same verdict with accuracy "
                "beside cost (parameters, images/s, wall time) and the learned biases to one file, "
                "`reports/<study>/index.html`."
            ),
        ],
    )


def _panels(obj: Any) -> Iterable[Any]:
    for section in getattr(obj, "sections", []):
        yield from section.panels
    for block in getattr(obj, "blocks", []):
        yield from getattr(block, "panels", [])


def _name(metric: Any) -> tuple[str, str]:
    """(kind, key) of a panel's metric: history keys are bare strings, config/summary keys are typed."""
    kind = type(metric).__name__
    return ("history", metric) if isinstance(metric, str) else (kind.lower().replace("metric", ""), metric.name)


def plotted_keys(*definitions: Any) -> dict[str, set[str]]:
    """Every key the definitions read, by kind: "history" (logged series and media), "config", "summary" (the keys
    the run sets' filters compare included)."""
    out: dict[str, set[str]] = {"history": set(), "config": set(), "summary": set()}
    for panel in (p for d in definitions for p in _panels(d)):
        metrics: list[Any] = []
        metrics += list(getattr(panel, "y", []) or []) + list(getattr(panel, "metrics", []) or [])
        metrics += [c.metric for c in getattr(panel, "columns", []) or []]
        metrics += list(getattr(panel, "media_keys", []) or [])
        if getattr(panel, "with_respect_to", None):
            metrics.append(panel.with_respect_to)  # a summary key: W&B relates it to the config
        if isinstance(getattr(panel, "x", None), str) and panel.x != "Step":
            metrics.append(panel.x)
        if getattr(panel, "groupby", None) is not None and not isinstance(panel.groupby, str):
            metrics.append(panel.groupby)
        for metric in metrics:
            kind, key = _name(metric)
            out["summary" if key == TARGET and kind == "history" else kind].add(key)
    for runset in (r for d in definitions for b in getattr(d, "blocks", []) for r in getattr(b, "runsets", [])):
        for group in runset.groupby:  # "config.window_size" -> a config key
            section, _, key = group.partition(".")
            out[section].add(key)
    for section, key in filter_keys(*definitions):
        if section in ("config", "summary"):  # "run" keys (group, state) are W&B's own
            out[section].add(key)
    return out


def run_filters(*definitions: Any) -> list[str]:
    """The filter expression of every run set of the definitions (workspace run set, report run sets)."""
    out = [d.runset_settings.filters for d in definitions if getattr(d, "runset_settings", None) is not None]
    out += [r.filters for d in definitions for b in getattr(d, "blocks", []) for r in getattr(b, "runsets", [])]
    return out


def filter_keys(*definitions: Any) -> set[tuple[str, str]]:
    """(section, key) of every key the run sets' filters compare, e.g. ("summary", "status")."""
    from wandb_workspaces import expr  # optional: deferred on purpose, as in _modules

    def leaves(node) -> Iterable[Any]:
        if node.key is not None:
            yield node
        for child in node.filters or []:
            yield from leaves(child)

    return {
        (f.key.section, f.key.name) for text in run_filters(*definitions) for f in leaves(expr.expr_to_filters(text))
    }


def definitions(
    entity: str,
    project: str,
    group: str,
    depth: int,
    study: str | None = None,
    online: bool = False,
    verdict: Verdict | None = None,
) -> tuple[Any, Any]:
    """The sweep workspace (all runs, or one study's) and the ablation report of `group` (with its verdict)."""
    workspace = sweep_workspace(entity, project, study, depth=depth)
    return workspace, ablation_report(entity, project, group, depth=depth, runset_project=online, verdict=verdict)


def study_verdict(storage: str, study_name: str, runs_root: str = ".", baseline: str | None = None) -> Verdict:
    """The verdict of the ablation study `study_name` in `storage`, from its run folders (`rpb-report`'s own).

    Raises:
        ValueError: the storage or the study cannot be found, or the study is not an ablation.
    """
    study = load_study(storage, study_name)
    if study.user_attrs.get(StudyAttr.KIND) != "ablation":
        raise ValueError(f"study {study_name!r} is not an ablation, so it has no verdict; pass the ablation's --group.")
    runs = [r for _, r in results(study, LocalRunReader(runs_root)).runs("complete")]
    metric = study_metric(study)
    name = baseline or study.user_attrs.get(StudyAttr.BASELINE) or DEFAULT_BASELINE
    return verdict(summarise(runs, *metric), name, *metric)


def to_json(workspace: Any, report: Any) -> dict[str, Any]:
    """The definitions as W&B's own view specs (what `save()` would upload), built without network."""
    dump = dict(by_alias=True, exclude_none=True, mode="json")
    return {
        "workspace": workspace._to_model().model_dump(**dump),
        "report": report._to_model().model_dump(**dump),
        "plotted_keys": {k: sorted(v) for k, v in plotted_keys(workspace, report).items()},
    }


def _publish(args, result) -> int:
    """Save the workspace and the report to W&B: one sentence (exit 2 without credentials, 1 when W&B refuses or
    cannot be reached) instead of wandb's traceback."""
    import wandb  # optional and slow to import: deferred on purpose, only --publish needs it

    if not wandb.login(prompt=False, verify=False):
        print("rpb-wandb-workspace: error: --publish found no W&B credentials: run `wandb login` or set "
              "WANDB_API_KEY (or leave out --publish to write the definitions to a file).", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    try:
        workspace, report = definitions(
            args.entity, args.project, args.group, args.depth, args.study, online=True, verdict=result
        )
        workspace.save()
        report.save()
    except (wandb.errors.Error, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"rpb-wandb-workspace: error: W&B did not save the workspace ({type(err).__name__}: {first}); check "
              "the API key, --entity and the network, or leave out --publish to write a file.", file=sys.stderr)  # fmt: skip
        return 1
    print(f"workspace: {workspace.url}\nreport: {report.url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    purpose, _, doc = __doc__.partition("\n\n")  # the purpose line heads the help, the rest follows the usage
    p = ToolParser("rpb-wandb-workspace", purpose.removeprefix("rpb-wandb-workspace: "), description=doc,
                   formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B entity (user or team)")
    p.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "rpb-lab"), help="W&B project")
    p.add_argument("--group", default="rpb-ablate", help="the ablation's study name (its runs' W&B group)")
    p.add_argument("--study", help="show only this sweep's runs in the workspace (default: every run)")
    p.add_argument("--depth", type=int, default=3, help="model depth: number of bias/block_{i} image keys")
    p.add_argument("--publish", action="store_true", help="save to W&B (needs a login); default: write a file")
    p.add_argument("--out", default="runs/wandb_dashboards.json", help="file for the offline definitions")
    p.add_argument("--storage", help="the ablation's study storage (journal file or URL): puts its verdict on top")
    p.add_argument("--runs-root", default=".", help="folder that relative run_dir paths start from (--storage)")
    p.add_argument("--baseline", help="the verdict's baseline (default: the study's ablation.baseline, else none)")
    args = p.parse_args(argv)
    result = None
    if args.storage:
        try:
            result = study_verdict(args.storage, args.group, args.runs_root, args.baseline)
        except ValueError as err:
            print(f"rpb-wandb-workspace: error: {err}", file=sys.stderr)
            return EXIT_CONFIG
    if args.publish:
        if not args.entity:
            raise SystemExit("--entity is required with --publish (or set WANDB_ENTITY): the user or team to save to.")
        return _publish(args, result)
    entity = args.entity or "YOUR_ENTITY"
    workspace, report = definitions(entity, args.project, args.group, args.depth, args.study, verdict=result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(workspace, report), indent=1))
    print(
        f"definitions written to {out} (offline; nothing uploaded).\n"
        f"publish later: wandb login && rpb-wandb-workspace --publish --entity <entity> --project {args.project} "
        f"--group {args.group} --depth {args.depth}" + (f" --storage {args.storage}" if args.storage else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
