"""`train(cfg, on_epoch_end=None) -> TrainResult`: one Accelerate training loop, read top to bottom.

Runs unchanged on a CPU, one GPU or N processes (`accelerate launch --multi_gpu --num_processes N -m
experiments.cli ...`). The contract with sweeps and dashboards: the callback, the returned `TrainResult`, the logged keys
and the run folder (`experiments.run_dir.RunDir`: config.yaml, metrics.jsonl, summary.json, checkpoints/, bias/,
wandb/, wandb_run.json, tensorboard/).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.checkpoint import TrainState, last_checkpoint, load_last, save_checkpoint, save_last
from experiments.config import READS_CONFIG_ONLY, build_model, to_yaml, validate_config
from experiments.config_errors import ConfigError
from experiments.engine import evaluate, train_epoch
from experiments.launch import stop_signal
from experiments.metrics import better, metric_direction
from experiments.result import (
    COMPLETED,
    DIVERGED,
    EARLY_STOPPED,
    FAILED,
    FINAL_STATUSES,
    INTERRUPTED,
    RUNNING,
    TrainResult,
    epoch_line,
    plural,
)
from experiments.run_dir import RunDir
from experiments.threads import apply_threads

__all__ = ["SCHEDULE_ON_EXTEND", "EpochCallback", "RunInterrupted", "epoch_line", "extend_run", "plural", "train"]

EpochCallback = Callable[[int, dict[str, float]], "str | None"]
# What `rpb-train resume=RUN trainer.epochs=N` does to the learning-rate schedule (said in --help and the README).
SCHEDULE_ON_EXTEND = (
    "the schedule is recomputed for the new length: warm-up is kept, the cosine decays over the new total, so the "
    "learning rate rises at the resume point to where the longer curve stands"
)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: the trackers are finished as "interrupted"; `result` is what summary.json says."""

    def __init__(self, result: TrainResult):
        super().__init__(result["reason"])
        self.result = result


@dataclass
class _Setup:
    """What the loop trains with, prepared by Accelerate."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    val_loader: Any
    max_batches: int  # training batches per epoch (per process), a whole number of optimizer steps
    num_params: int


@dataclass
class _Session:
    """One session of a run (a resumed run has several): what the helpers below share."""

    cfg: DictConfig
    run: RunDir
    accelerator: Any
    setup: _Setup
    tracker: Any
    config_yaml: str  # resolved, secrets masked: saved with the run and with every checkpoint
    started: float = field(default_factory=time.perf_counter)
    _config_dict: dict | None = None

    def config_dict(self) -> dict:
        """`config_yaml` as plain containers, built once per session: OmegaConf inside the epoch loop costs time,
        and a Ctrl-C that lands inside OmegaConf's list building comes out of its cleanup as a ConfigKeyError (the
        trial recorded as failed, the interrupt lost; seen in the Ctrl-C test of rpb-sweep)."""
        if self._config_dict is None:
            self._config_dict = OmegaConf.to_container(OmegaConf.create(self.config_yaml))
        return self._config_dict

    def lap(self, state: TrainState) -> None:
        """Add the time since the last lap to the run's wall time (`wall_s` counts every session)."""
        now = time.perf_counter()
        state.wall_s, self.started = state.wall_s + now - self.started, now


