"""`rpb-sweep`: an Optuna study over the training config (Hydra entry over conf/sweep.yaml).

    rpb-sweep                                            # the default study: digits, 12 trials, journal file
    rpb-sweep sweep.workers=2                            # two local worker processes on one journal file
    rpb-sweep sweep.storage=postgresql://user@host/db   # join a study on PostgreSQL from any machine
    rpb-launch --multi_gpu --num_processes 2 -m sweeps.cli   # every trial on 2 processes (rank 0 owns the study)

A mistake in the sweep (a misspelt sampler, an inverted range, a window the grid cannot take, a database that
cannot be reached) is one sentence on stderr and exit status 2, before any trial starts. Ctrl-C ends with one line
(what was kept, the command that continues the study) and exit status 130. `rpb-ablate` is a client of this
command (`sweeps.ablation.cli`), with the same help and Ctrl-C handling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import hydra
import optuna
from omegaconf import DictConfig

from experiments.cli import render_help
from experiments.config import CONF_DIR, ConfigError, compose_unvalidated
from experiments.launch import (
    EXIT_CONFIG,
    exit_status_help,
    interrupted_status,
    relaunch_command,
    say_once,
    stop_on_sigterm,
    stopped_by,
)
from sweeps import distributed
from sweeps.config import check_sweep
from sweeps.objective import quiet_optuna
from sweeps.record import TrialAttr
from sweeps.space import SweepConfigError
from sweeps.storage import build_storage
from sweeps.study import StudyAlreadyDone, run_study
from sweeps.summary import interrupted_trials, print_summary
from sweeps.wandb_study import log_study_run

log = logging.getLogger("rpb-sweep")


def _summary(checked, *, log_to_wandb: bool = False) -> None:
    sweep = checked.sweep
    study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep, heartbeat=False))
    best_yaml = print_summary(checked, study)
    if log_to_wandb:  # the study's own W&B run: its trials' table and best.yaml (where W&B is the tracker)
        log_study_run(checked, study, best_yaml)


def sweep_main(cfg: DictConfig) -> int:
    """Run the study of `cfg` and print its summary; returns the exit status."""
    quiet_optuna()  # one line per finished trial (Objective.announce) instead of Optuna's INFO lines
    is_main, checked = distributed.rank() == 0, None
    try:
        checked = check_sweep(cfg)  # once per command: the workers, the summary and best.yaml get this one
        run_study(checked)
    except (SweepConfigError, ConfigError) as e:
        say_once(f"rpb-sweep: error: {e}")
        return EXIT_CONFIG
    except StudyAlreadyDone as e:
        if is_main:
            print(f"rpb-sweep: {e}")
        return 0
    except KeyboardInterrupt:
        if is_main:
            if checked is not None:
                with contextlib.suppress(Exception):  # the study so far; the storage may be gone
                    _summary(checked)
            say_interrupted("rpb-sweep", checked.sweep if checked is not None else None)  # the last line
        return interrupted_status()
    if is_main:
        _summary(checked, log_to_wandb=True)
    return 0


def _interrupted_trials(sweep) -> list[str]:
    """What each trial this Ctrl-C stopped continues from (best effort: [] when the storage is gone)."""
    try:
        study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep, heartbeat=False))
        stopped = interrupted_trials(study)
    except Exception:
        return []
    return [_resumes(t.number, t.user_attrs.get(TrialAttr.RUN_DIR)) for t in stopped]


def _resumes(number: int, run_dir: str | None) -> str:
    """ "trial N continues after epoch E" (its checkpoint), or "trial N starts over" (none written yet)."""
    from experiments.checkpoint import TrainState, last_checkpoint  # deferred: torch, for a Ctrl-C line only

    last = last_checkpoint(run_dir) if run_dir else None
    if last is None:
        return f"trial {number} starts over (stopped before its first checkpoint)"
    return f"trial {number} continues after epoch {TrainState.read(last).epoch}"


def say_interrupted(tool: str, sweep, module: str = "sweeps.cli") -> None:
    """Ctrl-C of a study: one line on stderr, what was kept and the exact command that continues the study
    (`module`: what `python -m` runs for `tool`, named under a multi-process launcher)."""
    command = relaunch_command(tool, module, sys.argv[1:])
    if sweep is None:  # before the study was opened
        print(f"{tool}: interrupted{stopped_by()} before the study started; nothing saved; start it with: {command}",
              file=sys.stderr)  # fmt: skip
        return
    stopped = _interrupted_trials(sweep)
    kept = ", ".join(stopped) if stopped else "finished trials are kept"
    print(f"{tool}: interrupted{stopped_by()}; study {sweep.study_name!r}: {kept}; continue with: {command}",
          file=sys.stderr)  # fmt: skip


@hydra.main(config_path=str(CONF_DIR), config_name="sweep", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    code = sweep_main(cfg)
    if distributed.world_size() > 1:
        # gloo may abort a rank at interpreter exit: leave the group, flush, and exit hard.
        distributed.shutdown(barrier=code != interrupted_status())  # Ctrl-C, SIGTERM: no rank waits for another
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def sweep_help() -> str:
    """`rpb-sweep --help`: its purpose, usage and conf/sweep/default.yaml with its comments."""
    usage = """\
  rpb-sweep [sweep.KEY=VALUE ...] [KEY=VALUE ...]   run (or continue) the study; other keys are every trial's base
  rpb-sweep sweep.workers=2                          two local worker processes on one journal file
  rpb-sweep sweep.storage=postgresql://user@host/db  join a study on PostgreSQL from any machine
  rpb-launch --multi_gpu --num_processes 2 -m sweeps.cli   every trial on 2 processes (rank 0 owns the study;
                                                     rpb-launch is accelerate launch with a one-line Ctrl-C)
  rpb-sweep --cfg job                                print the composed config; --hydra-help: Hydra's own flags"""
    notes = (
        "Training keys (model.*, optim.*, trainer.*, data=..., tracker.*) are those of rpb-train: see rpb-train --help.\n"
        "Each finished trial prints one line; the end prints the summary table and writes <output_dir>/<study>/best.yaml.\n"
        + exit_status_help()
    )
    return render_help(
        "rpb-sweep",
        "an Optuna study over the training config: each trial trains with its sampled params, pruned epoch by epoch.",
        usage,
        [("sweep", CONF_DIR / "sweep" / "default.yaml")],
        notes,
    )


def main() -> None:
    stop_on_sigterm()  # kill / timeout / a scheduler: the trials are recorded and the line said as for Ctrl-C
    try:
        _main()
    except KeyboardInterrupt:  # while starting (imports, composing): no study yet
        say_interrupted("rpb-sweep", None)
        sys.exit(interrupted_status())


def _main() -> None:
    # Compose once before Hydra does: a config mistake (a misspelt key) is one sentence and exit 2, not Hydra's
    # multi-line report and exit 1. Flags (--cfg job, -m ...) are Hydra's own business.
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(sweep_help(), end="")
        return
    if not any(a.startswith("-") for a in args):
        try:
            compose_unvalidated(args, config_name="sweep")
        except ConfigError as e:
            say_once(f"rpb-sweep: error: {e}")
            sys.exit(EXIT_CONFIG)
    _app()


if __name__ == "__main__":
    main()
