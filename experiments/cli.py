"""`rpb-train`: the Hydra entry point around `experiments.train.train`.

    rpb-train                                         # the guide's rpb_config defaults on digits
    rpb-train model.depth=4 optim.lr=5e-4 trainer.mixed_precision=bf16
    rpb-train experiment=guide_my_experiment          # or experiment=vit_b16
    rpb-train --guide-config conf/guide/rpb_config.yaml [overrides...]   # the guide's own YAML files
    rpb-train resume=runs/rpb-vit-20260101-120000-000000                  # continue a run
    rpb-train resume=runs/rpb-vit-20260101-120000-000000 trainer.epochs=20   # extend it to 20 epochs
    rpb-launch --multi_gpu --num_processes 2 --num_machines 1 -m experiments.cli trainer.cpu=true   # N processes

A config mistake prints one sentence and exits with status 2 (no traceback); a diverged run exits with 3; Ctrl-C
prints one line (what was saved, the command that continues it) and exits with 130.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments.config import CONF_DIR, compose_config, normalise_overrides
from experiments.config_errors import ConfigError
from experiments.launch import (
    EXIT_CONFIG,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    exit_status_help,
    interrupted_status,
    relaunch_command,
    say_once,
    say_once_and_wait,
    stop_on_sigterm,
    stopped_by,
)
from experiments.result import DIVERGED

__all__ = ["EXIT_INTERRUPTED", "main", "render_help"]

GUIDE_EXAMPLE = "conf/guide/rpb_config.yaml"


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.config import validate_config
    from experiments.train import extend_run, train

    try:
        cfg = validate_config(cfg)
        if cfg.get("resume"):
            epochs = _check_resume_overrides(cfg)
            if epochs is not None:
                extend_run(cfg.resume, epochs)
        result = train(cfg)
    except ConfigError as exc:  # also data.py's and resume's mistakes, raised before any training
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        _say_interrupted(getattr(exc, "result", None))
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        print(
            f"[rpb-train] {result['status']}: {result['reason']} | best val accuracy "
            f"{result['best_val_accuracy']:.4f} (epoch {result['best_epoch']}) | {result['run_dir']}"
        )
    if result["status"] == DIVERGED:
        _exit(EXIT_DIVERGED)


def _check_resume_overrides(cfg: DictConfig) -> int | None:
    """A resumed run keeps the config saved in its folder: refuse command-line overrides that would change it,
    except trainer.epochs (extending the run); returns the new trainer.epochs when it is given and differs."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from experiments.run_dir import RunDir

    saved_path = RunDir(cfg.resume).config
    if not saved_path.is_file():
        return None  # train() names the problem
    saved = OmegaConf.load(saved_path)
    changed, epochs = [], None
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra"):
            continue
        if OmegaConf.select(cfg, key, default=None) == OmegaConf.select(saved, key, default=None):
            continue
        if key == "trainer.epochs":
            epochs = int(cfg.trainer.epochs)
        else:
            changed.append(key)
    if changed:
        raise ConfigError(
            f"resume={cfg.resume} continues the run with the config saved in its folder, and {', '.join(changed)} "
            "would change it; drop those overrides (only trainer.epochs may change, to extend the run), or start a "
            "new run (without resume=) to change them."
        )
    return epochs


def _continue_command(run_dir: str) -> str:
    """The command that continues the run in `run_dir`, launched as this one was (one process, N, rpb-launch)."""
    return relaunch_command("rpb-train", "experiments.cli", [f"resume={run_dir}"])


def _has_checkpoint(run_dir: str) -> bool:
    from experiments.checkpoint import last_checkpoint  # torch: loaded already once train() has run

    return last_checkpoint(run_dir) is not None


def _say_interrupted(result: dict | None) -> None:
    """Ctrl-C or SIGTERM: one line on the main process (what was saved, the command that continues it), exit 130
    (143 after SIGTERM)."""
    by = stopped_by()
    if result is not None and _has_checkpoint(result["run_dir"]):
        line = (
            f"rpb-train: interrupted{by} in epoch {result['epochs_run'] + 1}; epoch {result['epochs_run']} is saved "
            f"in {result['run_dir']}; continue with: {_continue_command(result['run_dir'])}"
        )
    else:
        where = f" ({result['run_dir']} holds no checkpoint)" if result else ""
        line = (
            f"rpb-train: interrupted{by} before a checkpoint was written; nothing to continue{where}; start again with: "
            f"{relaunch_command('rpb-train', 'experiments.cli', sys.argv[1:])}"
        )
    say_once(line)
    _exit(interrupted_status())


