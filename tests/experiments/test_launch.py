"""rpb-launch's pieces without launching: the relaunch command, the exit status it takes from accelerate's launcher,
and which torch elastic log lines it hides."""

from __future__ import annotations

import logging
import signal
import subprocess

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from experiments.launch import LAUNCH_PREFIX_ENV, _DropSigintShutdown, _exit_status, relaunch_command


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "rpb-train resume=runs/a"),
        ({"WORLD_SIZE": "1"}, "rpb-train resume=runs/a"),
        (
            {"WORLD_SIZE": "4"},
            "accelerate launch --multi_gpu --num_processes 4 --num_machines 1 -m experiments.cli resume=runs/a",
        ),
        (
            {"WORLD_SIZE": "2", LAUNCH_PREFIX_ENV: "rpb-launch --num_processes 2 -m experiments.cli"},
            "rpb-launch --num_processes 2 -m experiments.cli resume=runs/a",
        ),
    ],
)
def test_relaunch_command(monkeypatch, env, expected):
    for key in ("WORLD_SIZE", LAUNCH_PREFIX_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert relaunch_command("rpb-train", "experiments.cli", ["resume=runs/a"]) == expected


def test_relaunch_command_quotes_arguments(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(LAUNCH_PREFIX_ENV, raising=False)
    assert relaunch_command("rpb-sweep", "sweeps.cli", ["sweep.devices=[0, 1]"]) == "rpb-sweep 'sweep.devices=[0, 1]'"


def _failure(exitcode: int) -> ProcessFailure:
    return ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="<none>")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (subprocess.CalledProcessError(2, ["python"]), 2),  # one process: a config mistake
        (subprocess.CalledProcessError(130, ["python"]), 130),  # one process: Ctrl-C, said by the process
        (subprocess.CalledProcessError(-9, ["python"]), 137),  # killed by SIGKILL: 128 + 9, as a shell says
        (SignalException("got signal 2", sigval=signal.SIGINT), 130),  # several processes: the launcher's SIGINT
        (SignalException("got signal 15", sigval=signal.SIGTERM), 143),
        (ChildFailedError("experiments.cli", {0: _failure(3)}), 3),  # several processes: diverged
        (ChildFailedError("experiments.cli", {1: _failure(-6)}), 134),  # a rank aborted (SIGABRT)
        (RuntimeError("a bug of the launcher"), None),  # raised as it is
    ],
)
def test_exit_status(exc, status):
    assert _exit_status(exc) == status


def _record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("torch.distributed.elastic", logging.WARNING, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("record", "shown"),
    [
        (_record("Received %s death signal, shutting down workers", signal.SIGINT), False),
        (_record("Received %s death signal, shutting down workers", 2), False),
        (_record("Sending process %s closing signal %s", 123, "SIGINT"), False),
        (_record("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", 2, 0, 1, "python"), False),
        (_record("Received %s death signal, shutting down workers", signal.SIGTERM), True),  # a scheduler's kill
        (_record("Sending process %s closing signal %s", 123, "SIGTERM"), True),
        (_record("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", 1, 0, 1, "python"), True),  # crash
    ],
)
def test_only_the_lines_a_process_explained_are_hidden(record, shown):
    assert _DropSigintShutdown().filter(record) is shown
