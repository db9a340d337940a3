"""`train(cfg, on_epoch_end=None) -> metrics`: one Accelerate training loop, read top to bottom.

Runs unchanged on a CPU, one GPU or N processes (`accelerate launch --multi_gpu --num_processes N -m
experiments.cli ...`). The contract with sweeps and dashboards: the callback, the returned dict, the logged keys
and the run folder (config.yaml, metrics.jsonl, summary.json, checkpoints/, bias/, wandb/, tensorboard/).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoint import (
    TrainState,
    append_jsonl,
    atomic_write_text,
    load_last,
    save_checkpoint,
    save_last,
    truncate_jsonl,
)
from experiments.config import build_model, to_yaml, validate_config
from experiments.config_errors import ConfigError
from experiments.engine import evaluate, train_epoch

__all__ = ["EpochCallback", "train"]

EpochCallback = Callable[[int, dict[str, float]], "str | None"]


def train(cfg: DictConfig, on_epoch_end: EpochCallback | None = None) -> dict[str, Any]:
    """Train the configured model; returns {status, reason, best_val_accuracy, best_epoch, epochs_run,
    val_accuracy, val_loss, train_loss, run_dir, wandb_run_id}.

    Args:
        cfg: a config from `compose_config` (validated again here). With `cfg.resume=<run dir>` the run
            continues from that folder's last checkpoint with that folder's config.
        on_epoch_end: called on every process with (epoch, global epoch metrics); the main process's answer is
            broadcast: None continues, a string stops the run with that string as its status (e.g. "pruned").

    A non-finite loss ends the run with status "diverged" (no exception, last good checkpoint kept). Other
    exceptions propagate once the trackers are finished as "failed" ("interrupted" for KeyboardInterrupt).
    """
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    from experiments.data import build_dataloaders
    from experiments.optimizers import build_optimizer, build_scheduler
    from experiments.precision import make_accelerator
    from experiments.tracking import NoOpTracker, build_tracker

    cfg = _resume_config(cfg) if cfg.get("resume") else validate_config(cfg)
    tc = cfg.trainer
    accelerator = make_accelerator(
        tc.mixed_precision, cpu=tc.cpu, grad_accum_steps=tc.grad_accum_steps, data_seed=cfg.seed
    )
    is_main = accelerator.is_main_process
    run_dir = _run_dir(cfg, broadcast_object_list)
    cfg.run_dir = str(run_dir)

    # --- model, data, optimizer, schedule ---------------------------------------------------------------------
    set_seed(cfg.seed)  # same initial weights on every process and in every run with this seed
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    try:
        train_loader, val_loader = build_dataloaders(cfg.data, seed=cfg.seed)
    except ValueError as exc:  # data.py names the data.* key at fault
        raise ConfigError(str(exc)) from None
    if tc.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # Limited epochs end on an optimizer step, so accumulation never spills into the next epoch.
    max_batches = len(train_loader)
    if tc.limit_train_batches is not None and tc.limit_train_batches < max_batches:
        max_batches = max(tc.grad_accum_steps, tc.limit_train_batches // tc.grad_accum_steps * tc.grad_accum_steps)
    steps_per_epoch = math.ceil(max_batches / tc.grad_accum_steps)
    scheduler = build_scheduler(
        optimizer, cfg.schedule, base_lr=cfg.optim.lr, steps_per_epoch=steps_per_epoch, epochs=tc.epochs
    )
    scheduler = accelerator.prepare(scheduler)  # saved and restored with the state; stepped by train_epoch
    train_criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    val_criterion = torch.nn.CrossEntropyLoss()  # plain cross-entropy: comparable across label smoothing

    # --- run folder, resume, tracker -------------------------------------------------------------------------
    config_yaml = to_yaml(cfg)  # resolved, secrets masked: saved with the run and with every checkpoint
    plain_config = OmegaConf.to_container(OmegaConf.create(config_yaml))
    state = TrainState()
    if cfg.resume:
        state = load_last(accelerator, run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        truncate_jsonl(run_dir / "metrics.jsonl", state.epoch)
    tracker = build_tracker(cfg.tracker, is_main_process=is_main)
    tracker.start(plain_config, run_dir)
    # Heatmaps and bias statistics only for a tracker that keeps them (not for tracker=none, W&B mode=disabled, ...)
    log_images = is_main and not isinstance(tracker, NoOpTracker)

    def log(metrics: dict[str, float], step: int) -> None:  # the one place metrics leave the loop
        tracker.log(metrics, step=step)

    result = _result(cfg, state, "running", "", tracker)
    if is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2))
    status, reason, stopping = "completed", f"trained {tc.epochs} epochs", False
    try:
        for epoch in range(state.epoch + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            train_loader.set_epoch(epoch)  # shuffle order = f(seed, epoch): same on resume and on N processes
            bar = tqdm(
                total=max_batches,
                desc=f"epoch {epoch}/{tc.epochs}",
                leave=False,
                disable=not (is_main and tc.progress_bar),
            )
            train_m = train_epoch(
                model, train_loader, train_criterion, optimizer, accelerator.device, epoch,
                accelerator=accelerator, scheduler=scheduler, clip_grad_norm=tc.clip_grad_norm,
                max_batches=max_batches, global_step=state.global_step,
                log_every_n_steps=tc.log_every_n_steps, log_step=lambda step, m: log(m, step), progress=bar,
            )  # fmt: skip
            bar.close()
            state.global_step = train_m["global_step"]
            if train_m["diverged"]:
                status = "diverged"
                reason = (
                    f"non-finite training loss in epoch {epoch} (by step {state.global_step}); the last good "
                    f"checkpoint is epoch {state.epoch}: lower optim.lr or set trainer.clip_grad_norm"
                )
                break
            val_m = evaluate(
                model,
                val_loader,
                val_criterion,
                accelerator.device,
                accelerator=accelerator,
                max_batches=tc.limit_val_batches,
            )
            metrics = {
                "epoch": epoch,
                "train_loss": train_m["loss"],
                "train_accuracy": train_m["accuracy"],
                "val_loss": val_m["loss"],
                "val_accuracy": val_m["accuracy"],
                "learning_rate": optimizer.param_groups[0]["lr"],
                "epoch_time": time.perf_counter() - t0,
            }
            if not math.isfinite(val_m["loss"]):
                status, reason = "diverged", f"non-finite validation loss after epoch {epoch}: lower optim.lr"
                break

            # Best model by val accuracy; early stopping on the monitor (the guide's patience recipe).
            if metrics["val_accuracy"] > state.best_val_accuracy:
                state.best_val_accuracy, state.best_epoch = metrics["val_accuracy"], epoch
                if is_main and tc.save_checkpoints:
                    best_model = accelerator.unwrap_model(model, keep_torch_compile=False)
                    best_path = run_dir / "checkpoints" / "best.pt"
                    save_checkpoint(best_model, None, epoch, metrics, best_path, config=plain_config)
            sign = 1.0 if tc.early_stopping_monitor == "val_loss" else -1.0  # lower is better after the sign
            if state.best_monitor is None or sign * metrics[tc.early_stopping_monitor] < sign * state.best_monitor:
                state.best_monitor, state.bad_epochs = metrics[tc.early_stopping_monitor], 0
            else:
                state.bad_epochs += 1
            if tc.early_stopping_patience is not None and state.bad_epochs >= tc.early_stopping_patience:
                status, stopping = "early_stopped", True
                reason = f"{tc.early_stopping_monitor} did not improve for {state.bad_epochs} epochs (best {state.best_monitor:.4f})"

            decision = [on_epoch_end(epoch, dict(metrics)) if on_epoch_end is not None else None]
            broadcast_object_list(decision, from_process=0)  # every process follows the main one
            if decision[0] is not None:
                status, stopping = str(decision[0]), True
                reason = f"on_epoch_end returned {decision[0]!r} after epoch {epoch}"

            state.epoch, state.last_metrics = epoch, metrics
            # The epoch's record first, then its checkpoint: a kill in between leaves a record beyond the
            # checkpoint, which resume drops (truncate_jsonl) and writes again, never an epoch without a record.
            if is_main:
                append_jsonl(run_dir / "metrics.jsonl", metrics | ({"status": status} if stopping else {}))
                # kept current while the run goes on: a run killed mid-way still says how far it got
                progress = _result(cfg, state, "running", f"epoch {epoch}/{tc.epochs}", tracker)
                atomic_write_text(run_dir / "summary.json", json.dumps(progress, indent=2))
            if tc.save_checkpoints:
                save_last(accelerator, run_dir, state, config_yaml)
            epoch_log = {k: v for k, v in metrics.items() if k != "epoch"}
            epoch_log |= {f"grad_norm/{k}": v for k, v in train_m["grad_norms"].items()}
            if log_images and tc.heatmap_every_n_epochs and epoch % tc.heatmap_every_n_epochs == 0:
                epoch_log |= _log_bias(accelerator.unwrap_model(model, keep_torch_compile=False), tracker, epoch)
            log(epoch_log, epoch)
            accelerator.print(_summary_line(metrics, tc.epochs, train_m["images"]), flush=True)
            if stopping:
                break
    except BaseException as exc:
        failed = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        result = _result(cfg, state, failed, f"{type(exc).__name__}: {exc}", tracker)
        if is_main:
            atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2))
        tracker.finish(failed, summary=result)
        raise

    if status == "diverged":
        accelerator.print(f"[rpb-train] diverged: {reason}.")
    elif is_main:
        _write_final_bias(accelerator.unwrap_model(model, keep_torch_compile=False), run_dir)
    result = _result(cfg, state, status, reason, tracker)
    if is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2))
    tracker.finish(status, summary=result)
    accelerator.wait_for_everyone()
    return result


def _resume_config(cfg: DictConfig) -> DictConfig:
    """The config saved in the run dir named by `cfg.resume` (the run continues there as it was configured)."""
    run_dir = Path(cfg.resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={str(run_dir)!r} is not a run folder (no config.yaml): give the folder of a run.")
    resumed = validate_config(OmegaConf.load(saved))
    resumed.run_dir, resumed.resume = str(run_dir), str(run_dir)
    return resumed


def _run_dir(cfg: DictConfig, broadcast: Callable) -> Path:
    """cfg.run_dir, or <output_dir>/<name>-<timestamp> chosen by the main process (all processes agree)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = [datetime.now().strftime("%Y%m%d-%H%M%S-%f")]
    broadcast(stamp, from_process=0)
    return Path(cfg.output_dir) / f"{cfg.name}-{stamp[0]}"


