"""`rpb-train`: the Hydra entry point around `experiments.train.train`.

    rpb-train                                         # the guide's rpb_config defaults on digits
    rpb-train model.depth=4 optim.lr=5e-4 trainer.mixed_precision=bf16
    rpb-train experiment=guide_my_experiment          # or experiment=vit_b16
    rpb-train --guide-config configs/rpb_config.yaml [overrides...]   # the guide's own YAML files
    rpb-train resume=runs/rpb-vit-20260101-120000-000000
    accelerate launch --multi_gpu --num_processes 2 -m experiments.cli trainer.cpu=true   # N processes

A config mistake prints one sentence and exits with status 2 (no traceback); a diverged run exits with 3.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from experiments.config import CONF_DIR, compose_config
from experiments.config_errors import ConfigError

__all__ = ["main"]

EXIT_CONFIG, EXIT_DIVERGED = 2, 3


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.config import validate_config
    from experiments.train import train

    try:
        cfg = validate_config(cfg)
        if cfg.get("resume"):
            _check_resume_overrides(cfg)
        result = train(cfg)
    except ConfigError as exc:  # also data.py's and resume's mistakes, raised before any training
        _fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        print(
            f"[rpb-train] {result['status']}: {result['reason']} | best val accuracy "
            f"{result['best_val_accuracy']:.4f} (epoch {result['best_epoch']}) | {result['run_dir']}"
        )
    if result["status"] == "diverged":
        _exit(EXIT_DIVERGED)


def _check_resume_overrides(cfg: DictConfig) -> None:
    """A resumed run keeps the config saved in its folder: refuse command-line overrides that would change it."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    saved_path = Path(cfg.resume) / "config.yaml"
    if not saved_path.is_file():
        return  # train() names the problem
    saved = OmegaConf.load(saved_path)
    changed = []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra"):
            continue
        if OmegaConf.select(cfg, key, default=None) != OmegaConf.select(saved, key, default=None):
            changed.append(key)
    if changed:
        raise ConfigError(
            f"resume={cfg.resume} continues the run with the config saved in its folder, and {', '.join(changed)} "
            "would change it; drop those overrides, or start a new run (without resume=) to change them."
        )


def _fail(sentence: str) -> None:
    print(f"rpb-train: {sentence}", file=sys.stderr)
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
                _fail("--guide-config needs a path: rpb-train --guide-config configs/rpb_config.yaml")
            path = args[i + 1]
            del args[i : i + 2]
            break
        if arg.startswith("--guide-config="):
            path = arg.split("=", 1)[1]
            del args[i]
            break
    return path, args


def main(argv: Sequence[str] | None = None) -> None:
    """Check the config first (one sentence, exit 2 on a mistake), then hand the overrides to Hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    guide_path, args = _split_guide_config(argv)
    overrides = [a for a in args if not a.startswith("-")]
    hydra_flags = [a for a in args if a.startswith("-")]
    try:
        if guide_path is not None:
            from experiments.guide_config import resolve_guide_overrides

            overrides = resolve_guide_overrides(guide_path, overrides)
            compose_config(overrides)
        elif not hydra_flags:  # --help, --cfg job, -m ...: Hydra's own business
            compose_config(overrides)
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
