"""Local dashboards: optuna-dashboard on a journal study and TensorBoard on run folders answer on 127.0.0.1."""

import json
import signal
import subprocess
import time
import urllib.request
from contextlib import contextmanager

import pytest

from dashboards.serve import free_port, optuna_dashboard_command, tensorboard_command, wait_for_http


@contextmanager
def running(cmd: list[str]):
    # SIGINT as a terminal gives it (a suite started in the background inherits it ignored)
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_commands_bind_to_loopback_by_default(sweep_journal, tmp_path):
    cmd = optuna_dashboard_command(str(sweep_journal))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[-2:] == ["--storage-class", "JournalFileStorage"]
    assert "--storage-class" not in optuna_dashboard_command("sqlite:///x.db")
    cmd = tensorboard_command(tmp_path, port=7000)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[-1] == "7000"
    with pytest.raises(ValueError, match="--logdir"):
        tensorboard_command(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"--storage 'missing\.journal' does not exist"):
        optuna_dashboard_command("missing.journal")


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study(sweep_journal):
    port = free_port()
    with running(optuna_dashboard_command(str(sweep_journal), port=port)) as process:
        assert wait_for_http(f"http://127.0.0.1:{port}/dashboard", timeout=60, process=process) == 200
        # The study list comes from the journal file: the fabricated study is there.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            assert "swp" in [s["study_name"] for s in json.load(r)["study_summaries"]]


@pytest.mark.slow
def test_tensorboard_serves_the_run_folders(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for name in ("trial-0", "trial-1"):
        with SummaryWriter(tmp_path / name / "tensorboard") as writer:
            for epoch in range(3):
                writer.add_scalar("val_accuracy", 0.5 + 0.1 * epoch, epoch)
    port = free_port()
    with running(tensorboard_command(tmp_path, port=port)) as process:
        assert wait_for_http(f"http://127.0.0.1:{port}/", timeout=90, process=process) == 200
        # Both runs are discovered once TensorBoard has loaded the logdir.
        assert {"trial-0/tensorboard", "trial-1/tensorboard"} <= wait_for_runs(port)


def wait_for_runs(port: int, timeout: float = 30.0) -> set[str]:
    deadline = time.monotonic() + timeout
    runs: set[str] = set()
    while time.monotonic() < deadline and len(runs) < 2:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
            runs = set(json.load(r))
        time.sleep(0.3)
    return runs


@pytest.mark.slow
def test_a_sigterm_to_rpb_report_serve_stops_its_server(sweep_journal):
    """`kill` (SIGTERM) of `rpb-report --serve` alone: the optuna-dashboard it started stops with it and the port
    is free again (it used to keep serving, orphaned)."""
    import signal

    from tests.scripts import console_script

    port = free_port()
    cmd = [console_script("rpb-report"), "--serve", "optuna", "--storage", str(sweep_journal), "--port", str(port)]
    with running(cmd) as process:
        assert wait_for_http(f"http://127.0.0.1:{port}/dashboard", timeout=60, process=process) == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143  # 128 + SIGTERM, as a shell reports it (was the server's -15: 241)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=1)
            except OSError:
                break  # nothing answers: the server went down with rpb-report
            time.sleep(0.2)
        else:
            raise AssertionError(f"optuna-dashboard still answers on port {port} after rpb-report got SIGTERM")


@pytest.mark.slow
def test_ctrl_c_on_rpb_report_serve_exits_130_with_one_line(sweep_journal):
    import signal

    from tests.scripts import console_script

    port = free_port()
    cmd = [console_script("rpb-report"), "--serve", "optuna", "--storage", str(sweep_journal), "--port", str(port)]
    with running(cmd) as process:
        assert wait_for_http(f"http://127.0.0.1:{port}/dashboard", timeout=60, process=process) == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
