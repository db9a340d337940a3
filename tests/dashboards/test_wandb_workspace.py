"""The W&B workspace and report definitions, checked offline: panel kinds and the keys they read."""

import json

import pytest
from omegaconf import OmegaConf

from dashboards.wandb_workspace import ablation_report, main, plotted_keys, run_filters, sweep_workspace, to_json
from experiments.config import compose_config

# The contract's logged keys (rpb_contract.md, "Training"), written out here independently of the module.
STEP_KEYS = {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "global_step"}
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"}
SUMMARY_KEYS = {"best_val_accuracy", "state", "status", "reason"}  # the tracker's finish(): train()'s final status
# sweeps.ablation.grid.run_factors
ABLATION_CONFIG_KEYS = {"window_size", "bias_type", "mode", "pos_embed", "seed", "ablation"}


def _kinds(panels) -> list[str]:
    return [type(p).__name__ for p in panels]


def test_sweep_workspace_has_the_panels_the_issue_asks_for():
    workspace = sweep_workspace("me", "rpb-lab", "my-sweep", depth=4)
    panels = [p for s in workspace.sections for p in s.panels]
    kinds = _kinds(panels)
    for kind in ("ParallelCoordinatesPlot", "ParameterImportancePlot", "MediaBrowser", "LinePlot", "BarPlot"):
        assert kind in kinds
    grouped = [p for p in panels if type(p).__name__ == "LinePlot" and p.groupby is not None]
    assert {p.y[0] for p in grouped} >= {"val_accuracy"}
    assert all(p.groupby.name == "window_size" and p.groupby_aggfunc == "mean" for p in grouped)
    media = next(p for p in panels if type(p).__name__ == "MediaBrowser")
    assert media.media_keys == [f"bias/block_{i}" for i in range(4)]
    assert workspace.runset_settings.filters == (
        "Metric('group') = 'my-sweep' and SummaryMetric('status') in ['completed', 'early_stopped']"
    )


def test_ablation_report_groups_runs_by_the_ablation_factors():
    report = ablation_report("me", "rpb-lab", "abl", runset_project=False)
    grid = next(b for b in report.blocks if type(b).__name__ == "PanelGrid")
    assert grid.runsets[0].groupby == ["config.window_size", "config.bias_type", "config.mode", "config.pos_embed"]
    assert grid.runsets[0].filters == (
        "Metric('group') = 'abl' and SummaryMetric('status') in ['completed', 'early_stopped']"
    )
    assert {"BarPlot", "LinePlot", "MediaBrowser", "RunComparer"} <= set(_kinds(grid.panels))


def test_plotted_keys_are_keys_training_logs():
    keys = plotted_keys(
        sweep_workspace("me", "p", depth=6), ablation_report("me", "p", "g", depth=6, runset_project=False)
    )
    images = {f"bias/block_{i}" for i in range(6)}
    assert keys["history"] <= STEP_KEYS | EPOCH_KEYS | images
    assert keys["summary"] <= SUMMARY_KEYS
    # Config keys: paths of the real composed sweep config, or the flat keys trials and rpb-ablate add.
    flat = set(_flatten(OmegaConf.to_container(compose_config([], config_name="sweep"))))
    assert keys["config"] <= flat | ABLATION_CONFIG_KEYS
    assert {"optim.lr", "window_size", "bias_type"} <= keys["config"]


def test_default_columns_are_the_sweep_space():
    from dashboards.wandb_workspace import SWEEP_PARAMS, WINDOW

    space = OmegaConf.to_container(compose_config([], config_name="sweep").sweep.space)
    paths = {p.rsplit(".", 1)[0] for p in _flatten(space) if p.endswith(".type")}
    assert set(SWEEP_PARAMS) | {WINDOW} == paths


