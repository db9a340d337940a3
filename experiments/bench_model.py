"""Training-step throughput of our relative-position-bias ViT against timm's VisionTransformerRelPos.

Run: `.venv/bin/python -m experiments.bench_model` (add `--quick` for a < 4 minute run on 2 CPU cores).
A training step is forward + cross-entropy + backward + AdamW step. Variants are timed in interleaved rounds
(ours, timm, ours, timm, ...) so that load from other processes hits all of them alike; the median round counts.
MFU is model FLOPs per second (FlopCounterMode over one step, forward + backward) over this machine's matmul
peak, measured in the same run (4096x4096 matmul in fp32 and bf16). `--json PATH` writes the figures as JSON.

`--gpu` (CUDA; says so in one line and exits 0 without it): ViT-B/16 at 224 and the guide's size in bf16, ours on
each attention path (reference, SDPA, flex; `attn_impl="auto"` picks flex there), eager and under torch.compile,
against timm's VisionTransformerRelPos eager and compiled, one variant after another on the otherwise idle GPU:
images/s, MFU against the bf16 matmul peak measured in the same run (8192x8192), and peak memory
(`torch.cuda.max_memory_allocated` of the variant alone). Variants run in order of importance within a time budget
(`--budget-s`, default 150 s, so that the run ends in about 3 minutes on an H200); the rest are listed as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rpb import VisionTransformer, select_attn_impl

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


GPU_BATCH = {"guide": 1024, "vit_b16": 256}  # enough work per step to fill an H200


def ours(
    size: Size, use_relative_position: bool = True, class_token_last_block: bool = True, attn_impl: str = "auto"
) -> nn.Module:
    """The guide's model: a 2d bias over the whole grid in every block, no absolute position embedding."""
    return VisionTransformer(
        img_size=size.img_size, patch_size=size.patch_size, in_channels=size.in_channels, num_classes=10,
        embed_dim=size.embed_dim, depth=size.depth, num_heads=size.num_heads,
        use_relative_position=use_relative_position, class_token_last_block=class_token_last_block,
        attn_impl=attn_impl,
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
        variants["ours w/o bias"] = lambda: ours(size, use_relative_position=False)  # no position at all
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


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument(
        "--gpu", action="store_true",
        help="CUDA: ViT-B/16 and the guide's size in bf16, each attention path eager and compiled, against timm",
    )  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=150.0, help="--gpu: seconds after which variants are skipped")
    parser.add_argument("--json", type=str, default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    device = "cpu"
    if args.gpu:
        if not torch.cuda.is_available():
            print("bench_model --gpu: no CUDA device is visible to torch; nothing to measure.")
            return 0
        return bench_gpu(args)
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
    if args.json:
        write_json(args.json, device, peaks, rows)
    return 0


def write_json(path: str, device: str, peaks: dict, rows: list[dict], **extra) -> None:
    """The figures of one run: device, torch, matmul peaks (FLOP/s), one row per (size, precision, variant)."""
    record = {"device": device, "torch": torch.__version__, "peak_flops": peaks, "rows": rows, **extra}
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"figures written to {path}")


# --- CUDA ---------------------------------------------------------------------------------------------------


def gpu_variants() -> list[tuple[str, str, str, bool]]:
    """(size key, model, attention path, compiled), in the order they are measured: the most telling first, so a
    run cut short by the budget still has them."""
    sizes = ("vit_b16", "guide")
    order = []
    for key in sizes:  # eager: timm and ours on each path (flex is what auto picks on CUDA)
        order += [(key, "timm", "timm", False)] + [(key, "ours", i, False) for i in ("flex", "sdpa", "reference")]
    for key in sizes:  # compiled: the path auto picks and timm, then the other paths
        order += [(key, "ours", "flex", True), (key, "timm", "timm", True)]
    order += [(key, "ours", impl, True) for key in sizes for impl in ("sdpa", "reference")]
    return order


