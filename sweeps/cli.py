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


def _summary(cfg: DictConfig) -> None:
    import optuna

    from sweeps.config import check_sweep
    from sweeps.storage import build_storage
    from sweeps.summary import print_summary

    sweep = check_sweep(cfg)[0]
    study = optuna.load_study(study_name=sweep.study_name, storage=build_storage(sweep, heartbeat=False))
    print_summary(cfg, study)


def sweep_main(cfg: DictConfig) -> int:
    """Run the study of `cfg` and print its summary; returns the exit status."""
    import optuna

    from sweeps.study import run_study

    optuna.logging.set_verbosity(optuna.logging.INFO)
    is_main = distributed.rank() == 0
    code = 0
    try:
        run_study(cfg)
    except (SweepConfigError, ConfigError) as e:
        print(f"rpb-sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpb-sweep: interrupted; the running trial is recorded, run the same command to resume.", file=sys.stderr)
        code = 130
    if is_main:
        _summary(cfg)
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
    _app()


if __name__ == "__main__":
    main()
