"""`rpb-launch`: `accelerate launch` whose Ctrl-C ends with the training's one line, and the relaunch command.

`rpb-launch ARGS` is `accelerate launch ARGS`: accelerate's own argument parser and `launch_command`, run in this
process, so every option, config file and launcher (one process, `--multi_gpu`, FSDP, DeepSpeed) is accelerate's.
What differs is the end of a run that stops:

- **Ctrl-C** (SIGINT to the foreground process group, as a terminal sends it). The training processes get it and
  the main one prints its line: what was saved and the command that continues it. This launcher waits for them,
  adds nothing and exits 130. Plain `accelerate launch` then adds a traceback of its own: Python's
  `KeyboardInterrupt` from `subprocess.wait` (one process) or torch elastic's `SignalException` and its
  "death signal" warnings (several).
- **A training process that exits non-zero** (2: a config mistake, 3: diverged, 130): this launcher exits with the
  same status and no `CalledProcessError` / `ChildFailedError` traceback, since the process already said why.

A second Ctrl-C while the processes are still finishing stops waiting, as plain `accelerate launch` does at once.
The processes learn how they were launched from `LAUNCH_PREFIX_ENV`, so the command they print starts with
`rpb-launch` and the launcher arguments given here (`relaunch_command`).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

LAUNCH_PREFIX_ENV = "RPB_LAUNCH_PREFIX"  # "rpb-launch <launcher args> -m MODULE", set by main() for its processes
# Set by accelerate launch for its processes, from --mixed_precision or its config file ("no" when neither says).
MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
# How long a process other than the main one waits, after a mistake every process meets, for the launcher to stop it
# once the main process has said why and left (`say_once_and_wait`).
MAIN_PROCESS_GRACE_S = 30.0
# The console scripts' exit statuses that come with their own sentence (130 = 128 + SIGINT, as shells report Ctrl-C).
EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
SAID_WHY = (EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED)


def exit_status_help(diverged: bool = False, go_on: str = "continue") -> str:
    """The `Exit status:` line of a console script's --help, written from the constants above."""
    diverged_part = f", {EXIT_DIVERGED} diverged" if diverged else ""
    return (
        f"Exit status: 0 done, {EXIT_CONFIG} a config mistake (one sentence){diverged_part}, {EXIT_INTERRUPTED} "
        f"Ctrl-C (the line says how to {go_on})."
    )


PURPOSE = "accelerate launch, ended by Ctrl-C with the training's one line (what was saved, how to continue)"
HELP = """\
Usage: rpb-launch [accelerate launch options] -m MODULE [ARGS...]
  rpb-launch --multi_gpu --num_processes 4 -m experiments.cli trainer.mixed_precision=bf16     # rpb-train, 4 GPUs
  rpb-launch --multi_gpu --num_processes 2 --num_machines 1 -m experiments.cli trainer.cpu=true  # 2 CPU processes
  rpb-launch --num_processes 2 -m sweeps.cli sweep.study_name=two-ranks   # rpb-sweep, every trial on 2 processes

The same options as accelerate launch (below): it is accelerate's launcher, run in this process. Ctrl-C: the
training prints one line (what was saved, the command that continues it) and this exits 130, no traceback.
A process that exits non-zero (2 a config mistake, 3 diverged) gives the same exit status.\
"""


def relaunch_command(tool: str, module: str, args: Sequence[str]) -> str:
    """The shell command that runs this program again with `args`, launched the way this process was.

    - under `rpb-launch`: its own arguments up to the script (`LAUNCH_PREFIX_ENV`), then `args`;
    - under another launcher with WORLD_SIZE > 1 (`accelerate launch`, `torchrun`): `accelerate launch --multi_gpu
      --num_processes N --num_machines 1 -m MODULE ARGS` (one machine; a multi-node launch needs its own flags);
    - otherwise: `TOOL ARGS`.

    Args:
        tool: the console script, e.g. "rpb-train". module: its module for `-m`, e.g. "experiments.cli".
    """
    prefix = os.environ.get(LAUNCH_PREFIX_ENV)
    if prefix:
        return f"{prefix} {shlex.join(args)}".rstrip()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world), "--num_machines", "1"]
        return shlex.join([*launch, "-m", module, *args])
    return shlex.join([tool, *args])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (`stop_on_sigterm`), so both stop a run the same way."""


_STOPPED_BY_SIGTERM = [False]


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`, a scheduler, torch elastic passing one on) stop this process as Ctrl-C does:
    `Terminated` is raised in the main thread, runs and trials are recorded as interrupted, and the tool prints its
    one line (`stopped_by`) and exits `interrupted_status()` (143 = 128 + SIGTERM). Call it in the main thread."""

    def handler(signum, frame):
        _STOPPED_BY_SIGTERM[0] = True
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def stop_signal() -> str:
    """What stopped this process: "SIGTERM" once one arrived (`stop_on_sigterm`), else "Ctrl-C"."""
    return "SIGTERM" if _STOPPED_BY_SIGTERM[0] else "Ctrl-C"


