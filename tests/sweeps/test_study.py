"""Studies with the fake trainer: defaults first, pruning, resume, diverged and crashing trials, bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.storage import build_storage, mask_secrets
from sweeps.study import run_study
from sweeps.summary import print_summary, state_counts
from tests.sweeps.helpers import run_cli


def test_study_prunes_records_and_resumes(compose_sweep, tmp_path, capsys):
    cfg = compose_sweep("sweep.n_trials=8", "sweep.sampler.n_startup_trials=2")
    study = run_study(cfg)
    trials = study.get_trials()
    assert len(trials) == 8
    first = trials[0]
    assert first.params == {
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.05,
        "model.drop_rate": 0.0,
        "model.rpb.window_size": "7x7",
        "model.rpb.init_std": 0.02,
    }
    assert any(t.state == TrialState.PRUNED for t in trials), "the median pruner never pruned"
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == tmp_path / "sweeps" / "rpb-sweep" / f"trial-{t.number}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["wandb_run_id"] == t.user_attrs["wandb_run_id"]
        assert t.user_attrs["status"] == {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned"}[t.state]
        assert t.user_attrs["worker"]["pid"] > 0
    assert study.user_attrs["kind"] == "sweep"

    # The same command with a larger budget resumes the study: numbers continue, nothing is run twice.
    study = run_study(compose_sweep("sweep.n_trials=10"))
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(10))
    assert state_counts(study)["complete"] + state_counts(study)["pruned"] == 10

    path = print_summary(cfg, study)
    out = capsys.readouterr().out
    assert "best trial" in out and "complete" in out and "pruned" in out
    assert path == tmp_path / "sweeps" / "rpb-sweep" / "best.yaml"
    text = path.read_text()
    assert text.splitlines()[1] == f"# Run it: rpb-train --config-dir={path.parent} --config-name=best"
    assert "sweep:" not in text and "defaults:" in text
    # rpb-train composes it as it is (Hydra prints the job config instead of training).
    exe = Path(sys.executable).with_name("rpb-train")
    shown = subprocess.run(
        [str(exe), f"--config-dir={path.parent}", "--config-name=best", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    best = study.best_trial
    assert f"lr: {best.params['optim.lr']}" in shown and "name: rpb-sweep-best" in shown


def test_diverged_trials_are_pruned_with_reason(compose_sweep):
    cfg = compose_sweep("sweep.n_trials=3", "+sweep.fixed.optim.lr=0.1", "sweep.enqueue_defaults=false")
    study = run_study(cfg)
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["status"] == "diverged"
        assert "non-finite" in t.user_attrs["reason"]
    assert state_counts(study)["diverged"] == 3


def test_crashing_trials_fail_and_the_worker_stops(compose_sweep, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "1")
    study = run_study(compose_sweep("sweep.n_trials=10", "sweep.max_failures=2"))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert study.trials[0].user_attrs["reason"] == "RuntimeError: fake failure"


def test_grid_ablation_layout(compose_sweep):
    """What rpb-ablate prepares: a grid over windows x seeds, no pruning, every point once."""
    cfg = compose_sweep(
        "sweep.study_name=ablate",
        "sweep.kind=ablation",
        "sweep.sampler.name=grid",
        "sweep.pruner.name=none",
        "sweep.n_trials=null",
        "sweep.enqueue_defaults=false",
        "~sweep.space.optim",
        "~sweep.space.model.drop_rate",
        "~sweep.space.model.rpb.init_std",
        "sweep.space.model.rpb.window_size={type: categorical, choices: [3, 7]}",
        "+sweep.space.seed={type: categorical, choices: [0, 1]}",
    )
    study = run_study(cfg)
    points = sorted((t.params["model.rpb.window_size"], t.params["seed"]) for t in study.trials)
    assert points == [(3, 0), (3, 1), (7, 0), (7, 1)]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs["kind"] == "ablation"


def test_mask_secrets():
    url = "postgresql+psycopg://alice:s3cr3t@db.example:5432/rpb"
    assert mask_secrets(url) == "postgresql+psycopg://alice:***@db.example:5432/rpb"
    assert "s3cr3t" not in mask_secrets(f"cannot reach {url} now")
    # SQLAlchemy reads "s3/cr3t" as the password; experiments' masker alone stops at the "/".
    assert mask_secrets("postgresql://alice:s3/cr3t@db/rpb") == "postgresql://alice:***@db/rpb"


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_sentence(tmp_path):
    bad = run_cli(tmp_path, "sweep.sampler.name=tpee")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "rpb-sweep: error: sweep.sampler.name='tpee' is not known (did you mean 'tpe'?); use one of tpe, random, "
        "grid, cmaes, gp."
    ]
    url = "postgresql://alice:s3cr3t@127.0.0.1:1/nowhere"
    bad = run_cli(tmp_path, f"sweep.storage={url}")
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open the database postgresql+psycopg://alice:***@127.0.0.1:1/nowhere" in lines[0]
    assert "s3cr3t" not in bad.stdout + bad.stderr
    assert not any("s3cr3t" in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    assert "Trial" not in bad.stdout + bad.stderr


def test_summary_reads_a_journal_file(compose_sweep, tmp_path):
    cfg = compose_sweep("sweep.n_trials=2")
    run_study(cfg)
    storage = build_storage(cfg.sweep, heartbeat=False)
    assert len(optuna.load_study(study_name="rpb-sweep", storage=storage).trials) == 2


def _metric_only_train(cfg, on_epoch_end=None):
    """A train_fn that keeps only the contract's minimum: the sweep's metric each epoch, a status at the end."""
    for epoch in range(1, int(cfg.trainer.epochs) + 1):
        if on_epoch_end is not None and on_epoch_end(epoch, {"val_accuracy": 0.1 * epoch}) is not None:
            return {"status": "pruned"}
    return {"status": "completed", "val_accuracy": 0.1 * int(cfg.trainer.epochs)}


def test_a_train_fn_that_reports_only_the_metric_completes(compose_sweep, capsys):
    """The progress lines print what a train_fn reports; missing metrics (losses, lr, time) are left out."""
    study = run_study(
        compose_sweep("sweep.n_trials=2", "trainer.epochs=2", "sweep.pruner.name=none"), _metric_only_train
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    out = capsys.readouterr().out
    # no loss, lr or epoch time reported: the epoch, then what is left
    assert re.search(r"\[trial 0, 1 of 2\] epoch 1/2 \| ~\w+ left in the trial\n", out)
    assert re.search(r"\[trial 1, 2 of 2\] epoch 2/2 \| ~\w+ in the study\n", out)


def test_a_postgres_connection_lost_while_idle_is_replaced_and_calls_back_to_back_are_not_pinged(
    compose_sweep, postgres_counted_study, monkeypatch
):
    """`sweeps.storage.ping_idle_connections`: the server drops the pooled connection (a restart, a proxy); the
    worker's next storage call, after the connection sat idle, succeeds on a new one. Calls that follow each other
    within `PING_IDLE_S` cost no ping: one commit each (pool_pre_ping made it two)."""
    import time

    import optuna
    import psycopg

    import sweeps.storage as storage_module

    url, name = postgres_counted_study
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    monkeypatch.setattr(storage_module, "PING_IDLE_S", 0.3)
    cfg = compose_sweep(f"sweep.storage={url}", f"sweep.study_name={name}")
    storage = build_storage(cfg.sweep, heartbeat=False)
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("a", 1)

    with psycopg.connect(plain, autocommit=True) as admin:

        def commits():
            admin.execute("SELECT pg_stat_clear_snapshot()")
            return admin.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()[0]

        time.sleep(1.2)  # the server's statistics of the calls above are flushed
        before = commits()
        for i in range(20):  # back to back: no ping
            storage.set_study_user_attr(study._study_id, f"k{i}", i)
        time.sleep(1.2)
        assert commits() - before <= 20 + 2  # each call's own commit (plus this check's own reads)
        gone = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pytest%'"
        ).fetchall()
        assert gone  # the storage's pooled connection was dropped by the server
    time.sleep(0.5)  # idle past PING_IDLE_S: pinged, found dead, replaced
    study.set_user_attr("b", 2)
    assert optuna.load_study(study_name=name, storage=storage).user_attrs["b"] == 2


@pytest.mark.parametrize("stop", ["n_trials", "crashes"])
def test_each_trial_is_announced_once_in_order_from_the_next_read(compose_sweep, monkeypatch, capsys, stop):
    """A worker prints every trial's line once, in order, with its final state, and asks `study.optimize` for no
    callback (Optuna reads the ended trial anew for callbacks: a query on PostgreSQL every trial): the line comes
    from the read the next `ask()` makes, or, when the worker stops on crashes, from one read of its own."""
    import optuna.study.study as study_module  # Study.optimize calls the _optimize it imported

    given = []
    real_optimize = study_module._optimize
    monkeypatch.setattr(
        study_module, "_optimize", lambda *a, **k: given.append(k.get("callbacks")) or real_optimize(*a, **k)
    )
    if stop == "crashes":
        monkeypatch.setenv("FAKE_TRAIN_FAIL", "1")
    study = run_study(compose_sweep("sweep.n_trials=5", "sweep.max_failures=2"))
    trials = study.get_trials()
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"trial \d+, \d+ of 5 ", line)]
    expected = {"n_trials": [("complete", "pruned")] * 5, "crashes": [("failed",)] * 2}[stop]
    assert len(trials) == len(lines) == len(expected) and given and all(g is None for g in given)
    for trial, line, states in zip(trials, lines, expected):
        assert line.startswith(f"trial {trial.number}, ") and trial.state.name.lower() in line
        assert line.split(" of 5 ")[1].split()[0].rstrip(":") in states
