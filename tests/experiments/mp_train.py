"""Launched by test_multiprocess.py on 2 processes: `train(cfg)` from overrides, then each rank saves its weights.

Not a test module itself (no test_ prefix). Leaves through `os._exit` after destroying the process group: torch
2.13's gloo sometimes aborts a rank during interpreter teardown (shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import experiments.train as train_module
from experiments.config import compose_config


def main() -> int:
    captured = {}
    build = train_module.build_model

    def build_and_keep(cfg):
        captured["model"] = build(cfg)
        return captured["model"]

    train_module.build_model = build_and_keep
    cfg = compose_config(sys.argv[1:])
    result = train_module.train(cfg)
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().cpu().clone() for k, v in captured["model"].state_dict().items()}
    torch.save(state, Path(cfg.run_dir) / f"rank{rank}.pt")
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