def _fail(sentence: str) -> None:
    say_once_and_wait(f"rpb-train: {sentence}")  # every process meets it; the main one says it
    _exit(EXIT_CONFIG)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)


def _split_guide_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take `--guide-config PATH` (or `--guide-config=PATH`) out of the arguments."""
    args, path = list(argv), None
    for i, arg in enumerate(args):
        if arg == "--guide-config":
            if i + 1 >= len(args):
                _fail(f"--guide-config needs a path: rpb-train --guide-config {GUIDE_EXAMPLE}")
            path = args[i + 1]
            del args[i : i + 2]
            break
        if arg.startswith("--guide-config="):
            path = arg.split("=", 1)[1]
            del args[i]
            break
    return path, args


def render_help(name: str, purpose: str, usage: str, group_files: Sequence[tuple[str, Path]], notes: str = "") -> str:
    """A console script's --help: its name and purpose, usage, then each of its own config groups as the YAML file
    it is (keys with their comments), so the help never drifts from the defaults.

    Args:
        group_files: (key prefix such as "sweep", YAML file) pairs, shown in this order.
    """
    parts = [f"{name}: {purpose}", "", "Usage:", usage.rstrip()]
    for prefix, path in group_files:
        rel = path.relative_to(CONF_DIR.parent) if path.is_relative_to(CONF_DIR.parent) else path
        body = "\n".join(f"  {line}".rstrip() for line in path.read_text().rstrip().splitlines())
        parts += ["", f"{prefix}.* keys ({rel}; override as {prefix}.KEY=VALUE):", body]
    if notes:
        parts += ["", notes.rstrip()]
    return "\n".join(parts) + "\n"


def _groups_line() -> str:
    """Config groups and their options, from conf/ (group=option picks one)."""
    groups = ("data", "model", "optim", "schedule", "tracker", "experiment")
    return "\n".join(f"  {g}={'|'.join(sorted(p.stem for p in (CONF_DIR / g).glob('*.yaml')))}" for g in groups)


def train_help() -> str:
    """`rpb-train --help`."""
    import textwrap

    from experiments.train import SCHEDULE_ON_EXTEND

    extend = textwrap.fill(SCHEDULE_ON_EXTEND + ".", width=116, initial_indent=" " * 6, subsequent_indent=" " * 6)
    usage = f"""\
  rpb-train [KEY=VALUE ...]                      override any key: model.depth=4 optim.lr=5e-4
  rpb-train GROUP=OPTION [KEY=VALUE ...]         pick a config group option (below): model=vit_no_rpb
  rpb-train --guide-config {GUIDE_EXAMPLE} [KEY=VALUE ...]   the training guide's own YAML keys
  rpb-train resume=RUN_DIR                       continue an interrupted run with the config in its folder
  rpb-train resume=RUN_DIR trainer.epochs=N      extend a run to N epochs in all (N above what it trained):
{extend}
  rpb-train --cfg job [KEY=VALUE ...]            print the composed config; --hydra-help: Hydra's own flags
  rpb-launch --multi_gpu --num_processes N -m experiments.cli [KEY=VALUE ...]
                                                 N processes (GPUs; add trainer.cpu=true --num_machines 1 for CPU):
                                                 accelerate launch's flags, Ctrl-C ends with the one line