def _flatten(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_definitions_serialise_offline_to_wandb_view_specs(tmp_path, capsys):
    out = tmp_path / "defs.json"
    assert main(["--out", str(out), "--group", "abl", "--depth", "2", "--study", "swp"]) == 0
    assert "rpb-wandb-workspace --publish --entity <entity>" in capsys.readouterr().out
    spec = json.loads(out.read_text())
    sections = spec["workspace"]["spec"]["section"]["panelBankConfig"]["sections"]
    view_types = {p["viewType"] for s in sections for p in s["panels"]}
    assert {"Parallel Coordinates Plot", "Parameter Importance", "Media Browser", "Run History Line Plot"} <= view_types
    assert "swp" in json.dumps(spec["workspace"]["spec"]["section"]["runSets"][0]["filters"])
    blocks = spec["report"]["spec"]["blocks"]
    assert any(b.get("type") == "panel-grid" for b in blocks)
    assert spec["plotted_keys"]["history"][:2] == ["bias/block_0", "bias/block_1"]


def test_publish_needs_an_entity(monkeypatch):
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    with pytest.raises(SystemExit, match="--entity is required with --publish"):
        main(["--publish"])


def test_to_json_needs_no_login(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    spec = to_json(sweep_workspace("me", "p"), ablation_report("me", "p", "g", runset_project=False))
    assert spec["report"]["displayName"] == "Window-size ablation: g"


# --- One trial, one result: the run sets hold one run per trial, the completed one --------------------------------


def _matches(tree, run: dict) -> bool:
    """Evaluate a wandb-workspaces filter tree on a run given as {"run": {...}, "summary": {...}, "config": {...}}
    (a missing key matches no comparison, as on W&B)."""
    if tree.key is None:
        parts = [_matches(f, run) for f in tree.filters or []]
        return all(parts) if tree.op == "AND" else any(parts)
    section = run.get(tree.key.section, {})
    if tree.key.name not in section:
        return False
    value = section[tree.key.name]
    return {"=": value == tree.value, "!=": value != tree.value, "IN": value in tree.value}[tree.op]


def _wandb_run(tracker_state: str | None, group: str = "abl") -> dict:
    """A W&B run of a trial as `WandbTracker` leaves it: finish(state, summary=train()'s result) writes the summary's
    status (and state); a run whose worker was SIGKILLed never reached finish()."""
    from experiments.trackers.wandb_tracker import WandbTracker

    class FakeRun:
        def __init__(self):
            self.summary, self.tags = {"best_val_accuracy": 0.5}, ()

        def finish(self, exit_code=0):
            self.exit_code = exit_code

    tracker = WandbTracker()
    run = tracker.run = FakeRun()
    tracker._history_keys = {"val_accuracy", "val_loss", "train_loss"}
    if tracker_state is not None:
        result = {"status": tracker_state, "reason": "", "best_val_accuracy": 0.5, "epochs_run": 2, "val_loss": 1.0}
        tracker.finish(tracker_state, summary=result)
    return {"run": {"group": group}, "summary": dict(run.summary), "config": {}}


@pytest.mark.parametrize(
    "state, shown, stopped_early",
    [
        ("completed", True, False),
        ("early_stopped", True, False),
        (None, False, False),  # the killed attempt: its retry is another run of the same trial
        ("interrupted", False, False),
        ("failed", False, False),
        ("pruned", False, True),
        ("diverged", False, True),
    ],
)
def test_run_sets_hold_the_completed_run_of_each_trial(state, shown, stopped_early):
    from wandb_workspaces import expr

    workspace = sweep_workspace("me", "rpb-lab", "abl")
    report = ablation_report("me", "rpb-lab", "abl", runset_project=False)
    main_sets, (stopped,) = run_filters(workspace, report)[:2], run_filters(report)[1:]
    run = _wandb_run(state)
    for text in main_sets:
        assert _matches(expr.expr_to_filters(text), run) is shown, text
    assert _matches(expr.expr_to_filters(stopped), run) is stopped_early
    assert not _matches(expr.expr_to_filters(main_sets[0]), _wandb_run("completed", group="other"))


def test_run_set_filters_survive_serialisation():
    spec = to_json(sweep_workspace("me", "p", "abl"), ablation_report("me", "p", "abl", runset_project=False))
    leaves = spec["workspace"]["spec"]["section"]["runSets"][0]["filters"]["filters"]
    assert {"key": {"section": "summary", "name": "status"}, "op": "IN", "value": ["completed", "early_stopped"]} in [
        {k: leaf[k] for k in ("key", "op", "value")} for leaf in leaves
    ]
    assert "status" in spec["plotted_keys"]["summary"]  # a key the definitions read, so end-to-end tests check it


def test_status_values_are_the_sweeps_own():
    from dashboards.wandb_workspace import COMPLETED, STOPPED_EARLY
    from sweeps.objective import COMPLETE_STATUSES, PRUNED_STATUSES

    assert all(repr(s) in COMPLETED for s in COMPLETE_STATUSES) and all(
        repr(s) in STOPPED_EARLY for s in PRUNED_STATUSES
    )


def test_the_wandb_report_opens_with_the_verdict(ablation_journal, tmp_path, capsys):
    out = tmp_path / "defs.json"
    assert main(["--out", str(out), "--group", "abl", "--storage", str(ablation_journal)]) == 0
    blocks = json.loads(out.read_text())["report"]["spec"]["blocks"]
    text = json.dumps(blocks)
    assert text.index("Verdict") < text.index("Stopped early")  # at the top of the report
    table = next(b for b in blocks if "| setting |" in json.dumps(b))
    cells = json.dumps(table)
    assert "| rpb 2d 3x3 | 3 |" in cells and "better" in cells and "Holm" in cells
    assert main(["--out", str(out), "--group", "nope", "--storage", str(ablation_journal)]) == 2
    assert capsys.readouterr().err.startswith("rpb-wandb-workspace: error: --study 'nope' is not in the storage")
    report = ablation_report("me", "p", "g", runset_project=False)  # without a study: says how to add it
    assert "rpb-wandb-workspace --storage" in json.dumps(to_json(sweep_workspace("me", "p"), report)["report"])


def test_publish_without_credentials_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert main(["--publish", "--entity", "me", "--group", "g"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpb-wandb-workspace: error: --publish found no W&B credentials: run `wandb login`"), err
    assert "Traceback" not in err
