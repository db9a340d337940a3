"""Does pruning pay? The same study (same sampler seed) run with a pruner and without, on digits.

    python -m sweeps.bench_pruning                     # 30 trials each, successive halving, tiny model, W&B off
    python -m sweeps.bench_pruning --pruner median
    python -m sweeps.bench_pruning --trials 20 --epochs 6 --limit-train-batches 20

Prints both best val accuracies, the epochs each study spent, and their ratio. Target: the pruned best within
0.5 points of the unpruned best while spending at most half the epochs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from experiments.config import compose_config
from sweeps.study import run_study


def _overrides(args: argparse.Namespace, out: Path, pruner: str) -> list[str]:
    # The study name says which run it is; "none" is the unpruned reference.
    return [
        f"sweep.output_dir={out}",
        f"sweep.study_name=bench-{pruner}",
        f"sweep.n_trials={args.trials}",
        f"sweep.pruner.name={pruner}",
        f"sweep.pruner.n_startup_trials={args.startup}",
        f"sweep.pruner.n_warmup_steps={args.warmup}",
        "sweep.pruner.min_resource=1",
        "sweep.pruner.reduction_factor=3",
        f"sweep.sampler.seed={args.seed}",
        f"sweep.workers={args.workers}",
        f"trainer.epochs={args.epochs}",
        f"trainer.limit_train_batches={args.limit_train_batches}",
        "trainer.save_checkpoints=false",
        "trainer.heatmap_every_n_epochs=0",
        "trainer.progress_bar=false",
        "data.augment=false",
        "model.attn_drop_rate=0.0",
        "tracker=none",
        f"model.depth={args.depth}",
        f"model.embed_dim={args.embed_dim}",
        "model.num_heads=2",
        "model.head_dim=null",
    ]


def _run(args: argparse.Namespace, out: Path, pruner: str) -> dict:
    t0 = time.perf_counter()
    study = run_study(compose_config(_overrides(args, out, pruner), config_name="sweep"))
    trials = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return {
        "best": study.best_value,
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trials": len(trials),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--pruner", default="successive_halving", choices=("median", "successive_halving", "hyperband"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit-train-batches", type=int, default=8)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--startup", type=int, default=5, help="median pruner: trials finished before pruning starts")
    p.add_argument("--warmup", type=int, default=2, help="median pruner: epochs (1-based) below this are never pruned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--output-dir", type=Path, default=None, help="keep the studies here (default: a temp dir)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or Path(tmp)
        res = {}
        for name in (args.pruner, "none"):
            res[name] = r = _run(args, out, name)
            label = f"pruned ({name})" if name != "none" else "unpruned"
            print(
                f"{label:28s} best val_accuracy {r['best']:.4f} | {r['epochs']:4d} epochs over {r['trials']} trials "
                f"({r['pruned']} pruned) | {r['seconds']:.0f} s",
                flush=True,
            )
    pr, un = res[args.pruner], res["none"]
    gap, ratio = 100 * (un["best"] - pr["best"]), pr["epochs"] / un["epochs"]
    ok = gap <= 0.5 and ratio <= 0.5
    print(
        f"gap {gap:+.2f} points (pruned below unpruned) | epoch ratio {ratio:.2f} | target: gap <= 0.5, ratio <= 0.5 "
        f"-> {'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
