"""The study's own W&B run at the end of a sweep (sweeps.wandb_study), read back from its offline folder with W&B's
own reader (`wandb leet inspect --json`, no network)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest

import sweeps.cli
from sweeps.config import check_sweep
from sweeps.storage import build_storage
from sweeps.wandb_study import TRIAL_COLUMNS
from tests.scripts import console_script


def _leet(offline: Path, *args: str) -> str:
    cmd = [console_script("wandb"), "leet", "inspect", *args, "--json", str(offline)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(autouse=True)
def _wandb_data_dir(tmp_path, monkeypatch):
    # W&B stages the files it logs (the table, best.yaml) under WANDB_DATA_DIR until `wandb sync`: not in $HOME
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def test_a_sweep_ends_with_a_study_run_holding_its_trials_table_and_best_yaml(compose_sweep, tmp_path):
    cfg = compose_sweep("sweep.n_trials=4", "trainer.epochs=2", "sweep.study_name=s1")
    assert sweeps.cli.sweep_main(cfg) == 0
    sweep = check_sweep(cfg).sweep
    study = optuna.load_study(study_name="s1", storage=build_storage(sweep, heartbeat=False))
    folder = tmp_path / "sweeps" / "s1"
    [offline] = (folder / "wandb").glob("offline-run-*")

    records = [json.loads(line) for line in _leet(offline).splitlines() if line]
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert run["job_type"] == "study" and run["run_group"] == "s1" and "study-s1" in run["tags"]
    summary = json.loads(_leet(offline, "--summary"))
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["summary"]["best_trial"] == study.best_trial.number
    assert summary["summary"]["trials_complete"] == len(study.trials)

    table = summary["summary"]["trials"]  # the table's summary entry names the file W&B wrote it to
    assert table["_type"] == "table-file" and table["nrows"] == len(study.trials)
    written = json.loads((offline / "files" / table["path"]).read_text())
    params = [d.path for d in check_sweep(cfg).dims]
    assert written["columns"] == [*TRIAL_COLUMNS, *params]
    rows = {row[0]: dict(zip(written["columns"], row)) for row in written["data"]}
    for t in study.trials:
        row = rows[t.number]
        assert (row["state"], row["value"], row["epochs"]) == ("complete", t.value, 2)
        assert row["run_dir"] == t.user_attrs["run_dir"] and row["wandb_run_id"] == t.user_attrs["wandb_run_id"]
        assert (
            row["optim.lr"] == t.params["optim.lr"]
            and row["model.rpb.window_size"] == t.params["model.rpb.window_size"]
        )

    [artifact] = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "config"]
    assert artifact["name"] == "s1-best-config" and "best" in artifact["aliases"]
    assert json.loads(artifact["metadata"])["trial"] == study.best_trial.number
    [entry] = artifact["manifest"]["contents"]
    assert entry["path"] == "best.yaml"
    assert Path(entry["local_path"]).read_bytes() == (folder / "best.yaml").read_bytes()  # W&B's copy, to sync


@pytest.mark.parametrize("override", ["tracker=none", "tracker.wandb.mode=disabled", "tracker=tensorboard"])
def test_no_study_run_without_wandb(compose_sweep, tmp_path, override):
    cfg = compose_sweep("sweep.n_trials=2", "trainer.epochs=1", override)
    assert sweeps.cli.sweep_main(cfg) == 0
    folder = tmp_path / "sweeps" / "rpb-sweep"
    assert (folder / "best.yaml").is_file() and not (folder / "wandb").exists()
