"""The W&B workspace and report definitions, checked offline: panel kinds and the keys they read."""

import json

import pytest
from omegaconf import OmegaConf

from dashboards.wandb_workspace import ablation_report, main, plotted_keys, sweep_workspace, to_json
from experiments.config import compose_config

# The contract's logged keys (rpb_contract.md, "Training"), written out here independently of the module.
STEP_KEYS = {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "global_step"}
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"}
SUMMARY_KEYS = {"best_val_accuracy", "state", "reason"}
ABLATION_CONFIG_KEYS = {"window_size", "bias_type", "mode", "seed", "ablation"}  # sweeps.ablate.run_factors


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
    assert workspace.runset_settings.filters == "Metric('group') = 'my-sweep'"


def test_ablation_report_groups_runs_by_the_ablation_factors():
    report = ablation_report("me", "rpb-lab", "abl", runset_project=False)
    grid = next(b for b in report.blocks if type(b).__name__ == "PanelGrid")
    assert grid.runsets[0].groupby == ["config.window_size", "config.bias_type", "config.mode"]
    assert grid.runsets[0].filters == "Metric('group') = 'abl'"
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
