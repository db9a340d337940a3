"""What a study's bookkeeping costs: rpb-lab's `run_study` against plain Optuna, per trial, side by side.

    python -m sweeps.bench_overhead                                   # journal, 100 and 500 trials
    python -m sweeps.bench_overhead --sizes 100 500 2000 --storages journal postgres
    python -m sweeps.bench_overhead --workers 1 2 4 8 --sizes         # worker start time only
    python -m sweeps.bench_overhead --repeats 3                       # medians of 3 interleaved runs

Both sides run the same study in fresh processes, interleaved (Optuna, rpb-lab, at each size and storage): a TPE
sampler (seed 0, the project's n_startup_trials), the median pruner, the same five parameters, and a trainer that
reports 5 epochs and returns at once (on the rpb-lab side marked `reads_config_only`, as `experiments.train.train`
is, so it gets its config as train() would). Each side imports torch first, as a training process has it loaded.
Printed: CPU and wall seconds per trial (CPU is what the machine's load disturbs least), their ratio, the growth of the
per-trial CPU with the trials already in the study (a least-squares line a + b x trials), and, on PostgreSQL, the
commits per trial (pg_stat_database). `--workers` times how long `sweep.workers=N` takes to start its workers
(from the command's start to each worker's first trial).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 5
_FIRST_CALL_ENV = "RPB_BENCH_FIRST_CALLS"  # a folder where each worker notes the time of its first trial
_FIRST_TRIAL_HOLD_S = 3.0  # a worker's first trial lasts this long when worker start is timed


def _value(params: dict, epoch: int) -> float:
    """A smooth, deterministic curve of the params: the same for both sides."""
    lr = float(params.get("optim.lr", 1e-3))
    return (1 - 0.1 * abs(math.log10(lr) + 2.7)) * (1 - 0.5**epoch)


_CPU: list[float] = []
_WALL: list[float] = []


def fake_train(cfg, on_epoch_end=None) -> dict:
    """`train(cfg, on_epoch_end)` reporting EPOCHS epochs at once (the rpb-lab side's trainer)."""
    _CPU.append(time.process_time())
    _WALL.append(time.perf_counter())
    folder = os.environ.get(_FIRST_CALL_ENV)
    if folder and not (Path(folder) / str(os.getpid())).exists():
        (Path(folder) / str(os.getpid())).write_text(repr(time.time()))
        time.sleep(_FIRST_TRIAL_HOLD_S)  # so that the workers starting later still find a trial to take
    params = {"optim.lr": cfg.optim.lr}
    status, epoch = "completed", 0
    for epoch in range(1, EPOCHS + 1):
        value = _value(params, epoch)
        decision = on_epoch_end(epoch, {"val_accuracy": value}) if on_epoch_end else None
        if decision is not None:
            status = decision
            break
    return {"status": status, "reason": "", "epochs_run": epoch, "val_accuracy": value, "run_dir": cfg.run_dir}


fake_train.reads_config_only = True  # as experiments.train.train's (it validates a config of its own at once)


def _plain_optuna(storage, n: int) -> None:
    import optuna

    study = optuna.create_study(
        study_name="bench", storage=storage, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )  # fmt: skip

    def objective(trial):
        _CPU.append(time.process_time())
        _WALL.append(time.perf_counter())
        params = {
            "optim.lr": trial.suggest_float("optim.lr", 5e-4, 4e-3, log=True),
            "optim.weight_decay": trial.suggest_float("optim.weight_decay", 1e-3, 0.2, log=True),
            "model.drop_rate": trial.suggest_float("model.drop_rate", 0.0, 0.3),
            "model.rpb.window_size": trial.suggest_categorical("model.rpb.window_size", ["3x3", "5x5", "7x7"]),
            "model.rpb.init_std": trial.suggest_float("model.rpb.init_std", 1e-3, 0.1, log=True),
        }
        value = 0.0
        for epoch in range(1, EPOCHS + 1):
            value = _value(params, epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n)


def _rpb_overrides(out: Path, n: int, url: str | None, workers: int = 1) -> list[str]:
    return [
        f"sweep.output_dir={out}", "sweep.study_name=bench", f"sweep.n_trials={n}", f"sweep.workers={workers}",
        f"sweep.storage={url or 'null'}", "sweep.train_fn=sweeps.bench_overhead:fake_train",
        f"trainer.epochs={EPOCHS}", "sweep.pruner.n_warmup_steps=2", "sweep.enqueue_defaults=false",
        "tracker.wandb.mode=disabled", "tracker.tensorboard.enabled=false", "trainer.progress_bar=false",
    ]  # fmt: skip


def _commits(url: str | None) -> int | None:
    if not url:
        return None
    import psycopg

    from sweeps.storage import _normalise_url

    plain = _normalise_url(url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def child(side: str, n: int, url: str | None, out: Path) -> dict:
    """One side of one size, in this (fresh) process."""
    import contextlib
    import io

    import torch  # noqa: F401  (a training process has torch loaded: its ~200k objects weigh on gc)

    before = _commits(url)
    if side == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = url
        if url is None:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(out / "bench.journal")))
        _plain_optuna(storage, n)
    else:
        from experiments.config import compose_config
        from sweeps.study import run_study

        cfg = compose_config(_rpb_overrides(out, n, url), config_name="sweep")
        with contextlib.redirect_stdout(io.StringIO()):  # a trial line per trial: not what is measured
            run_study(cfg, fake_train)  # this module's: its timings land in this process's lists
    after = _commits(url)
    _CPU.append(time.process_time())
    _WALL.append(time.perf_counter())
    return {
        "cpu": [b - a for a, b in itertools.pairwise(_CPU)],
        "wall": [b - a for a, b in itertools.pairwise(_WALL)],
        "commits": None if before is None else after - before,
    }