def _log_bias(model: torch.nn.Module, tracker: Any, epoch: int) -> dict[str, float]:
    """Heatmap images (logged here) and per-head statistics (returned for the epoch's log call).

    The labelled matplotlib figures (offsets on the axes, colorbar) are written once, at the end of the run, to
    <run_dir>/bias/; per epoch the trackers get the same maps drawn with numpy in the same colours."""
    from experiments.tracking import bias_heatmap_images  # numpy: ~2 ms per epoch (matplotlib: ~7% of an epoch)
    from rpb.inspect import bias_statistics

    images = bias_heatmap_images(model)
    if images:
        tracker.log_images(images, step=epoch)
    return {f"bias_stats/{k}": v for k, v in bias_statistics(model).items()}


def _write_final_bias(model: torch.nn.Module, run_dir: Path) -> None:
    from rpb.inspect import bias_offset_maps

    maps = bias_offset_maps(model)
    if not maps:
        return
    from rpb.plot import save_bias_heatmaps

    (run_dir / "bias").mkdir(parents=True, exist_ok=True)
    torch.save(maps, run_dir / "bias" / "offset_maps.pt")
    save_bias_heatmaps(model, run_dir / "bias")


def _result(cfg: DictConfig, state: TrainState, status: str, reason: str, tracker: Any) -> dict[str, Any]:
    last = state.last_metrics
    return {
        "status": status,
        "reason": reason,
        "best_val_accuracy": max(state.best_val_accuracy, 0.0),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "train_loss": last.get("train_loss"),
        "run_dir": str(cfg.run_dir),
        "wandb_run_id": getattr(tracker, "run_id", None),
    }


def _summary_line(m: dict[str, float], epochs: int, images: int) -> str:
    return (
        f"epoch {m['epoch']}/{epochs} | train loss {m['train_loss']:.4f} acc {m['train_accuracy']:.4f} | "
        f"val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f} | lr {m['learning_rate']:.2e} | "
        f"{images / max(m['epoch_time'], 1e-9):.0f} img/s | {m['epoch_time']:.1f}s"
    )
