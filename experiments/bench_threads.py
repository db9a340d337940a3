"""Intra-op threads on a busy machine: 1 thread vs torch's default vs the rule (`experiments.threads`).

    .ci/in-venv python -m experiments.bench_threads [--steps 20] [--repeats 3] [--busy 0 1 2]

With 0, 1 and 2 busy processes of our own beside it (each a Python loop that spins for as long as the benchmark
runs, ended by it), the default model's training step on digits is timed with 1 thread, with torch's default
(one per core) and with the threads the rule picks at that moment; the three are interleaved, so drifting load
hits them alike. It prints ms per step, each one's ratio to 1 thread, and what the rule chose. The rule holds
when its ratio to 1 thread is at most about 1 under load and its time matches the default's on a quiet machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

from experiments.threads import choose_threads


def _spin(stop) -> None:  # a busy process: runs until the benchmark sets `stop` (bounded by its own deadline too)
    deadline = time.monotonic() + 900
    while not stop.is_set() and time.monotonic() < deadline:
        pass


def _step_ms(model, optimizer, batches, threads: int) -> float:
    from experiments.bench_tracking import pure_steps_s

    torch.set_num_threads(threads)
    return pure_steps_s(model, optimizer, batches) / len(batches) * 1000


def main(argv: list[str] | None = None) -> None:
    from experiments.config import build_model, compose_config
    from experiments.data import build_dataloaders

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timings of each setting (median shown)")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside the benchmark")
    args = p.parse_args(argv)

    cfg = compose_config(["tracker=none"])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    train_loader, _ = build_dataloaders(cfg.data, seed=cfg.seed)
    batches = [batch for batch, _ in zip(train_loader, range(args.steps))]
    default = torch.get_num_threads()
    _step_ms(model, optimizer, batches[:3], default)  # warm-up
    print(f"default model, batch {cfg.data.batch_size}, {args.steps} steps a timing, median of {args.repeats}; "
          f"torch's default threads here: {default}")  # fmt: skip
    print(f"{'busy':>4} | {'1 thread':>10} | {'default':>16} | {'rule':>22}")
    ctx = mp.get_context("spawn")
    for busy in args.busy:
        stop = ctx.Event()
        spinners = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for proc in spinners:
            proc.start()
        try:
            time.sleep(1.0 if busy else 0.0)  # let the spinners start
            choice = choose_threads()
            times: dict[str, list[float]] = {"one": [], "default": [], "rule": []}
            for _ in range(args.repeats):
                for name, threads in (("one", 1), ("default", default), ("rule", choice.threads)):
                    times[name].append(_step_ms(model, optimizer, batches, threads))
        finally:
            stop.set()
            for proc in spinners:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
        one, dflt, rule = (statistics.median(times[k]) for k in ("one", "default", "rule"))
        print(f"{busy:>4} | {one:7.1f} ms | {dflt:7.1f} ms {dflt / one:5.2f}x | {rule:7.1f} ms {rule / one:5.2f}x "
              f"({choice.threads} thr)")  # fmt: skip
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
