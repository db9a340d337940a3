"""Do the defaults learn within their budgets? `python -m experiments.bench_defaults [--quick]`.

Runs the two commands a new user runs first, each as that user would: a fresh process at its defaults, in a
temporary folder, W&B offline.
  - `rpb-train` for 3 seeds (`seed=0,1,2`; `run_dir` set so its folder is known): the median of the best validation
    accuracies must reach 0.95 and every run must end within 120 s;
  - `rpb-sweep` once (the README's first command): its best complete trial must reach 0.95, and the sweep plus the
    environment's setup (`--setup-seconds`, the README's measured first-use figure; not measured here) must end
    within 300 s.
Prints one table: each measurement, its target and PASS/FAIL, the training throughput (median img/s over epochs,
from the epoch lines) and the machine's load, since other processes on the same cores slow every figure.

`--quick` checks the script itself in about a minute: one seed, 2-epoch runs and a 2-trial sweep; it judges nothing.
`--threads N` sets OMP_NUM_THREADS for the runs: on cores that other processes keep busy, torch's default of one
thread per core can run 10x slower than one thread (its threads wait on each other), so say which was used.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from experiments.result import COMPLETE_STATUSES, PRUNED
from experiments.run_dir import RunDir

__all__ = ["TARGETS", "Measurement", "Targets", "main", "run_sweep", "run_train"]


@dataclass(frozen=True)
class Targets:
    """The budgets of issue 13: accuracy (fraction) and wall time (seconds) on 2 CPU cores."""

    train_accuracy: float = 0.95  # median over the seeds of rpb-train's best val accuracy
    train_seconds: float = 120.0  # each rpb-train run, process start to exit
    sweep_accuracy: float = 0.95  # the sweep's best complete trial
    sweep_seconds: float = 300.0  # the sweep plus the environment's setup


TARGETS = Targets()
_IMG_PER_SEC = re.compile(r"\|\s*(\d+) img/s \|")


@dataclass(frozen=True)
class Measurement:
    """One row of the table: what ran, its accuracy and wall time, and the targets they are held to."""

    what: str
    accuracy: float
    seconds: float
    accuracy_target: float | None = None
    seconds_target: float | None = None
    images_per_sec: float | None = None  # training throughput (median over epochs), None where not printed
    note: str = ""

    def passed(self) -> bool:
        """True when every target the row has is met (a row without targets passes)."""
        ok_acc = self.accuracy_target is None or self.accuracy >= self.accuracy_target
        ok_time = self.seconds_target is None or self.seconds <= self.seconds_target
        return ok_acc and ok_time


def _run(args: list[str], cwd: Path, label: str) -> tuple[float, str]:
    """Run `args` in `cwd` with W&B offline; returns (wall seconds, stdout). Raises RuntimeError on failure."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{label} exited with status {proc.returncode}:\n{tail}")
    return seconds, proc.stdout


def run_train(seed: int, workdir: Path, overrides: list[str] = ()) -> Measurement:
    """`rpb-train seed=<seed>` at its defaults in `workdir`; the row of its best val accuracy and wall time."""
    run_dir = workdir / f"train-seed{seed}"
    args = [sys.executable, "-m", "experiments.cli", f"seed={seed}", f"run_dir={run_dir}", *overrides]
    seconds, stdout = _run(args, workdir, f"rpb-train seed={seed}")
    summary = RunDir(run_dir).read_summary()
    rates = [float(m) for m in _IMG_PER_SEC.findall(stdout)]
    note = f"last {summary['val_accuracy']:.3f}, best at epoch {summary['best_epoch']}/{summary['epochs_run']}"
    return Measurement(
        f"rpb-train seed={seed}",
        float(summary["best_val_accuracy"]),
        seconds,
        seconds_target=TARGETS.train_seconds,
        images_per_sec=statistics.median(rates) if rates else None,
        note=note,
    )


