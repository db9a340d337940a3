"""A fake `train(cfg, on_epoch_end)` that follows the training contract in milliseconds.

Accuracy is a smooth function of the trial's lr and window size, rising with the epochs; lr above 0.05 diverges.
It writes the run folder's summary.json, metrics.jsonl and a `checkpoints/last/train_state.json` each epoch, and
resumes from `cfg.resume`. Env knobs: FAKE_TRAIN_SLEEP (seconds per epoch), FAKE_TRAIN_FAIL (raise in epoch 1),
FAKE_TRAIN_HOLD (a file: every trial after this process's first waits until it exists, up to 120 s),
FAKE_TRAIN_ENV_LOG (a folder: the process's first trial writes <pid>.json, whether torch was imported and its
OMP_NUM_THREADS).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def quality(cfg) -> float:
    lr = float(cfg.optim.lr)
    wh = int(cfg.model.rpb.window_size[0])
    return 0.95 - 0.08 * (math.log10(lr) - math.log10(3e-3)) ** 2 - 0.02 * abs(wh - 5)


def _save_state(run_dir: Path, epoch: int) -> None:
    """checkpoints/last/train_state.json, complete or absent (as experiments.checkpoint saves: write, then rename)."""
    last = run_dir / "checkpoints" / "last"
    last.mkdir(parents=True, exist_ok=True)
    tmp = last / "train_state.json.tmp"
    tmp.write_text(json.dumps({"epoch": epoch}))
    os.replace(tmp, last / "train_state.json")


_TRAINED = []  # the trials this process started


def _hold() -> None:
    gate = os.environ.get("FAKE_TRAIN_HOLD")
    deadline = time.monotonic() + 120
    while gate and _TRAINED and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = os.environ.get("FAKE_TRAIN_ENV_LOG")
    if log and not _TRAINED:
        seen = {"torch": "torch" in sys.modules, "omp": os.environ.get("OMP_NUM_THREADS")}
        (Path(log) / f"{os.getpid()}.json").write_text(json.dumps(seen))
    _TRAINED.append(1)


def train(cfg, on_epoch_end=None) -> dict:
    _hold()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    if cfg.resume:
        state = Path(cfg.resume) / "checkpoints" / "last" / "train_state.json"
        start = json.loads(state.read_text())["epoch"]
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "resumed_from_epoch": start}))
    sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0"))
    q, best, status, reason, acc, epoch = quality(cfg), 0.0, "completed", "", 0.0, start
    for epoch in range(start + 1, int(cfg.trainer.epochs) + 1):
        if os.environ.get("FAKE_TRAIN_FAIL"):
            raise RuntimeError("fake failure")
        if sleep:
            time.sleep(sleep)
        if float(cfg.optim.lr) > 0.05:
            status, reason, acc = "diverged", f"non-finite loss in epoch {epoch}", float("nan")
            break
        acc = q * (1 - 0.5**epoch)
        best = max(best, acc)
        metrics = {
            "epoch": epoch,
            "val_accuracy": acc,
            "val_loss": 1 - acc,
            "train_loss": 1 - acc,
            "train_accuracy": acc,
            "learning_rate": float(cfg.optim.lr),
            "epoch_time": sleep,
        }
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        _save_state(run_dir, epoch)
        decision = on_epoch_end(epoch, metrics) if on_epoch_end is not None else None
        if decision is not None:
            status, reason = decision, f"stopped by the callback after epoch {epoch}"
            break
    result = {
        "status": status,
        "reason": reason,
        "best_val_accuracy": best,
        "best_epoch": epoch,
        "epochs_run": epoch - start,
        "val_accuracy": acc,
        "val_loss": 1 - acc,
        "train_loss": 1 - acc,
        "run_dir": str(run_dir),
        "wandb_run_id": OmegaConf.select(cfg, "tracker.wandb.id"),  # None with tracker=none
        "resumed_from_epoch": start,
    }
    (run_dir / "summary.json").write_text(json.dumps(result))
    return result