def stopped_by() -> str:
    """For a tool's interrupted line: "" after Ctrl-C, " by SIGTERM" after a SIGTERM."""
    return " by SIGTERM" if _STOPPED_BY_SIGTERM[0] else ""


def interrupted_status() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (128 + the signal, as shells report it)."""
    return 128 + signal.SIGTERM if _STOPPED_BY_SIGTERM[0] else EXIT_INTERRUPTED


def launcher_name() -> str:
    """The launcher that started this process, as the user typed it: "rpb-launch", "accelerate launch", "torchrun",
    or "the launcher"."""
    if os.environ.get(LAUNCH_PREFIX_ENV):
        return "rpb-launch"
    if MIXED_PRECISION_ENV in os.environ:  # accelerate launch always sets it
        return "accelerate launch"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    return "the launcher"


def say_once(line: str) -> None:
    """Print `line` to stderr from the main process only (RANK 0): under a launcher every process meets the same
    mistake or Ctrl-C, and the user should read its sentence once."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr)


def say_once_and_wait(line: str, grace_s: float = MAIN_PROCESS_GRACE_S) -> None:
    """`say_once(line)` before this process leaves with an error status; the other processes wait for the main one.

    Under torch elastic (accelerate launch, torchrun) the first process that leaves with an error makes the launcher
    stop the others with SIGTERM at once: a process other than the main one leaving first would cut the main one
    off before it has said why. So they wait until the launcher stops them (it does once the main process has
    left) or `grace_s` seconds pass; then the mistake was theirs alone, and they say it, with their rank.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0:
        say_once(line)
        return
    try:
        time.sleep(grace_s)
    except KeyboardInterrupt:  # the launcher's SIGTERM (`stop_on_sigterm` raises Terminated) or Ctrl-C
        return
    print(f"{line} (rank {os.environ.get('RANK')})", file=sys.stderr)


class _DropSigintShutdown(logging.Filter):
    """torch elastic's lines on a SIGINT ("Received 2 death signal ...", "Sending process N closing signal
    SIGINT") and on a process that exited with a status it explained itself (`SAID_WHY`, "failed (exitcode: 2)
    ..."): the processes' own line says what happened. Other signals (SIGTERM from a scheduler) and other failures
    (a crash, exit 1, with its traceback) stay visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        sigint = "death signal" in text and any(str(a) in ("2", "Signals.SIGINT", "SIGINT") for a in record.args or ())
        said = any(f"failed (exitcode: {code})" in text for code in SAID_WHY)
        return not (sigint or said or text.endswith("closing signal SIGINT"))


def _hide_sigint_shutdown_warnings() -> None:
    for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).addFilter(_DropSigintShutdown())


def _wait_on_first_sigint() -> None:
    """One process (accelerate's `simple_launcher` waits in `Popen.wait`): the first Ctrl-C lets it go on waiting
    while the process saves and prints its line; a second one raises KeyboardInterrupt as usual."""

    def first(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, first)


def _exit_status(exc: BaseException) -> int | None:
    """The exit status for how accelerate's launcher ended, or None for an error of the launcher itself."""
    if isinstance(exc, subprocess.CalledProcessError):  # one process exited non-zero
        return exc.returncode if exc.returncode > 0 else 128 - exc.returncode  # killed by signal N: 128 + N
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    except ImportError:  # a torch without elastic: only the one-process launcher exists
        return None
    if isinstance(exc, SignalException):  # the launcher got the signal; the processes were told and have ended
        return 128 + int(exc.sigval)
    if isinstance(exc, ChildFailedError):  # several processes: the first failure's status
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """`rpb-launch ARGS`: `accelerate launch ARGS`, exiting with the processes' status and no launcher traceback."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = launch_command_parser()
    parser.prog = "rpb-launch"
    accelerate_help = parser.format_help
    parser.format_help = lambda: f"rpb-launch: {PURPOSE}\n\n{HELP}\n\n{accelerate_help()}"  # headed with its name
    args = parser.parse_args(argv)
    launcher_args = argv[: len(argv) - len(args.training_script_args)]
    os.environ[LAUNCH_PREFIX_ENV] = shlex.join(["rpb-launch", *launcher_args])
    _hide_sigint_shutdown_warnings()
    _wait_on_first_sigint()
    try:
        launch_command(args)
    except KeyboardInterrupt:  # a second Ctrl-C while waiting
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        status = _exit_status(exc)
        if status is None:
            raise
        sys.stdout.flush()
        sys.exit(status)


if __name__ == "__main__":
    main()