def train(cfg: DictConfig, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train the configured model; returns its `TrainResult` (status, reason, best_<metric> of every metric,
    best_epoch, epochs_run, last epoch's metrics, num_params, throughput, wall_s, run_dir, wandb_run_id), which
    summary.json holds too and which reads like a dict (`result["status"]`).

    Args:
        cfg: a config from `compose_config` (validated again here). With `cfg.resume=<run dir>` the run
            continues from that folder's last checkpoint with that folder's config (`extend_run` raises its
            trainer.epochs first); a run that already finished is returned as it is, without training or a tracker.
        on_epoch_end: called on every process with (epoch, global epoch metrics); the main process's answer is
            broadcast: None continues, a string stops the run with that string as its status (e.g. "pruned").
            Without it, train() prints one line per epoch (`epoch_line`); a caller with one reports progress itself.

    A non-finite loss ends the run with status "diverged" (no exception, last good checkpoint kept). Ctrl-C
    raises `RunInterrupted` (a KeyboardInterrupt) once the trackers are finished as "interrupted"; other
    exceptions propagate once they are finished as "failed". `wall_s` and `train_images_per_s` count every
    session of the run (a resumed run adds to them).
    """
    from accelerate.utils import broadcast_object_list

    from experiments.precision import make_accelerator
    from experiments.tracking import build_tracker

    started = time.perf_counter()
    cfg = _resume_config(cfg) if cfg.get("resume") else validate_config(cfg)
    tc = cfg.trainer
    accelerator = make_accelerator(
        tc.mixed_precision, cpu=tc.cpu, grad_accum_steps=tc.grad_accum_steps, data_seed=cfg.seed
    )
    # The precision trained in ("no", "fp16", "bf16"), never null: config.yaml, checkpoints, W&B and a resume read it.
    tc.mixed_precision = accelerator.mixed_precision
    if accelerator.device.type == "cpu":
        threads = apply_threads(tc.threads)  # a busy machine: fewer threads than cores (experiments.threads)
        if on_epoch_end is None:  # the run's first line (a sweep prints its own lines per trial)
            accelerator.print(f"[rpb-train] {threads.line}", flush=True)
    run = RunDir(_run_dir(cfg, broadcast_object_list))  # after the Accelerator: its process group broadcasts
    cfg.run_dir = str(run.path)
    if cfg.resume and (done := _already_finished(run, tc.epochs)) is not None:
        return done  # nothing to train: no checkpoint loaded, no W&B run opened
    setup = _build(cfg, accelerator)
    state = load_last(accelerator, run.path) if cfg.resume else TrainState()
    s = _Session(cfg, run, accelerator, setup, build_tracker(cfg.tracker, is_main_process=accelerator.is_main_process),
                 to_yaml(cfg), started)  # fmt: skip
    _open_run(s, state)
    status, reason = COMPLETED, ""
    try:
        for epoch in range(state.epoch + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            train_m = _train_one_epoch(s, state, epoch)
            state.global_step, state.train_images = train_m["global_step"], state.train_images + train_m["images"]
            state.train_s += time.perf_counter() - t0
            if train_m["diverged"]:
                status, reason = DIVERGED, _diverged_reason(epoch, state)
                break
            # plain cross-entropy (no label smoothing): validation losses compare across runs
            val_m = evaluate(setup.model, setup.val_loader, torch.nn.CrossEntropyLoss(), accelerator.device,
                             accelerator=accelerator, max_batches=tc.limit_val_batches)  # fmt: skip
            metrics = _epoch_metrics(epoch, train_m, val_m, setup.optimizer, time.perf_counter() - t0)
            if not math.isfinite(val_m["loss"]):
                status, reason = DIVERGED, f"non-finite validation loss after epoch {epoch}: lower optim.lr"
                break
            _keep_best(s, state, metrics)
            early = _early_stop(state, metrics, tc)  # both run every epoch: the callback reports every epoch
            stop = _callback_decision(on_epoch_end, epoch, metrics) or early
            if stop is not None:
                status, reason = stop
            state.epoch, state.last_metrics = epoch, metrics
            s.lap(state)
            _record_epoch(s, state, metrics, status if stop else None)
            _log_epoch(s, metrics, train_m["grad_norms"], epoch, last=stop is not None or epoch == tc.epochs)
            if on_epoch_end is None:  # a caller with a callback says how far it got itself (sweeps: per trial)
                accelerator.print(epoch_line(metrics, tc.epochs, train_m["images"]), flush=True)
            if stop is not None:
                break
    except BaseException as exc:
        _finish_failed(s, state, exc)  # raises

    if status == COMPLETED:
        reason = f"trained {plural(state.epoch, 'epoch')}"
    if status != DIVERGED and accelerator.is_main_process:
        _write_final_bias(accelerator.unwrap_model(setup.model, keep_torch_compile=False), run)
    s.lap(state)
    result = _result(s, state, status, reason)
    if accelerator.is_main_process:
        run.write_summary(result)
    s.tracker.finish(status, summary=result.to_dict())
    accelerator.wait_for_everyone()
    return result


# --- setup ----------------------------------------------------------------------------------------------------
setattr(train, READS_CONFIG_ONLY, True)  # validated into a config of its own at once; the given one is only read


def _build(cfg: DictConfig, accelerator: Any) -> _Setup:
    """Model, optimizer, data and schedule, prepared by Accelerate (same initial weights on every process)."""
    from accelerate.utils import set_seed

    from experiments.data import build_dataloaders
    from experiments.optimizers import build_optimizer, build_scheduler

    tc = cfg.trainer
    set_seed(cfg.seed)  # same initial weights on every process and in every run with this seed
    model = build_model(cfg)
    if cfg.model.init_from and not cfg.resume:  # a resumed run's weights come from its own checkpoint
        from experiments.init_from import load_init_weights

        path, notes = load_init_weights(model, cfg.model.init_from)
        cfg.model.init_from = str(path)  # config.yaml records the file the weights came from
        for note in notes:
            accelerator.print(note)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # trainable, as timm counts them
    optimizer = build_optimizer(model, cfg.optim)
    try:
        train_loader, val_loader = build_dataloaders(cfg.data, seed=cfg.seed, cuda=accelerator.device.type == "cuda")
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
    # Over trainer.epochs as configured now: a run extended with a larger trainer.epochs gets the longer curve.
    scheduler = build_scheduler(
        optimizer, cfg.schedule, base_lr=cfg.optim.lr, steps_per_epoch=steps_per_epoch, epochs=tc.epochs
    )
    scheduler = accelerator.prepare(scheduler)  # saved and restored with the state; stepped by train_epoch
    return _Setup(model, optimizer, scheduler, train_loader, val_loader, max_batches, num_params)


def _resume_config(cfg: DictConfig) -> DictConfig:
    """The config saved in the run dir named by `cfg.resume` (the run continues there as it was configured)."""
    run = _existing_run(cfg.resume)
    resumed = validate_config(OmegaConf.load(run.config))
    resumed.run_dir, resumed.resume = str(run), str(run)
    return resumed


def _existing_run(path: str | Path) -> RunDir:
    run = RunDir(path)
    if not run.config.is_file():
        raise ConfigError(f"resume={str(run)!r} is not a run folder (no config.yaml): give the folder of a run.")
    return run


def extend_run(run_dir: str | Path, epochs: int) -> None:
    """Let the run in `run_dir` train to `epochs` in total when resumed (its saved trainer.epochs is rewritten).

    The schedule follows `SCHEDULE_ON_EXTEND`. Raises ConfigError when `epochs` is not above the epochs the run
    has trained (its last checkpoint) or the folder is not a run.
    """
    run = _existing_run(run_dir)
    trained = TrainState.read(last_checkpoint(run.path)).epoch if last_checkpoint(run.path) else 0
    if epochs <= trained:
        raise ConfigError(
            f"trainer.epochs={epochs} does not extend resume={run}: it has trained {plural(trained, 'epoch')}; "
            f"give trainer.epochs above {trained}, or drop the override to resume it as it was configured."
        )
    saved = OmegaConf.load(run.config)
    saved.trainer.epochs = int(epochs)
    run.write_config(OmegaConf.to_yaml(saved))


def _already_finished(run: RunDir, epochs: int) -> TrainResult | None:
    """The saved result of a run that ended by its own decision and is not extended (None: it goes on)."""
    saved = run.read_summary()
    if saved.get("status") not in FINAL_STATUSES or epochs > saved.get("epochs", saved.get("epochs_run", 0)):
        return None
    why, trained = saved.get("reason") or saved["status"], saved.get("epochs_run", 0)
    why = f"already finished ({why}); nothing trained (trainer.epochs above {trained} extends it)"
    return replace(TrainResult.from_dict(saved), reason=why)


def _open_run(s: _Session, state: TrainState) -> None:
    """The run folder before this session's first epoch (config, metrics up to the checkpoint, W&B record, summary)
    and the trackers (a resumed run continues its W&B run: see WandbTracker)."""
    run = s.run
    if s.accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(s.config_yaml)
        run.truncate_metrics(state.epoch)  # a resumed run rewrites the records after its checkpoint
        if not s.cfg.resume:
            run.forget_wandb_run()  # a fresh run in a used folder opens a new W&B run
    s.tracker.start(copy.deepcopy(s.config_dict()), run.path)  # a copy: a tracker may change what it is given
    if s.accelerator.is_main_process:
        run.write_summary(_result(s, state, RUNNING, ""))


def _run_dir(cfg: DictConfig, broadcast: Callable) -> Path:
    """cfg.run_dir, or <output_dir>/<name>-<timestamp> chosen by the main process (all processes agree)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = [datetime.now().strftime("%Y%m%d-%H%M%S-%f")]
    broadcast(stamp, from_process=0)
    return Path(cfg.output_dir) / f"{cfg.name}-{stamp[0]}"


# --- one epoch ------------------------------------------------------------------------------------------------
def _train_one_epoch(s: _Session, state: TrainState, epoch: int) -> dict[str, Any]:
    """`engine.train_epoch` with the run's settings; a progress bar only on a terminal (not in logs).

    train_epoch sets the loader's epoch: shuffle order and augmentation follow (seed, epoch), so a resumed run and
    one on N processes see the data of the straight run (`experiments.data.set_epoch`)."""
    from tqdm.auto import tqdm

    tc, setup, accelerator = s.cfg.trainer, s.setup, s.accelerator
    show = accelerator.is_main_process and tc.progress_bar and sys.stderr.isatty()
    with tqdm(total=setup.max_batches, desc=f"epoch {epoch}/{tc.epochs}", leave=False, disable=not show) as bar:
        return train_epoch(
            setup.model, setup.train_loader, torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing),
            setup.optimizer, accelerator.device, epoch, accelerator=accelerator, scheduler=setup.scheduler,
            clip_grad_norm=tc.clip_grad_norm, max_batches=setup.max_batches, global_step=state.global_step,
            log_every_n_steps=tc.log_every_n_steps, log_step=lambda step, m: s.tracker.log(m, step=step),
            progress=bar,
        )  # fmt: skip


def _epoch_metrics(epoch: int, train_m: dict, val_m: dict, optimizer, seconds: float) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": train_m["loss"],
        "train_accuracy": train_m["accuracy"],
        "val_loss": val_m["loss"],
        "val_accuracy": val_m["accuracy"],
        "learning_rate": optimizer.param_groups[0]["lr"],
        "epoch_time": seconds,
    }