def _fresh(side: str, n: int, url: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        if url:  # a database of its own, so the study name and the commit count are this run's
            url = _fresh_database(url)
        try:
            cmd = [sys.executable, "-m", "sweeps.bench_overhead", "--child", side, "--n", str(n), "--dir", tmp]
            cmd += ["--postgres", url] if url else []
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"{side} at {n} trials failed:\n{done.stderr[-3000:]}")
            return json.loads(Path(tmp, "result.json").read_text())
        finally:
            if url:
                _drop_database(url)


def _admin(url: str):
    import psycopg

    from sweeps.storage import _normalise_url

    plain = _normalise_url(url).replace("postgresql+psycopg://", "postgresql://")
    base, _, _ = plain.rpartition("/")
    return psycopg.connect(f"{base}/postgres", autocommit=True), base


def _fresh_database(url: str) -> str:
    conn, base = _admin(url)
    name = f"rpb_bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def _drop_database(url: str) -> None:
    conn, _ = _admin(url)
    with conn:
        conn.execute(f"DROP DATABASE IF EXISTS {url.rpartition('/')[2]} WITH (FORCE)")


def growth(cpu: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of per-trial CPU = a + b x trials already in the study; b per 1,000 trials."""
    xs = list(range(len(cpu)))
    if len(xs) < 3:
        return (statistics.fmean(cpu) if cpu else math.nan), math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(cpu)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, cpu)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b * 1000


def worker_start(workers: int) -> list[float]:
    """Seconds from `rpb-sweep sweep.workers=N` starting to each worker's first trial."""
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        calls = Path(tmp, "first")
        calls.mkdir()
        cmd = [sys.executable, "-m", "sweeps.cli", *_rpb_overrides(Path(tmp), 2 * workers, None, workers)]
        env = {**os.environ, _FIRST_CALL_ENV: str(calls), "WANDB_MODE": "disabled"}
        start = time.time()
        subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=True)
        starts = sorted(float(p.read_text()) - start for p in calls.iterdir())
        if len(starts) < workers:
            raise RuntimeError(f"only {len(starts)} of {workers} workers ran a trial: the others started too late")
        return starts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[100, 500], help="trials per study")
    p.add_argument("--storages", nargs="+", default=["journal"], choices=("journal", "postgres"))
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="server to create the benchmark's databases on (each run gets a fresh one)")  # fmt: skip
    p.add_argument("--workers", type=int, nargs="*", default=[], help="time worker start at these counts")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each side at each size, interleaved; the medians of their per-trial means are printed "
                        "(this shared machine's speed drifts by tens of percent between runs)")  # fmt: skip
    p.add_argument("--child", choices=("optuna", "rpb"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(args.child, args.n, args.postgres if "--postgres" in (argv or sys.argv) else None,
                       Path(args.dir))  # fmt: skip
        Path(args.dir, "result.json").write_text(json.dumps(result))
        return
    if args.sizes:
        print(f"per trial, {EPOCHS} reported epochs each; TPE + median pruner; fresh processes, interleaved; medians of "
              f"{max(1, args.repeats)} run(s), the ratio of each pair of runs")  # fmt: skip
        print(f"{'storage':>8} {'trials':>6} | {'optuna CPU':>10} {'rpb CPU':>9} {'ratio':>6} | {'optuna wall':>11} "
              f"{'rpb wall':>9} | {'growth b/1k: optuna':>19} {'rpb':>7} | commits optuna rpb")  # fmt: skip
    for storage in args.storages if args.sizes else []:
        url = args.postgres if storage == "postgres" else None
        for n in args.sizes:
            runs = [(_fresh("optuna", n, url), _fresh("rpb", n, url)) for _ in range(max(1, args.repeats))]
            plain, ours = runs[0]
            oc = statistics.median(statistics.fmean(p["cpu"]) for p, _ in runs)
            rc = statistics.median(statistics.fmean(r["cpu"]) for _, r in runs)
            ow = statistics.median(statistics.fmean(p["wall"]) for p, _ in runs)
            rw = statistics.median(statistics.fmean(r["wall"]) for _, r in runs)
            ratio = statistics.median(statistics.fmean(r["cpu"]) / statistics.fmean(p["cpu"]) for p, r in runs)
            ob = statistics.median(growth(p["cpu"])[1] for p, _ in runs)
            rb = statistics.median(growth(r["cpu"])[1] for _, r in runs)
            commits = (
                f"{plain['commits'] / n:6.1f} {ours['commits'] / n:5.1f}" if plain["commits"] is not None else "   n/a"
            )
            print(f"{storage:>8} {n:>6} | {oc * 1e3:7.1f} ms {rc * 1e3:6.1f} ms {ratio:5.2f}x | {ow * 1e3:8.1f} ms "
                  f"{rw * 1e3:6.1f} ms | {ob * 1e3:16.2f} ms {rb * 1e3:4.2f} ms | {commits}", flush=True)  # fmt: skip
    for workers in args.workers:
        starts = worker_start(workers)
        print(f"sweep.workers={workers}: first trial of each worker after "
              f"{', '.join(f'{s:.1f}' for s in starts)} s (last {max(starts):.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