def run_sweep(workdir: Path, setup_seconds: float, overrides: list[str] = ()) -> Measurement:
    """`rpb-sweep` at its defaults in `workdir`; the row of its best complete trial and wall time plus setup."""
    seconds, _ = _run([sys.executable, "-m", "sweeps.cli", *overrides], workdir, "rpb-sweep")
    trials = sorted((workdir / "runs" / "sweeps").glob("*/trial-*/summary.json"))
    summaries = [RunDir(path.parent).read_summary() for path in trials]
    complete = [s["best_val_accuracy"] for s in summaries if s["status"] in COMPLETE_STATUSES]
    statuses = [s["status"] for s in summaries]
    note = (
        f"{len(summaries)} trials ({statuses.count(PRUNED)} pruned); "
        f"{seconds:.0f} s sweep + {setup_seconds:.0f} s setup"
    )
    return Measurement(
        "rpb-sweep (README's first command)",
        max(complete, default=0.0),
        seconds + setup_seconds,
        accuracy_target=TARGETS.sweep_accuracy,
        seconds_target=TARGETS.sweep_seconds,
        note=note,
    )


def median_row(rows: list[Measurement]) -> Measurement:
    """The rpb-train target row: the median best accuracy over the seeds and the slowest seed's wall time."""
    rates = [r.images_per_sec for r in rows if r.images_per_sec is not None]
    return Measurement(
        f"rpb-train median of {len(rows)} seeds",
        statistics.median(r.accuracy for r in rows),
        max(r.seconds for r in rows),
        accuracy_target=TARGETS.train_accuracy,
        seconds_target=TARGETS.train_seconds,
        images_per_sec=statistics.median(rates) if rates else None,
        note="time: the slowest seed",
    )


def format_table(rows: list[Measurement], judge: bool = True) -> str:
    """The rows as a fixed-width table; `judge=False` (a quick check) prints `-` instead of PASS/FAIL."""
    header = f"{'run':<36} {'val acc':>8} {'target':>8} {'wall s':>8} {'target':>8} {'img/s':>7}  result  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        acc_t = f">={r.accuracy_target:.2f}" if r.accuracy_target is not None else ""
        sec_t = f"<={r.seconds_target:.0f}" if r.seconds_target is not None else ""
        rate = f"{r.images_per_sec:.0f}" if r.images_per_sec is not None else ""
        targeted = r.accuracy_target is not None or r.seconds_target is not None
        result = ("PASS" if r.passed() else "FAIL") if judge and targeted else "-"
        lines.append(
            f"{r.what:<36} {r.accuracy:>8.4f} {acc_t:>8} {r.seconds:>8.1f} {sec_t:>8} {rate:>7}  {result:<6}  {r.note}"
        )
    return "\n".join(lines)


def machine_line() -> str:
    """Threads of the runs, AMX-BF16 (bf16 autocast is fast only with it) and load: the conditions of every figure."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    amx = "yes" if "amx_bf16" in flags else "no"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = os.environ.get("OMP_NUM_THREADS", "torch's default (one per core)")
    return f"{os.cpu_count()} CPUs, threads per run: {threads}, AMX-BF16 {amx}, load average {load:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; the exit status is 1 when a target is missed (0 with --quick)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_defaults", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="check the script: 1 seed, 2 epochs, a 2-trial sweep")
    parser.add_argument("--seeds", type=int, default=3, help="rpb-train seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--setup-seconds", type=float, default=90.0, help="the first-use setup added to the sweep (README: ~90 s)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders under this folder")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: unset)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the runs (see _run)
    seeds = range(1 if args.quick else args.seeds)
    quick = ["trainer.epochs=2"] if args.quick else []
    quick_sweep = [*quick, "sweep.n_trials=2"] if args.quick else []

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench_defaults {started}: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for seed in seeds:
            rows.append(run_train(seed, workdir, quick))
            print(format_table(rows[-1:], judge=not args.quick).splitlines()[-1], flush=True)
        rows.append(median_row(rows))
        rows.append(run_sweep(workdir, args.setup_seconds, quick_sweep))
    print(f"\nafter the runs: {machine_line()}")
    print(format_table(rows, judge=not args.quick))
    if args.quick:
        print("--quick: 2-epoch runs check the script only; the targets are judged by a full run.")
        return 0
    judged = [r for r in rows if r.accuracy_target is not None]
    return 0 if all(r.passed() for r in judged) else 1


if __name__ == "__main__":
    sys.exit(main())