def _keep_best(s: _Session, state: TrainState, metrics: dict[str, float]) -> None:
    """The best value of every logged metric (`TrainState.update_best`); the best model by val accuracy ->
    checkpoints/best.pt (the guide's save_checkpoint format)."""
    if "val_accuracy" not in state.update_best(metrics):
        return
    state.best_epoch = metrics["epoch"]
    if s.accelerator.is_main_process and s.cfg.trainer.save_checkpoints:
        best_model = s.accelerator.unwrap_model(s.setup.model, keep_torch_compile=False)
        save_checkpoint(best_model, None, metrics["epoch"], metrics, s.run.best_checkpoint, config=s.config_dict())


def _early_stop(state: TrainState, metrics, tc) -> tuple[str, str] | None:
    """The guide's patience recipe on trainer.early_stopping_monitor; (EARLY_STOPPED, reason) when it stops."""
    direction = metric_direction(tc.early_stopping_monitor)
    if better(metrics[tc.early_stopping_monitor], state.best_monitor, direction):
        state.best_monitor, state.bad_epochs = metrics[tc.early_stopping_monitor], 0
    else:
        state.bad_epochs += 1
    if tc.early_stopping_patience is None or state.bad_epochs < tc.early_stopping_patience:
        return None
    return EARLY_STOPPED, (
        f"{tc.early_stopping_monitor} did not improve for {plural(state.bad_epochs, 'epoch')} "
        f"(best {state.best_monitor:.4f})"
    )


