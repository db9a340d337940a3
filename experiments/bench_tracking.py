"""What tracking costs: W&B offline + TensorBoard + bias heatmaps every epoch vs `tracker=none`.

    .venv/bin/python -m experiments.bench_tracking [--epochs 3] [--repeats 3]

Two measurements, both on the default model and digits:
1. end to end: `train(cfg)` with and without trackers, interleaved (ABBA) in one process, so machine load drifts
   hit both alike; wall time per run and the ratio.
2. the tracker calls alone, replayed for one epoch of the real loop's call pattern (per-step scalars every
   `log_every_n_steps`, epoch scalars, bias statistics, heatmaps rendered and logged), against a measured epoch
   of training: a low-noise estimate of the per-epoch overhead that (1) cannot resolve on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from experiments.tracking import build_tracker

TRACKED = ["tracker.wandb.enabled=true", "tracker.wandb.mode=offline", "tracker.tensorboard.enabled=true"]
UNTRACKED = ["tracker.wandb.enabled=false", "tracker.tensorboard.enabled=false"]


def _train_run(overrides: list[str], run_dir: Path) -> float:
    from experiments.config import compose_config
    from experiments.train import train

    cfg = compose_config([*overrides, f"run_dir={run_dir}"])
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    if result["status"] not in ("completed", "early_stopped"):
        raise RuntimeError(f"benchmark run ended with status {result['status']!r}: {result.get('reason')}")
    return elapsed


def end_to_end(epochs: int, repeats: int, out: Path) -> dict[str, list[float]]:
    """Wall seconds of `train(cfg)` per run for each variant, interleaved A B B A ..."""
    common = [f"trainer.epochs={epochs}", "trainer.progress_bar=false", "trainer.heatmap_every_n_epochs=1"]
    variants = {"tracker=none": common + UNTRACKED, "wandb+tensorboard": common + TRACKED}
    # Warm-up: imports (W&B ~1 s, TensorBoard ~1.4 s), the W&B service process, digits cache, allocator.
    for name, overrides in variants.items():
        _train_run([*overrides, "trainer.epochs=1"], out / f"warmup-{name}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            seconds = _train_run(variants[name], out / f"{name}-{rep}")
            times[name].append(seconds)
            print(f"  rep {rep} {name:<18} {seconds:7.2f} s", flush=True)
    return times


def tracker_calls_per_epoch(log_every_n_steps: int, repeats: int, out: Path) -> dict[str, float]:
    """Seconds per epoch spent in tracker calls (and heatmap rendering) for the default model on digits."""
    from experiments.config import build_model, compose_config
    from experiments.data import build_dataloaders
    from rpb.inspect import bias_statistics
    from rpb.plot import render_bias_heatmaps

    cfg = compose_config(TRACKED)
    model = build_model(cfg)
    train_loader, _ = build_dataloaders(cfg.data, seed=cfg.seed)
    steps = len(train_loader)
    timings: dict[str, list[float]] = {k: [] for k in ("start+finish", "step logs", "epoch logs", "render", "images")}
    for rep in range(repeats):
        tracker = build_tracker(cfg.tracker, is_main_process=True)
        t0 = time.perf_counter()
        tracker.start({"bench": rep}, out / f"calls-{rep}")
        t1 = time.perf_counter()
        for step in range(1, steps + 1):
            if step % log_every_n_steps == 0:
                tracker.log(
                    {"train/loss": 1.0, "train/lr": 1e-3, "train/grad_norm": 1.0, "train/images_per_sec": 500.0},
                    step=step,
                )
        t2 = time.perf_counter()
        metrics = {
            "epoch": 1,
            "train_loss": 1.0,
            "train_accuracy": 0.5,
            "val_loss": 1.0,
            "val_accuracy": 0.5,
            "learning_rate": 1e-3,
            "epoch_time": 3.0,
            "grad_norm/decay": 1.0,
            "grad_norm/no_decay": 1.0,
        }
        tracker.log({**metrics, **{f"bias_stats/{k}": v for k, v in bias_statistics(model).items()}}, step=1)
        t3 = time.perf_counter()
        images = {f"bias/block_{i}": image for i, image in render_bias_heatmaps(model).items()}
        t4 = time.perf_counter()
        tracker.log_images(images, step=1)
        t5 = time.perf_counter()
        tracker.finish("completed", {"best_val_accuracy": 0.5})
        t6 = time.perf_counter()
        for key, seconds in zip(timings, (t1 - t0 + t6 - t5, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            timings[key].append(seconds)
    return {key: statistics.median(values) for key, values in timings.items()}


def train_epoch_seconds(repeats: int) -> float:
    """Median seconds of one plain training epoch (default model, digits, AdamW), no tracking at all."""
    from experiments.config import build_model, compose_config
    from experiments.data import build_dataloaders

    cfg = compose_config(UNTRACKED)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_loader, _ = build_dataloaders(cfg.data, seed=cfg.seed)
    times = []
    for _ in range(repeats + 1):  # the first epoch warms up
        start = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per end-to-end run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (interleaved)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the per-epoch tracker-call estimate")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default model, digits 28x28")
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        out = Path(tmp)
        from experiments.config import compose_config

        log_every = int(compose_config().trainer.log_every_n_steps)
        epoch = train_epoch_seconds(repeats=args.repeats)
        calls = tracker_calls_per_epoch(log_every, repeats=args.repeats, out=out)
        per_epoch = sum(v for k, v in calls.items() if k != "start+finish")
        print(f"\n[tracker calls] plain training epoch: {epoch:.2f} s (median of {args.repeats})")
        for key, seconds in calls.items():
            print(f"  {key:<13} {1000 * seconds:8.1f} ms" + ("  (once per run)" if key == "start+finish" else ""))
        print(
            f"  per epoch     {1000 * per_epoch:8.1f} ms = {100 * per_epoch / epoch:.1f}% of an epoch "
            f"(+{100 * calls['start+finish'] / epoch:.1f}% of one epoch once per run)"
        )
        if args.skip_end_to_end:
            return
        print(f"\n[end to end] train(cfg), {args.epochs} epochs, {args.repeats} interleaved runs per variant")
        times = end_to_end(args.epochs, args.repeats, out)
        base, tracked = statistics.median(times["tracker=none"]), statistics.median(times["wandb+tensorboard"])
        print(f"  median tracker=none        {base:7.2f} s")
        print(f"  median wandb+tensorboard   {tracked:7.2f} s")
        print(f"  ratio {tracked / base:.3f} (overhead {100 * (tracked / base - 1):+.1f}%, target <= +3%)")


if __name__ == "__main__":
    main()
