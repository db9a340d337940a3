"""Sweep test helpers: the rpb-sweep config and command pointed at a temporary folder (fake trainer by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep_overrides(tmp_path: Path, *extra: str, fake: bool = True) -> list[str]:
    base = [f"sweep.output_dir={tmp_path}/sweeps", "trainer.progress_bar=false"]
    if not any(e.startswith("tracker=") for e in extra):  # tracker=none has no W&B entry to set
        base.append("tracker.wandb.mode=offline")
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


# --- Stress-test helpers (tests/sweeps/test_stress.py) --------------------------------------------------------


def popen_cli_logged(tmp_path: Path, log: Path, *overrides: str, env: dict | None = None, fake: bool = True):
    """`popen_cli` writing stdout and stderr to `log` (no pipe to fill up), in a process group of its own, so
    `kill_group` ends the command and every worker it started at once, as a machine dying would."""
    cmd, full_env = _cmd_env(tmp_path, overrides, env, fake)
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (empty when it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a command started by `popen_cli_logged`: its process group, and any descendant that left it."""
    import contextlib

    pids = process_tree(proc.pid)
    for kill, target in ((os.killpg, proc.pid), *((os.kill, pid) for pid in pids)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def wait_until(check, *, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
               interval: float = 0.1):  # fmt: skip
    """Poll `check()` until it returns something true (returned); AssertionError naming `what` when `timeout`
    seconds pass or `proc` exits first (with the tail of `log`)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() > deadline:
            why = f"the command exited with {proc.returncode} first" if ended else f"not within {timeout:.0f} s"
            tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(
                f"waiting for {what}: {why}" + (f"\n--- command output (tail) ---\n{tail}" if tail else "")
            )
        time.sleep(interval)


def study_storage(tmp_path: Path, study_name: str, url: str | None = None):
    """A read-only handle on the storage a `run_cli(tmp_path, ...)` study uses: its journal file, or `url` (no
    heartbeats, so reading never fails a trial)."""
    from omegaconf import OmegaConf

    from sweeps.storage import build_storage

    node = {"storage": url, "output_dir": f"{tmp_path}/sweeps", "study_name": study_name,
            "heartbeat_interval": None, "grace_period": 60, "max_retry": 2}  # fmt: skip
    return build_storage(OmegaConf.create(node), heartbeat=False)


TRIALS_ROW_RE = (  # the rows "trials", "failed" and (when any) "in progress" of the summary table
    r"trials\W+(\d+) complete, (\d+) pruned \((\d+) diverged\)[^\n]*\n[^\n]*failed\W+(\d+)(?: \((\d+) retried\))?"
    r"(?:[^\n]*\n[^\n]*in progress\W+(\d+) running, (\d+) waiting)?"
)


def summary_row_counts(stdout: str) -> dict[str, int] | None:
    """The counts of the "trials" row of the summary table `rpb-sweep` prints (None when there is no table)."""
    import re

    match = re.search(TRIALS_ROW_RE, stdout)
    if match is None:
        return None
    keys = ("complete", "pruned", "diverged", "fail", "retried", "running", "waiting")
    return {k: int(v or 0) for k, v in zip(keys, match.groups())}