def _callback_decision(on_epoch_end: EpochCallback | None, epoch: int, metrics) -> tuple[str, str] | None:
    """The main process's answer of `on_epoch_end`, followed by every process: (status, reason) or None."""
    from accelerate.utils import broadcast_object_list

    decision = [on_epoch_end(epoch, dict(metrics)) if on_epoch_end is not None else None]
    broadcast_object_list(decision, from_process=0)
    return None if decision[0] is None else (str(decision[0]), f"{decision[0]} at epoch {epoch}")


def _record_epoch(s: _Session, state: TrainState, metrics: dict[str, float], stop_status: str | None) -> None:
    """The epoch's record first, then its checkpoint: a kill in between leaves a record beyond the checkpoint,
    which resume drops and writes again, never an epoch without a record."""
    if s.accelerator.is_main_process:
        s.run.append_metrics(metrics | ({"status": stop_status} if stop_status else {}))
        # kept current while the run goes on: a run killed mid-way still says how far it got
        s.run.write_summary(_result(s, state, RUNNING, f"epoch {state.epoch}/{s.cfg.trainer.epochs}"))
    if s.cfg.trainer.save_checkpoints:
        save_last(s.accelerator, s.run.path, state, s.config_yaml)


def _log_epoch(s: _Session, metrics: dict[str, float], grad_norms: dict[str, float], epoch: int, last: bool) -> None:
    """The epoch's scalars, gradient norms and (every heatmap_every_n_epochs, and at the run's last epoch, a pruned
    or early-stopped one too, so every run has its final maps) bias heatmaps and statistics."""
    from experiments.tracking import NoOpTracker

    tc = s.cfg.trainer
    row = {k: v for k, v in metrics.items() if k != "epoch"} | {f"grad_norm/{k}": v for k, v in grad_norms.items()}
    keeps_images = s.accelerator.is_main_process and not isinstance(s.tracker, NoOpTracker)
    if keeps_images and tc.heatmap_every_n_epochs and (epoch % tc.heatmap_every_n_epochs == 0 or last):
        row |= _log_bias(s.accelerator.unwrap_model(s.setup.model, keep_torch_compile=False), s.tracker, epoch)
    s.tracker.log(row, step=epoch)


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


