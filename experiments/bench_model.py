"""Training-step throughput of our relative-position-bias ViT against timm's VisionTransformerRelPos.

Run: `.venv/bin/python -m experiments.bench_model` (add `--quick` for a < 4 minute run on 2 CPU cores).
A training step is forward + cross-entropy + backward + AdamW step. Variants are timed in interleaved rounds
(ours, timm, ours, timm, ...) so that load from other processes hits all of them alike; the median round counts.
MFU is model FLOPs per second (FlopCounterMode over one step, forward + backward) over this machine's matmul
peak, measured in the same run (4096x4096 matmul in fp32 and bf16). `--gpu` runs ViT-B/16 in bf16 on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rpb import VisionTransformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Size:
    name: str
    img_size: int
    in_channels: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    batch: int


SIZES = {
    "guide": Size("guide 28x28/4 d96x6 h4", 28, 1, 4, 96, 6, 4, 64),
    "vit_ti16": Size("ViT-Ti/16 224 d192x12 h3", 224, 3, 16, 192, 12, 3, 32),
    "vit_b16": Size("ViT-B/16 224 d768x12 h12", 224, 3, 16, 768, 12, 12, 64),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def ours(size: Size, use_relative_position: bool = True, class_token_last_block: bool = True) -> nn.Module:
    return VisionTransformer(
        img_size=size.img_size, patch_size=size.patch_size, in_channels=size.in_channels, num_classes=10,
        embed_dim=size.embed_dim, depth=size.depth, num_heads=size.num_heads,
        use_relative_position=use_relative_position, abs_pos_embed=False,
        class_token_last_block=class_token_last_block,
    )  # fmt: skip


def timm_relpos(size: Size) -> nn.Module:
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    return VisionTransformerRelPos(
        img_size=size.img_size, patch_size=size.patch_size, in_chans=size.in_channels, num_classes=10,
        embed_dim=size.embed_dim, depth=size.depth, num_heads=size.num_heads, class_token=True,
        global_pool="token", rel_pos_type="bias", init_values=None,
    )  # fmt: skip


def matmul_peak(dtype: torch.dtype, device: str, n: int = 4096, reps: int = 5) -> float:
    """Best-of-`reps` FLOP/s of an n x n matmul."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(model: nn.Module, size: Size, dtype: torch.dtype | None, device: str, compile_model: bool) -> Callable:
    """A closure running one training step on a fixed random batch."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    fwd = torch.compile(model) if compile_model else model
    x = torch.randn(size.batch, size.in_channels, size.img_size, size.img_size, device=device)
    y = torch.randint(0, 10, (size.batch,), device=device)
    autocast = torch.autocast(device_type=device, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    return step


def step_flops(model: nn.Module, size: Size, device: str) -> float:
    """FLOPs of one forward + backward on one batch (matmuls, convs and attention, as counted by torch)."""
    model = model.to(device).train()
    x = torch.randn(size.batch, size.in_channels, size.img_size, size.img_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_size(size: Size, precisions: list[str], args: argparse.Namespace, device: str, peaks: dict) -> list[dict]:
    torch.manual_seed(0)
    variants: dict[str, Callable[[], nn.Module]] = {"ours": lambda: ours(size), "timm": lambda: timm_relpos(size)}
    variants["ours all tokens"] = lambda: ours(size, class_token_last_block=False)  # last block on every token
    if not args.no_overhead:
        variants["ours w/o bias"] = lambda: ours(size, use_relative_position=False)
    # MFU counts the FLOPs each variant really runs (ours skips the last block's patch tokens).
    flops = {name: step_flops(build(), size, device) for name, build in variants.items()}
    flops["ours compiled"] = flops["ours"]
    rows = []
    for prec in precisions:
        dtype = PRECISIONS[prec]
        steps = {name: make_step(build(), size, dtype, device, False) for name, build in variants.items()}
        if args.compile:
            steps["ours compiled"] = make_step(ours(size), size, dtype, device, True)
        times: dict[str, list[float]] = {name: [] for name in steps}
        for name, step in steps.items():  # warm-up (and compilation) outside the timed rounds
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step()
            _sync(device)
            if args.verbose:
                print(f"  warm-up {size.name} {prec} {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        for _ in range(args.rounds):
            for name, step in steps.items():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    step()
                _sync(device)
                times[name].append((time.perf_counter() - t0) / args.iters)
        ips = {name: size.batch / statistics.median(t) for name, t in times.items()}
        for name, value in ips.items():
            rows.append({
                "size": size.name, "precision": prec, "model": name, "img_s": value,
                "vs_timm": value / ips["timm"], "mfu": flops[name] / size.batch * value / peaks[prec],
                "rpb_overhead": (ips["ours w/o bias"] / value - 1) if name == "ours" and "ours w/o bias" in ips else None,
                # the share of the peak ours would have to reach to run 1.5x timm's images/s
                "mfu_for_target": flops["ours"] / size.batch * 1.5 * ips["timm"] / peaks[prec] if name == "ours" else None,
            })  # fmt: skip
    return rows


def print_table(rows: list[dict], peaks: dict, device: str) -> None:
    peak_s = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    load = os.getloadavg()[0]
    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load:.1f}")
    print(f"matmul peak (same run, same threads): {peak_s}")
    head = f"{'size':<26} {'prec':<5} {'model':<15} {'img/s':>8} {'ours/timm':>9} {'MFU':>6} {'RPB cost':>8}"
    print(head + f" {'MFU for 1.5x':>12}")
    for r in rows:
        overhead = f"{100 * r['rpb_overhead']:+.1f}%" if r["rpb_overhead"] is not None else ""
        target = f"{100 * r['mfu_for_target']:.1f}%" if r["mfu_for_target"] is not None else ""
        print(
            f"{r['size']:<26} {r['precision']:<5} {r['model']:<15} {r['img_s']:>8.1f} {r['vs_timm']:>8.2f}x "
            f"{100 * r['mfu']:>5.1f}% {overhead:>8} {target:>12}"
        )
    print('RPB cost: time per step of ours with the bias over ours without it (attn_impl="auto" both), minus one.')
    print("ours all tokens: the last block on every token as timm does (ours computes the class token's row only).")
    print("MFU for 1.5x: the share of the measured matmul peak ours would need to run 1.5x timm's images/s.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="guide,vit_ti16", help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--iters", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (the median round counts)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation included)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="also time ours under torch.compile (default: on, off with --quick: compiling takes minutes on 2 cores)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads; 0 = all cores, or 1 when the load average says other processes share them "
        "(2 OpenMP threads on 2 busy cores measured ~15x slower than 1)",
    )  # fmt: skip
    parser.add_argument("--no-overhead", action="store_true", help="skip the model without bias")
    parser.add_argument("--quick", action="store_true", help="few iterations: a < 4 minute run on 2 cores")
    parser.add_argument("--gpu", action="store_true", help="ViT-B/16 bf16 on CUDA (MFU against the bf16 peak)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    device = "cpu"
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device; none is visible to torch.")
        device = "cuda"
        args.sizes, args.precisions = "vit_b16", "bf16"
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.quick:
        args.iters, args.rounds, args.warmup = 1, min(args.rounds, 3), min(args.warmup, 1)
    if args.compile is None:
        args.compile = not args.quick
    if args.threads == 0 and device == "cpu":
        cores = os.cpu_count() or 1
        args.threads = 1 if os.getloadavg()[0] >= cores else cores
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    peaks = {p: matmul_peak(PRECISIONS[p] or torch.float32, device) for p in precisions}
    rows = []
    for key in args.sizes.split(","):
        rows += bench_size(SIZES[key], precisions, args, device, peaks)
    # Other processes come and go: the peak is measured again at the end and the higher figure kept.
    for p in precisions:
        peak = max(peaks[p], matmul_peak(PRECISIONS[p] or torch.float32, device))
        for r in rows:
            if r["precision"] == p:
                r["mfu"] *= peaks[p] / peak
        peaks[p] = peak
    print_table(rows, peaks, device)


if __name__ == "__main__":
    main()