def _measure_gpu(model: nn.Module, size: Size, compiled: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s, peak GiB) of training steps of `model` alone on the GPU, bf16 autocast."""
    torch.cuda.reset_peak_memory_stats()
    step = make_step(model, size, torch.bfloat16, "cuda", compiled)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / args.iters)
    return size.batch / statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def bench_gpu(args: argparse.Namespace) -> int:
    """The `--gpu` run: see the module docstring. Returns 0."""
    from dataclasses import replace

    start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = True
    # one compiled model per path and size, and flex kernels per shape (197 and, in the last block, 1 query)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    args.iters, args.rounds, args.warmup = max(args.iters, 5), max(args.rounds, 5), max(args.warmup, 3)
    peak = matmul_peak(torch.bfloat16, "cuda", n=8192, reps=10)
    auto = select_attn_impl(torch.__version__, "cuda", has_bias=True, bias_requires_grad=True, inputs_require_grad=True)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 matmul peak {peak / 1e12:.0f} "
          f"TFLOP/s; attn_impl='auto' picks {auto!r} here", flush=True)  # fmt: skip
    sizes = {key: replace(SIZES[key], batch=GPU_BATCH[key]) for key in GPU_BATCH}
    flops: dict[tuple[str, str], float] = {}
    rows, skipped = [], []
    for key, name, impl, compiled in gpu_variants():
        label = f"{name} {impl}" if name == "ours" else name
        label += " compiled" if compiled else ""
        if time.perf_counter() - start > args.budget_s:
            skipped.append(f"{sizes[key].name}: {label}")
            continue
        size = sizes[key]
        if (key, name) not in flops:  # the same maths on every path: counted once, on the reference for ours
            model = timm_relpos(size) if name == "timm" else ours(size, attn_impl="reference")
            flops[(key, name)] = step_flops(model, size, "cuda")
            del model
        t0 = time.perf_counter()
        try:
            model = timm_relpos(size) if name == "timm" else ours(size, attn_impl=impl)
            img_s, mem = _measure_gpu(model, size, compiled, args)
        except Exception as err:  # one failing variant (a compiler error) must not cost the others
            print(f"  {size.name} {label}: failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
            rows.append({"size": size.name, "model": label, "impl": impl, "compiled": compiled, "error": repr(err)})
            continue
        finally:
            model = None
            gc.collect()
            torch.cuda.empty_cache()
        mfu = flops[(key, name)] / size.batch * img_s / peak
        rows.append({"size": size.name, "precision": "bf16", "batch": size.batch, "model": label, "impl": impl,
                     "compiled": compiled, "img_s": img_s, "mfu": mfu, "peak_mem_gib": mem,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        print(f"  {size.name} {label}: {img_s:.0f} img/s, MFU {100 * mfu:.1f}%, peak {mem:.1f} GiB "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    for r in rows:
        base = next((t for t in rows if t["size"] == r["size"] and t["model"] == "timm" and "img_s" in t), None)
        r["vs_timm"] = r["img_s"] / base["img_s"] if base and "img_s" in r else None
    print(f"\n{'size':<26} {'model':<24} {'batch':>5} {'img/s':>8} {'ours/timm':>9} {'MFU':>6} {'peak GiB':>8}")
    for r in rows:
        if "img_s" not in r:
            print(f"{r['size']:<26} {r['model']:<24} failed")
            continue
        ratio = f"{r['vs_timm']:.2f}x" if r["vs_timm"] is not None else ""
        print(f"{r['size']:<26} {r['model']:<24} {r['batch']:>5} {r['img_s']:>8.0f} {ratio:>9} "
              f"{100 * r['mfu']:>5.1f}% {r['peak_mem_gib']:>8.1f}")  # fmt: skip
    if skipped:
        print(f"skipped (past the {args.budget_s:.0f} s budget): " + "; ".join(skipped))
    print(
        f"MFU: model FLOPs of a step (forward + backward) per second over the measured bf16 peak. "
        f"Total {time.perf_counter() - start:.0f} s."
    )
    if args.json:
        write_json(args.json, "cuda", {"bf16": peak}, rows, device_name=torch.cuda.get_device_name(),
                   auto_impl=auto, skipped=skipped)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
