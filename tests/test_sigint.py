"""Ctrl-C on each tool: once the first epoch line is out, SIGINT to the tool's process group (as a terminal sends it)
ends it with exit status 130 and one line that says what was kept and the command that continues it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.scripts import console_script

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# Long enough never to finish on its own, small enough that an epoch takes about a second. rpb-train keeps W&B on
# (its run is finished as "interrupted" under the same SIGINT); the studies run without it.
TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "model.head_dim=null", "trainer.epochs=50",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "tracker.tensorboard.enabled=false"]  # fmt: skip
ABLATE = "from sweeps.ablation.cli import ablate_main; ablate_main()"  # rpb-ablate's entry point


def _terminal_sigint() -> None:
    """SIGINT as a terminal gives it (a suite started in the background inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_first_epoch(
    cmd: list[str], cwd: Path, saved: Path, timeout: float = 120, sig: int = signal.SIGINT, group: bool = True
) -> tuple[int, str, str]:
    """Run `cmd`; once a line "... epoch 1/..." is printed and the run folder `saved` holds its checkpoint, send
    SIGINT to its process group; returns (exit status, stdout, stderr)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_SILENT", None)  # the tools must be quiet by themselves
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_terminal_sigint)  # fmt: skip
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if "epoch 1/" in line:
                while not (saved / "checkpoints" / "last" / "train_state.json").is_file() and proc.poll() is None:
                    time.sleep(0.05)
                os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)  # group: as a terminal does
                break
        rest, err = proc.communicate()
    finally:
        timer.cancel()
    return proc.returncode, "".join(out) + rest, err


def the_line(err: str, tool: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}: interrupted")]
    assert len(lines) == 1, err
    return lines[0]


def test_rpb_train(tmp_path):
    run = tmp_path / "run"
    code, out, err = interrupt_after_first_epoch([console_script("rpb-train"), *TINY, f"run_dir={run}"], tmp_path, run)
    line = the_line(err, "rpb-train")
    assert code == 130, out + err
    assert not [x for x in (out + err).splitlines() if x.startswith("wandb:")]  # W&B quiet unless asked
    assert line.endswith(f"is saved in {run}; continue with: rpb-train resume={run}"), line


def test_rpb_train_sigterm(tmp_path):
    """SIGTERM (`kill`, `timeout`, a scheduler) stops a run as Ctrl-C does: recorded as interrupted, one line, and
    exit status 143; it used to die silently, leaving summary.json "running"."""
    import json

    run = tmp_path / "run"
    cmd = [console_script("rpb-train"), *TINY, "tracker.wandb.enabled=false", f"run_dir={run}"]
    code, out, err = interrupt_after_first_epoch(cmd, tmp_path, run, sig=signal.SIGTERM)
    lines = [line for line in err.splitlines() if line.startswith("rpb-train: interrupted by SIGTERM in epoch ")]
    assert code == 143 and len(lines) == 1 and "Traceback" not in err, out + err
    assert lines[0].endswith(f"continue with: rpb-train resume={run}"), lines[0]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_rpb_sweep(tmp_path):
    args = [f"sweep.output_dir={tmp_path}/sweeps", "sweep.n_trials=2", "tracker.wandb.enabled=false", *TINY]
    trial = tmp_path / "sweeps" / "rpb-sweep" / "trial-0"
    code, out, err = interrupt_after_first_epoch([console_script("rpb-sweep"), *args], tmp_path, trial)
    line = the_line(err, "rpb-sweep")
    assert code == 130, out + err
    assert "study 'rpb-sweep': trial 0 continues after epoch " in line, line
    assert line.endswith("continue with: rpb-sweep " + " ".join(args)), line
    assert "1, 1 interrupted (the next run retries them)" in out, out  # the summary's "failed" row


def test_rpb_sweep_sigterm_to_the_command_alone(tmp_path):
    """`kill PID` of an rpb-sweep with 2 workers: the command passes the stop on to its workers, each records its
    trial as interrupted, and the line says so (exit 143); the workers used to keep training, orphaned."""
    import optuna

    args = [f"sweep.output_dir={tmp_path}/sweeps", "sweep.n_trials=4", "sweep.workers=2", "tracker.wandb.enabled=false",
            *TINY]  # fmt: skip
    trial = tmp_path / "sweeps" / "rpb-sweep" / "trial-0"
    cmd = [console_script("rpb-sweep"), *args]
    code, out, err = interrupt_after_first_epoch(cmd, tmp_path, trial, sig=signal.SIGTERM, group=False)
    lines = [line for line in err.splitlines() if line.startswith("rpb-sweep: interrupted by SIGTERM; study ")]
    assert code == 143 and len(lines) == 1 and "Traceback" not in err, out + err
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps" / "rpb-sweep.journal"))
    )
    trials = optuna.load_study(study_name="rpb-sweep", storage=storage).get_trials()
    assert trials and all(t.state != optuna.trial.TrialState.RUNNING for t in trials), [t.state for t in trials]
    assert any(t.user_attrs.get("status") == "interrupted" for t in trials)


def test_rpb_ablate(tmp_path):
    args = [f"sweep.output_dir={tmp_path}/sweeps", "ablation.window_sizes=[3]", "ablation.bias_types=[2d]",
            "ablation.seeds=[0]", "tracker.wandb.enabled=false", *TINY]  # fmt: skip
    trial = tmp_path / "sweeps" / "rpb-ablate" / "trial-0"
    code, out, err = interrupt_after_first_epoch([sys.executable, "-c", ABLATE, *args], tmp_path, trial)
    line = the_line(err, "rpb-ablate")
    assert code == 130, out + err
    assert "study 'rpb-ablate': trial 0 continues after epoch " in line, line
    assert "continue with: rpb-ablate sweep.output_dir=" in line, line


@pytest.mark.parametrize("processes", [1, 2])
def test_rpb_launch(tmp_path, processes):
    """`rpb-launch` (accelerate launch's own launcher) ends a Ctrl-C with the training's one line: no traceback from
    the launcher (KeyboardInterrupt with one process, torch elastic's SignalException with two), exit 130, and
    the command that continues the run launches it the same way."""
    run = tmp_path / "run"
    launch = (
        ["--num_processes", "1"] if processes == 1 else ["--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    )
    cmd = [console_script("rpb-launch"), *launch, "-m", "experiments.cli", "trainer.cpu=true", *TINY, f"run_dir={run}"]
    code, out, err = interrupt_after_first_epoch(cmd, tmp_path, run)
    line = the_line(err, "rpb-train")
    assert code == 130, out + err
    assert "death signal" not in err and "closing signal" not in err, err  # torch elastic's shutdown warnings
    assert line.endswith(f"continue with: rpb-launch {' '.join(launch)} -m experiments.cli resume={run}"), line


def test_rpb_launch_sweep(tmp_path):
    """A study whose every trial runs on 2 processes: Ctrl-C stops both ranks at once (neither waits for the
    other in a collective), rank 0 prints the summary and the line, and the trial continues from its checkpoint."""
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "-m", "sweeps.cli"]
    args = ["trainer.cpu=true", f"sweep.output_dir={tmp_path}/sweeps", "sweep.n_trials=2", "tracker.wandb.enabled=false",
            *TINY]  # fmt: skip
    trial = tmp_path / "sweeps" / "rpb-sweep" / "trial-0"
    code, out, err = interrupt_after_first_epoch([console_script("rpb-launch"), *launch, *args], tmp_path, trial)
    line = the_line(err, "rpb-sweep")
    assert code == 130, out + err
    assert "study 'rpb-sweep': trial 0 continues after epoch " in line, line
    assert line.endswith("continue with: rpb-launch " + " ".join([*launch, *args])), line
