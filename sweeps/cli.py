"""`rpb-sweep`: an Optuna study over the training config (Hydra entry over conf/sweep.yaml).

    rpb-sweep                                            # the default study: digits, 12 trials, journal file
    rpb-sweep sweep.workers=2                            # two local worker processes on one journal file
    rpb-sweep sweep.storage=postgresql://user@host/db   # join a study on PostgreSQL from any machine
    accelerate launch --num_processes 2 -m sweeps.cli    # every trial on 2 processes (rank 0 owns the study)

A mistake in the sweep (a misspelt sampler, an inverted range, a window the grid cannot take, a database that
cannot be reached) is one sentence on stderr and exit status 2, before any trial starts.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from experiments.config import CONF_DIR, ConfigError
from sweeps import distributed
from sweeps.space import SweepConfigError

log = logging.getLogger("rpb-sweep")


def _summary(checked) -> None:
    import optuna

    from sweeps.storage import build_storage
    from sweeps.summary import print_summary

    sweep = checked.sweep
    study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep, heartbeat=False))
    print_summary(checked, study)


def sweep_main(cfg: DictConfig) -> int:
    """Run the study of `cfg` and print its summary; returns the exit status."""
    import optuna

    from sweeps.config import check_sweep
    from sweeps.study import StudyAlreadyDone, run_study

    optuna.logging.set_verbosity(optuna.logging.INFO)
    is_main = distributed.rank() == 0
    code = 0
    try:
        checked = check_sweep(cfg)  # once per command: the workers, the summary and best.yaml get this one
        run_study(checked)
    except (SweepConfigError, ConfigError) as e:
        print(f"rpb-sweep: error: {e}", file=sys.stderr)
        return 2
    except StudyAlreadyDone as e:
        if is_main:
            print(f"rpb-sweep: {e}")
        return 0
    except KeyboardInterrupt:
        print("rpb-sweep: interrupted; the running trial is recorded, run the same command to resume.", file=sys.stderr)
        code = 130
    if is_main:
        _summary(checked)
    return code


@hydra.main(config_path=str(CONF_DIR), config_name="sweep", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    code = sweep_main(cfg)
    if distributed.world_size() > 1:
        # gloo may abort a rank at interpreter exit: leave the group, flush, and exit hard.
        distributed.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def main() -> None:
    # Compose once before Hydra does: a config mistake (a misspelt key) is one sentence and exit 2, not Hydra's
    # multi-line report and exit 1. Flags (--help, --cfg job, -m ...) are Hydra's own business.
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):
        from experiments.config import compose_unvalidated

        try:
            compose_unvalidated(args, config_name="sweep")
        except ConfigError as e:
            print(f"rpb-sweep: error: {e}", file=sys.stderr)
            sys.exit(2)
    _app()


if __name__ == "__main__":
    main()
