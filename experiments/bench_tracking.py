"""What tracking costs: W&B offline + TensorBoard + bias heatmaps every epoch vs `tracker=none`.

    .ci/in-venv python -m experiments.bench_tracking [--epochs 10] [--repeats 3] [--skip-end-to-end]
    .ci/in-venv python -m experiments.bench_tracking --loop-efficiency [digits cifar10 imagefolder] [--steps 15]

Two measurements, both with the default model on digits:
1. per epoch, interleaved: a stretch of real training steps (scaled to one epoch) next to one epoch's worth of
   tracker calls in the loop's pattern (per-step scalars every `log_every_n_steps`, epoch scalars, bias statistics,
   heatmaps rendered and logged). Rendering is timed for `rpb.plot.render_bias_heatmaps` (matplotlib) and for
   `experiments.tracking.bias_heatmap_images` (numpy). Low noise, and it says where the time goes.
2. end to end: `train(cfg)` with tracker=none and with the default trackers (W&B offline + TensorBoard, numpy
   heatmaps of every block every epoch), interleaved (A B, B A, ...) in one process so drifting load hits both.
With --loop-efficiency, instead: the images/s of `train()`'s training passes against the pure training step's, on
digits, the CIFAR-10 preset (real-format batch files written locally) and the ImageFolder preset (PNG files written
locally, decoded with PIL and resized to 28x28 by torchvision), `loop_efficiency`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from experiments.result import COMPLETE_STATUSES

TRACKED = ["tracker=default", "tracker.wandb.mode=offline"]
UNTRACKED = ["tracker=none"]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def pure_steps_s(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, clip_grad_norm: float | None = None
) -> float:
    """Seconds for the plain training step (forward, cross-entropy, backward, the gradient clipped to
    `clip_grad_norm` when it is given, optimizer step) over `batches`, the reference the benchmarks set the loop and
    the thread rules against."""
    model.train()
    start = time.perf_counter()
    for images, labels in batches:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    return time.perf_counter() - start


def per_epoch(repeats: int, steps: int, out: Path) -> None:
    """Print the per-epoch cost of the tracker calls next to an epoch of training, measured side by side."""
    from experiments.config import build_model, compose_config
    from experiments.data import build_dataloaders
    from experiments.tracking import bias_heatmap_images, build_tracker
    from rpb.inspect import bias_statistics
    from rpb.plot import render_bias_heatmaps

    cfg = compose_config(TRACKED)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_loader, _ = build_dataloaders(cfg.data, seed=cfg.seed)
    steps_per_epoch, log_every = len(train_loader), int(cfg.trainer.log_every_n_steps)
    batches = [batch for batch, _ in zip(train_loader, range(steps))]

    def train_steps() -> float:
        return pure_steps_s(model, optimizer, batches) / len(batches) * steps_per_epoch

    keys = (
        "epoch (train only)",
        "start+finish",
        "step logs",
        "epoch logs",
        "render matplotlib",
        "render numpy",
        "log_images",
    )
    timings: dict[str, list[float]] = {key: [] for key in keys}
    train_steps()  # warm-up
    for rep in range(repeats):
        epoch = train_steps()
        tracker = build_tracker(cfg.tracker, is_main_process=True)
        t0 = time.perf_counter()
        tracker.start({"bench": rep}, out / f"calls-{rep}")
        t1 = time.perf_counter()
        for step in range(1, steps_per_epoch + 1):
            if step % log_every == 0:
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
            "epoch_time": epoch,
            "grad_norm/decay": 1.0,
            "grad_norm/no_decay": 1.0,
        }
        tracker.log({**metrics, **{f"bias_stats/{k}": v for k, v in bias_statistics(model).items()}}, step=1)
        t3 = time.perf_counter()
        render_bias_heatmaps(model)
        t4 = time.perf_counter()
        images = bias_heatmap_images(model)
        t5 = time.perf_counter()
        tracker.log_images(images, step=1)
        t6 = time.perf_counter()
        tracker.finish("completed", {"best_val_accuracy": 0.5})
        t7 = time.perf_counter()
        for key, seconds in zip(keys, (epoch, t1 - t0 + t7 - t6, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            timings[key].append(seconds)
        print(
            f"  rep {rep}: epoch {epoch:.2f} s, matplotlib render {t4 - t3:.3f} s, numpy render {t5 - t4:.4f} s",
            flush=True,
        )

    med = {key: _median(values) for key, values in timings.items()}
    epoch = med["epoch (train only)"]
    print(
        f"\n[per epoch] medians of {repeats}; one epoch = {steps_per_epoch} steps (timed over {len(batches)}), "
        f"log_every_n_steps={log_every}"
    )
    for key in keys:
        share = "" if key == "epoch (train only)" else f"  {100 * med[key] / epoch:6.2f}% of an epoch"
        print(f"  {key:<19} {1000 * med[key]:9.1f} ms{share}" + ("  (once per run)" if key == "start+finish" else ""))
    calls = med["step logs"] + med["epoch logs"] + med["log_images"]
    for name, render in (("matplotlib heatmaps", med["render matplotlib"]), ("numpy heatmaps", med["render numpy"])):
        print(f"  tracking per epoch with {name:<20} {100 * (calls + render) / epoch:6.2f}% (target <= 3%)")


def end_to_end(epochs: int, repeats: int, out: Path) -> None:
    """Print wall seconds of `train(cfg)` per variant, interleaved, and the ratios to tracker=none."""
    from experiments.config import compose_config
    from experiments.train import train

    common = [f"trainer.epochs={epochs}", "trainer.progress_bar=false", "trainer.heatmap_every_n_epochs=1"]
    variants: dict[str, list[str]] = {
        "tracker=none": common + UNTRACKED,
        "wandb+tb, heatmaps every epoch": common + TRACKED,
    }

    def run(name: str, tag: str, extra: tuple[str, ...] = ()) -> float:
        cfg = compose_config([*variants[name], *extra, f"run_dir={out / tag}"])
        start = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - start
        if result["status"] not in COMPLETE_STATUSES:
            raise RuntimeError(f"benchmark run {tag} ended with status {result['status']!r}: {result['reason']}")
        return seconds

    # Warm-up: imports (W&B ~1 s, TensorBoard ~1.4 s), the W&B service process, the digits cache, the allocator.
    for i, name in enumerate(variants):
        run(name, f"warmup-{i}", ("trainer.epochs=1", "trainer.limit_train_batches=2"))
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(run(name, f"{rep}-{names.index(name)}"))
            print(f"  rep {rep} {name:<30} {times[name][-1]:7.2f} s", flush=True)
    base = _median(times["tracker=none"])
    print(f"\n[end to end] train(cfg), {epochs} epochs per run, median of {repeats} interleaved runs")
    for name in names:
        seconds = _median(times[name])
        print(f"  {name:<30} {seconds:7.2f} s  ratio {seconds / base:.3f} ({100 * (seconds / base - 1):+.1f}%)")


# cifar10: real-format batch files with random pixels, written here; imagefolder: 10 class folders of 32x32 PNGs
LOOP_PRESETS = ("digits", "cifar10", "imagefolder")
IMAGEFOLDER_CLASSES = tuple(f"class{i}" for i in range(10))


def loop_efficiency(presets: tuple[str, ...], repeats: int, steps: int, out: Path, extra: tuple[str, ...] = ()) -> None:
    """Print the training loop's images/s (`train()`'s `train_images_per_s`: its training passes, loader and
    augmentation included, evaluation not) next to the pure step's (forward, loss, backward, the config's gradient
    clipping, optimizer step on batches fetched beforehand) at the same model, batch size and threads; interleaved,
    medians of `repeats`. The clipping (`trainer.clip_grad_norm`, 1.0 by default; null: none) is part of the step
    the config asks for, as the optimizer is, not of the loop's overhead."""
    from experiments.datasets.files import write_cifar10, write_image_folder

    common = ["tracker=none", "trainer.epochs=1", f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=1",
              "trainer.progress_bar=false"]  # fmt: skip
    overrides = {"digits": [], "cifar10": ["data=cifar10", f"data.root={out / 'cifar'}"],
                 "imagefolder": ["data=imagefolder", f"data.root={out / 'images'}"]}  # fmt: skip
    if "cifar10" in presets:
        write_cifar10(out / "cifar", per_batch=max(64, steps * 64 // 5 + 64))
    if "imagefolder" in presets:  # batch 32; a fifth of the images goes to validation
        per_class = (steps * 32 * 5 // 4) // len(IMAGEFOLDER_CLASSES) + 8
        write_image_folder(out / "images", classes=IMAGEFOLDER_CLASSES, per_class=per_class, size=32)
    for preset in presets:
        _loop_efficiency_of(preset, [*common, *overrides[preset], *extra], repeats, steps, out)


def _loop_efficiency_of(preset: str, overrides: list[str], repeats: int, steps: int, out: Path) -> None:
    from itertools import islice

    from experiments.config import build_model, compose_config
    from experiments.data import build_dataloaders
    from experiments.threads import apply_threads
    from experiments.train import train

    cfg = compose_config([*overrides, f"run_dir={out / preset / 'probe'}"])
    threads = apply_threads(cfg.trainer.threads).threads
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_loader, _ = build_dataloaders(cfg.data, seed=cfg.seed)
    batches = list(islice(train_loader, steps))

    clip = cfg.trainer.clip_grad_norm

    def pure() -> float:
        return sum(len(labels) for _, labels in batches) / pure_steps_s(model, optimizer, batches, clip)

    def loop(tag: str) -> float:
        run_cfg = compose_config([*overrides, f"run_dir={out / preset / tag}"])
        result = train(run_cfg)
        if result["status"] not in COMPLETE_STATUSES:
            raise RuntimeError(f"{preset} run {tag} ended with status {result['status']!r}: {result['reason']}")
        return float(result["train_images_per_s"])

    pure(), loop("warmup")  # first calls: allocator, imports, the dataset's cache
    rates: dict[str, list[float]] = {"pure step": [], "train() loop": []}
    for rep in range(repeats):
        for name in ("pure step", "train() loop") if rep % 2 == 0 else ("train() loop", "pure step"):
            rates[name].append(pure() if name == "pure step" else loop(str(rep)))
    step, looped = _median(rates["pure step"]), _median(rates["train() loop"])
    data = cfg.data
    print(f"[loop efficiency] {preset} {data.img_size}x{data.img_size}x{data.in_channels}, batch {data.batch_size},"
          f" {steps} steps, {threads} threads, num_workers={train_loader.num_workers}, clip_grad_norm={clip}: pure step"
          f" {step:7.0f} img/s, train() {looped:7.0f} img/s, efficiency {looped / step:.3f} (target >= 0.95)", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per end-to-end run (10: the default config)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per variant (interleaved)")
    parser.add_argument("--steps", type=int, default=15, help="training steps timed per repetition in (1)")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the per-epoch measurement")
    parser.add_argument("--loop-efficiency", nargs="*", choices=LOOP_PRESETS, metavar="PRESET",
                        help=f"instead: the training loop's images/s against the pure step's ({', '.join(LOOP_PRESETS)};"
                             " none named: all)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="config overrides for every --loop-efficiency run")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default model", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        if args.loop_efficiency is not None:
            presets = tuple(args.loop_efficiency) or LOOP_PRESETS
            loop_efficiency(presets, args.repeats, args.steps, Path(tmp), tuple(args.overrides))
            return
        per_epoch(args.repeats, args.steps, Path(tmp))
        if not args.skip_end_to_end:
            end_to_end(args.epochs, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
