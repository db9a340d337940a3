"""`rpb-ablate`: the window-size ablation, run through the sweep machinery (`sweeps.study.run_study`).

    rpb-ablate                                                     # 3 windows x 3 seeds on digits
    rpb-ablate 'ablation.window_sizes=[3,5,7]' 'ablation.bias_types=[2d,1d,none]' trainer.epochs=5
    rpb-ablate 'ablation.pos_embeds=[none,learned]' 'ablation.bias_types=[2d,none]' ablation.window_sizes=[7]
                                                                   # none / abs / rpb / abs+rpb (Swin's Table 4)
    rpb-report --storage runs/sweeps/rpb-ablate.journal            # the comparison, as an HTML page

`ablate_main` is the console script (help, Ctrl-C and SIGTERM handled as `rpb-sweep` does); `main` runs one
ablation and returns the exit status (`python -m sweeps.ablate` runs it).
"""

from __future__ import annotations

import sys

from experiments.cli import render_help
from experiments.config import CONF_DIR, compose_config
from experiments.launch import EXIT_CONFIG, exit_status_help, interrupted_status, stop_on_sigterm
from sweeps import distributed
from sweeps.ablation.grid import ablation_config
from sweeps.ablation.verdict import print_verdict
from sweeps.cli import say_interrupted
from sweeps.objective import quiet_optuna
from sweeps.record import StudyAttr
from sweeps.storage import describe_storage
from sweeps.study import StudyAlreadyDone, run_study

MODULE = "sweeps.ablate"  # what `python -m` runs: the command a Ctrl-C line gives under a multi-process launcher


def ablate_help() -> str:
    """`rpb-ablate --help`: its purpose, usage and conf/ablation/window_size.yaml with its comments."""
    usage = """\
  rpb-ablate [ablation.KEY=VALUE ...] [KEY=VALUE ...]   run (or continue) the ablation grid
  rpb-ablate 'ablation.bias_types=[2d,1d,none]' trainer.epochs=5
  rpb-report --storage runs/sweeps/rpb-ablate.journal   the comparison, as an HTML page"""
    notes = (
        "sweep.* keys set the storage and workers (rpb-sweep --help); training keys are those of rpb-train --help.\n"
        + exit_status_help()
    )
    return render_help(
        "rpb-ablate",
        "the window-size ablation: every (setting, seed) of the grid trains once, through the sweep machinery.",
        usage,
        [("ablation", CONF_DIR / "ablation" / "window_size.yaml")],
        notes,
    )


def main(argv: list[str] | None = None) -> int:
    """`rpb-ablate [hydra overrides]`: compose conf/ablate.yaml, run the ablation, say how to look at it."""
    overrides = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(overrides):
        print(ablate_help(), end="")
        return 0
    quiet_optuna()  # one line per finished trial, as rpb-sweep (not Optuna's "A new study created" INFO line)
    try:
        cfg = ablation_config(compose_config(overrides, config_name="ablate"))
        study = run_study(cfg)
    except ValueError as err:  # ConfigError and SweepConfigError are ValueErrors with one sentence
        print(f"rpb-ablate: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except StudyAlreadyDone as done:
        print(f"rpb-ablate: {done}")
        study = done.study
    if study is None:  # a non-main rank of a multi-process launch
        return 0
    if cfg.ablation.get("baseline"):
        study.set_user_attr(StudyAttr.BASELINE, str(cfg.ablation.baseline))  # rpb-report's default baseline
    print_verdict(study, cfg.ablation.get("baseline"))
    storage = describe_storage(cfg.sweep)
    print(
        f"ablation {study.study_name}: {len(study.trials)} trials in {storage}\n"
        f"report:    rpb-report --storage {storage} --study {study.study_name}\n"
        f"dashboard: rpb-report --serve optuna --storage {storage}"
    )
    return 0


def ablate_main() -> None:
    """`rpb-ablate`: its help, then `main`; Ctrl-C is one line and exit status 130."""
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(ablate_help(), end="")
        return
    stop_on_sigterm()  # kill / timeout / a scheduler: the trials are recorded and the line said as for Ctrl-C
    try:
        code = main(args)
    except KeyboardInterrupt:
        if distributed.rank() == 0:
            say_interrupted("rpb-ablate", _ablation_sweep(args), MODULE)  # composed again: cheap, never half-done
        code = interrupted_status()
    sys.exit(code)


def _ablation_sweep(args: list[str]):
    """The sweep node rpb-ablate ran with these arguments (for the Ctrl-C line)."""
    return ablation_config(compose_config(args, config_name="ablate")).sweep
