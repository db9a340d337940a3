"""Sweep test helpers: the rpb-sweep config and command pointed at a temporary folder (fake trainer by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep_overrides(tmp_path: Path, *extra: str, fake: bool = True) -> list[str]:
    base = [f"sweep.output_dir={tmp_path}/sweeps", "tracker.wandb.mode=offline", "trainer.progress_bar=false"]
    if fake:
        base.append("sweep.train_fn=tests.sweeps.fake_train:train")
    return [*base, *extra]


def _cmd_env(tmp_path, overrides, env, fake):
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return [sys.executable, "-m", "sweeps.cli", *sweep_overrides(tmp_path, *overrides, fake=fake)], full_env


def run_cli(tmp_path: Path, *overrides: str, env: dict | None = None, timeout: float = 120, fake: bool = True):
    """`python -m sweeps.cli ...` from the repo root; returns the CompletedProcess."""
    cmd, full_env = _cmd_env(tmp_path, overrides, env, fake)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def popen_cli(tmp_path: Path, *overrides: str, env: dict | None = None, fake: bool = True) -> subprocess.Popen:
    """The same command started in the background (stdout and stderr merged)."""
    cmd, full_env = _cmd_env(tmp_path, overrides, env, fake)
    return subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    """SIGINT as a terminal gives it: a suite started in the background (`cmd &`, nohup) inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt, so the Ctrl-C tests would see the sweep run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