# --- the end ---------------------------------------------------------------------------------------------------
def _diverged_reason(epoch: int, state: TrainState) -> str:
    return (
        f"non-finite training loss in epoch {epoch} (by step {state.global_step}); the last good checkpoint is "
        f"epoch {state.epoch}: lower optim.lr or set trainer.clip_grad_norm"
    )


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore a second Ctrl-C while the trackers close (W&B needs about a second to finish its run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish_failed(s: _Session, state: TrainState, exc: BaseException) -> None:
    """Record the run as "interrupted" (Ctrl-C: raises RunInterrupted) or "failed" (re-raises `exc`)."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    s.lap(state)
    if interrupted:
        kept = f"the checkpoint of epoch {state.epoch} is kept" if last_checkpoint(s.run.path) else "no checkpoint yet"
        reason = f"stopped with {stop_signal()} in epoch {state.epoch + 1}; {kept}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    status = INTERRUPTED if interrupted else FAILED
    result = _result(s, state, status, reason)
    with _no_interrupts():
        if s.accelerator.is_main_process:
            s.run.write_summary(result)
        s.tracker.finish(status, summary=result.to_dict())
    if interrupted:
        raise RunInterrupted(result) from None
    raise exc


def _write_final_bias(model: torch.nn.Module, run: RunDir) -> None:
    from rpb.inspect import bias_offset_maps

    maps = bias_offset_maps(model)
    if not maps:
        return
    from rpb.plot import save_bias_heatmaps

    run.bias.mkdir(parents=True, exist_ok=True)
    torch.save(maps, run.offset_maps)
    save_bias_heatmaps(model, run.bias)


def _result(s: _Session, state: TrainState, status: str, reason: str) -> TrainResult:
    last = state.last_metrics
    best = state.best_metrics()  # best_<metric> of experiments.metrics.METRICS; None before the first epoch
    # before the first epoch 0.0, as it always was (rpb-train's last line and the benches print it as a number)
    best["best_val_accuracy"] = state.best_val_accuracy if state.best_val_accuracy is not None else 0.0
    return TrainResult(
        status=status,
        reason=reason,
        **best,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        epochs=int(s.cfg.trainer.epochs),
        val_accuracy=last.get("val_accuracy"),
        val_loss=last.get("val_loss"),
        train_loss=last.get("train_loss"),
        num_params=s.setup.num_params,
        train_images_per_s=state.train_images / state.train_s if state.train_s > 0 else None,
        wall_s=state.wall_s,
        run_dir=str(s.run.path),
        wandb_run_id=getattr(s.tracker, "run_id", None),
    )