Config groups (GROUP=OPTION):
{_groups_line()}"""
    notes = (
        "A run folder holds config.yaml, metrics.jsonl, summary.json, checkpoints/, bias/, wandb/, tensorboard/.\n"
        + exit_status_help(diverged=True, go_on="go on")
    )
    return render_help(
        "rpb-train",
        "train a Vision Transformer with relative position bias on one CPU, one GPU or N processes.",
        usage,
        [("trainer", CONF_DIR / "trainer" / "default.yaml"), ("tracker", CONF_DIR / "tracker" / "wandb.yaml")],
        notes,
    )


# Hydra's own command-line flags (`rpb-train --hydra-help`); everything else that starts with "-" is a mistake.
HYDRA_FLAGS = ("--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p", "--run", "-r",
               "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun", "--info", "-i")  # fmt: skip


FLAGS_WITH_A_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                      "--package", "-p", "--experimental-rerun")  # fmt: skip


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, Hydra flags): a flag that takes a value keeps it, written apart (`--config-name best`) or not."""
    overrides, flags = [], []
    taking = False
    for arg in args:
        if taking or arg.startswith("-"):
            flags.append(arg)
            taking = not taking and arg in FLAGS_WITH_A_VALUE
        else:
            overrides.append(arg)
    return overrides, flags


def _flag_value(flags: list[str], *names: str) -> str | None:
    for i, flag in enumerate(flags):
        name, eq, value = flag.partition("=")
        if name in names:
            return value if eq else (flags[i + 1] if i + 1 < len(flags) else None)
    return None


def _check_hydra_flags(flags: list[str]) -> None:
    """One sentence for a config key written as an option (`--trainer.epochs=3`) or an unknown flag, and for a
    `--config-name` that names no file (a sweep's best.yaml before the study has a complete trial).

    Raises:
        ConfigError: what to write instead.
    """
    after_flag = False
    for flag in flags:
        if after_flag:  # the value of a flag written apart from it (`--config-name best`)
            after_flag = False
            continue
        name, _, value = flag.partition("=")
        if name in HYDRA_FLAGS:
            after_flag = flag in FLAGS_WITH_A_VALUE
            continue
        key = name.lstrip("-")
        if "." in key or value:
            raise ConfigError(
                f"{flag} is not an option: config keys are given without dashes, as {key}={value or 'VALUE'}."
            )
        raise ConfigError(f"{flag} is not an option of rpb-train; see rpb-train --help (config keys take no dashes).")
    config_name = _flag_value(flags, "--config-name", "-cn")
    if config_name is None:
        return
    folder = Path(_flag_value(flags, "--config-dir", "-cd") or _flag_value(flags, "--config-path", "-cp") or CONF_DIR)
    file = folder / (config_name if config_name.endswith(".yaml") else f"{config_name}.yaml")
    if not file.is_file() and not (CONF_DIR / file.name).is_file():
        hint = (
            " (a sweep writes best.yaml once its study has a complete trial: run or finish the rpb-sweep first)"
            if config_name.removesuffix(".yaml") == "best"
            else ""
        )
        raise ConfigError(f"--config-name={config_name}: there is no {file}{hint}; check --config-dir and the name.")


def main(argv: Sequence[str] | None = None) -> None:
    """Check the config first (one sentence, exit 2 on a mistake), then hand the overrides to Hydra."""
    stop_on_sigterm()  # kill / timeout / a scheduler: recorded and said as Ctrl-C is, exit 143
    try:
        _main(argv)
    except KeyboardInterrupt:  # before train() started (imports, composing): nothing was saved
        _say_interrupted(None)


def _main(argv: Sequence[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(train_help(), end="")
        return
    guide_path, args = _split_guide_config(argv)
    overrides, hydra_flags = _split_flags(args)
    try:
        _check_hydra_flags(hydra_flags)
        if guide_path is not None:
            from experiments.guide_config import resolve_guide_overrides

            overrides = resolve_guide_overrides(guide_path, overrides)
            compose_config(overrides)
        elif not hydra_flags:  # --cfg job, --hydra-help, -m ...: Hydra's own business
            compose_config(overrides)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        overrides = normalise_overrides(overrides)  # what was checked above is what Hydra composes
    except ConfigError as exc:
        _fail(str(exc))
    sys.argv = [sys.argv[0], *hydra_flags, *overrides]
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _hydra_main()
        return
    # Under `accelerate launch` / torchrun: destroy the process group and leave without interpreter teardown
    # (torch 2.13's gloo sometimes aborts a rank at exit otherwise; see shared/ENVIRONMENT.md).
    code = 0
    try:
        _hydra_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
