"""`rpb-train`: Hydra overrides, the guide's YAML through --guide-config, resume, config mistakes exit 2."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest

from experiments.cli import main
from tests.scripts import console_script

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null", "trainer.epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress_bar=false", "tracker=none"]  # fmt: skip


def test_rpb_train_runs_with_overrides_and_leaves_nothing_but_the_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main([*TINY, "name=cli"])
    (run,) = (tmp_path / "runs").iterdir()  # <output_dir>/<name>-<timestamp>
    assert run.name.startswith("cli-") and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert "[rpb-train] completed: trained 1 epoch |" in capsys.readouterr().out

    record = (run / "metrics.jsonl").read_text()
    main([f"resume={run}", "trainer.epochs=1"])  # nothing left to do: ends at once, completed
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 1
    assert (run / "metrics.jsonl").read_text() == record  # not trained again (a new record has a new epoch_time)

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # an override that changes the saved config is refused, not ignored
        main([f"resume={run}", "trainer.epochs=3", "optim.lr=0.01"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "and optim.lr would change it; drop those overrides (only trainer.epochs may change" in err
    assert (run / "metrics.jsonl").read_text() == record


def test_rpb_train_resume_continues_where_the_run_stopped(tmp_path, monkeypatch, capsys):
    import experiments.train

    train = experiments.train.train
    stop_after_one = functools.partial(train, on_epoch_end=lambda epoch, metrics: "stopped" if epoch == 1 else None)
    monkeypatch.setattr(experiments.train, "train", stop_after_one)  # what `rpb-train` calls: stops after epoch 1
    run = tmp_path / "run"
    main([*TINY, "trainer.epochs=2", f"run_dir={run}"])
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 1
    (first,) = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(first)["status"] == "stopped"

    monkeypatch.setattr(experiments.train, "train", train)
    capsys.readouterr()
    main([f"resume={run}"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first and [json.loads(line)["epoch"] for line in lines] == [1, 2]  # epoch 1 kept, not rerun
    out = capsys.readouterr().out
    assert "[rpb-train] completed" in out and not any(line.startswith("epoch 1/2") for line in out.splitlines())


def test_guide_config_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    guide = tmp_path / "my_experiment.yaml"
    guide.write_text(
        "project:\n  name: my_experiment\n  seed: 123\n  device: cpu\n"
        "input:\n  batch_size: 64\n  embed_dim: 192\n"
        "attention:\n  num_heads: 8\n  dropout: 0.1\n"
        "relative_position_bias:\n  enabled: true\n  type: 2d\n  window_size: [14, 14]\n"
    )
    main(["--guide-config", str(guide), *TINY[:1], "model.embed_dim=32", "model.head_dim=null", *TINY[4:],
          "data.batch_size=8", f"run_dir={tmp_path}/guide"])  # fmt: skip
    saved = (tmp_path / "guide" / "config.yaml").read_text()
    assert "img_size: 56" in saved and "name: my_experiment" in saved and "seed: 123" in saved

    guide.write_text("attention:\n  num_head: 8\n")
    with pytest.raises(SystemExit) as info:
        main(["--guide-config", str(guide)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown guide config key 'attention.num_head' (did you mean 'num_heads'?)" in err


def test_guide_sequence_length_must_match_the_grid(tmp_path):
    from experiments.config_errors import ConfigError
    from experiments.guide_config import compose_guide_config

    guide = tmp_path / "g.yaml"
    guide.write_text("input:\n  sequence_length: 64\nrelative_position_bias:\n  window_size: [7, 7]\n")
    with pytest.raises(ConfigError, match=r"input\.sequence_length=64 does not match the 7x7 token grid"):
        compose_guide_config(guide)


def test_console_script_refuses_a_misspelt_key_with_exit_2(tmp_path):
    proc = subprocess.run([console_script("rpb-train"), "trainer.epoch=3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Unknown config key 'trainer.epoch' (did you mean 'epochs'?)" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_rpb_train_extends_a_finished_run_with_the_schedule_over_the_new_length(tmp_path, capsys):
    from omegaconf import OmegaConf

    from experiments.optimizers import lr_factor

    run = tmp_path / "run"
    main([*TINY, "schedule.warmup_epochs=0", f"run_dir={run}"])  # 1 epoch = 2 steps: the cosine ends at min_lr
    main([f"resume={run}", "trainer.epochs=3"])
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"], summary["epochs"]) == ("completed", 3, 3)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    saved = OmegaConf.load(run / "config.yaml")
    lr, min_lr = saved.optim.lr, saved.schedule.min_lr
    assert records[0]["learning_rate"] == pytest.approx(min_lr)  # the 1-epoch curve's end
    # recomputed over 3 epochs (6 steps): after step 4 the cosine is back up near a quarter of the base lr
    factor = lr_factor(4, warmup_steps=0, total_steps=6, start_factor=0.1, min_factor=min_lr / lr, cosine=True)
    assert records[1]["learning_rate"] == pytest.approx(lr * factor) and factor == pytest.approx(0.25, abs=0.01)
    assert "trainer:\n  epochs: 3" in (run / "config.yaml").read_text()

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # not above what it trained: refused by name
        main([f"resume={run}", "trainer.epochs=2"])
    assert info.value.code == 2
    assert "trainer.epochs=2 does not extend resume=" in capsys.readouterr().err
    main([f"resume={run}"])  # finished and not extended: nothing trained
    assert "already finished (trained 3 epochs)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["--trainer.epochs=3"], "--trainer.epochs=3 is not an option: config keys are given without dashes"),
        (["--frobnicate"], "--frobnicate is not an option of rpb-train"),
        (["--config-dir=NOWHERE", "--config-name=best"], "a sweep writes best.yaml once its study has a complete trial"),
        (["--config-dir", "NOWHERE", "--config-name", "best"], "there is no NOWHERE/best.yaml"),
    ],
)
def test_flags_that_hydra_would_refuse_with_a_traceback_are_one_sentence(tmp_path, capsys, argv, sentence):
    argv = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert sentence.replace("NOWHERE", str(tmp_path / "nowhere")) in err and len(err.splitlines()) == 1


def test_the_command_line_trains_what_it_checked(tmp_path):
    """A window in any spelling and a group's name set alone reach Hydra as they were checked (the command line
    used to hand Hydra the raw override, which it refused in a traceback or composed with the old group)."""
    import yaml

    main([*TINY, "model.rpb.window_size=5x5", "optim.name=sgd", f"run_dir={tmp_path}/run"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["rpb"]["window_size"] == [5, 5]
    assert saved["optim"]["name"] == "sgd" and saved["optim"]["momentum"] == 0.9  # the sgd group's own settings
