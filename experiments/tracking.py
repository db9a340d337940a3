"""Experiment trackers behind one small interface: W&B (offline by default) and TensorBoard.

The training loop builds one tracker and calls it from one place:

    tracker = build_tracker(cfg.tracker, is_main_process=accelerator.is_main_process)
    tracker.start(config, run_dir)
    tracker.log({"train/loss": 0.7, ...}, step=global_step)   # "train/*" keys: x = global_step
    tracker.log({"val_accuracy": 0.9, ...}, step=epoch)       # every other key: x = epoch
    tracker.log_images({"bias/block_0": hwc_uint8}, step=epoch)
    tracker.finish("completed", summary=result)

Non-main processes get a `NoOpTracker`, so only rank 0 writes. W&B is imported lazily (it costs ~1 s).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FAILED_STATES",
    "CompositeTracker",
    "NoOpTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "build_tracker",
    "mask_secrets",
    "to_plain",
]

WANDB_MODES = ("offline", "online", "disabled")
WANDB_INIT_KEYS = ("project", "entity", "group", "job_type", "tags", "name", "id", "notes")
# Final states that mark the run as failed in W&B (exit code 1); everything else (completed, pruned, early_stopped,
# diverged) is a run that ended by the loop's own decision and has a result.
FAILED_STATES = frozenset({"failed", "interrupted", "crashed"})
STEP_PREFIX = "train/"  # keys logged per optimizer step, against `global_step`; all others against `epoch`
EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time")
EPOCH_GLOBS = ("grad_norm/*", "bias/*", "bias_stats/*")

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^/\s]*)@")
# Whole key names (or their last `_` part) only: `db_password` and `api_key` are masked, `num_tokens` is not.
_SECRET_KEY = re.compile(r"^(?:.*_)?(?:password|passwd|secret|token|api_?key)$", re.IGNORECASE)


def to_plain(obj: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or any mapping/sequence as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # omegaconf is an optional dependency of the tracker module
        pass
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def mask_secrets(obj: Any) -> Any:
    """Copy of `obj` with passwords hidden: `scheme://user:secret@host` -> `scheme://user:***@host` in every string,
    and the value of any key that names a secret (password, token, api_key, ...) -> "***".

    Works on nested dicts, lists, tuples and DictConfigs; returns plain Python objects.
    """
    obj = to_plain(obj)
    if isinstance(obj, str):
        return _URL_CREDENTIALS.sub(r"\g<head>:***@", obj)
    if isinstance(obj, Mapping):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) and isinstance(v, str) and v else mask_secrets(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [mask_secrets(v) for v in obj]
    return obj


def _merge(base: dict, extra: Mapping) -> dict:
    """`base` updated with `extra`, merging nested dicts instead of replacing them."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


@runtime_checkable
class Tracker(Protocol):
    """What the training loop and the sweeps talk to."""

    run_id: str | None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None: ...
    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None: ...
    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None: ...


class NoOpTracker:
    """Logs nothing: `tracker=none` and every non-main process."""

    run_id: str | None = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        pass

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        pass

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        pass


class CompositeTracker:
    """Forwards every call to each tracker; `finish` reaches all of them even when one raises."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    @property
    def run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if t.run_id is not None), None)

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        for tracker in self.trackers:
            tracker.start(config, run_dir)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log_images(images, step)

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        errors = []
        for tracker in self.trackers:
            try:
                tracker.finish(state, summary)
            except Exception as err:  # finish the others first, then report
                errors.append(err)
        if errors:
            raise errors[0]


def _split_by_family(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    step_metrics = {k: v for k, v in metrics.items() if k.startswith(STEP_PREFIX)}
    epoch_metrics = {k: v for k, v in metrics.items() if not k.startswith(STEP_PREFIX)}
    return step_metrics, epoch_metrics


def _scalar(value: Any) -> float | None:
    """A float for numbers and 0-d tensors/arrays; None for anything else (strings, None)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class WandbTracker:
    """One W&B run per `start`/`finish` pair (`reinit="create_new"`, so a sweep can run many in one process).

    The mode is always explicit, so W&B never prompts for a login: `offline` (default; the run lands in
    `<run_dir>/wandb/offline-run-*`, `wandb sync` uploads it later) or `online`.
    """

    def __init__(
        self,
        *,
        mode: str = "offline",
        project: str | None = "rpb-lab",
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = "train",
        tags: list[str] | tuple[str, ...] = (),
        name: str | None = None,  # None: the run folder's name
        id: str | None = None,
        notes: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("offline", "online"):
            raise ValueError(f"tracker.wandb.mode={mode!r} cannot start a W&B run: use offline or online.")
        self.mode = mode
        self.init_kwargs = dict(project=project, entity=entity, group=group, job_type=job_type, name=name, id=id)
        self.init_kwargs["notes"] = notes
        self.tags = [str(t) for t in tags]
        self.extra_config = to_plain(extra_config or {})
        self.run = None
        self.run_id: str | None = None
        self._best_val_accuracy = -math.inf
        self._history_keys: set[str] = set()

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode=self.mode,
            dir=str(run_dir),
            config=mask_secrets(_merge(to_plain(config), self.extra_config)),
            tags=self.tags,
            reinit="create_new",
            # Console capture would copy every progress-bar line into the run; the loop logs what matters.
            settings=wandb.Settings(console="off"),
            **{k: v for k, v in {**self.init_kwargs, "name": self.init_kwargs["name"] or run_dir.name}.items() if v},
        )
        self.run_id = self.run.id
        run = self.run
        run.define_metric("global_step", hidden=True)
        run.define_metric("epoch", hidden=True)
        run.define_metric(f"{STEP_PREFIX}*", step_metric="global_step")
        for key in EPOCH_KEYS:
            run.define_metric(key, step_metric="epoch", summary="max" if key == "val_accuracy" else None)
        for glob in EPOCH_GLOBS:
            run.define_metric(glob, step_metric="epoch")

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run is None:
            return
        step_metrics, epoch_metrics = _split_by_family(metrics)
        for row, step_key in ((step_metrics, "global_step"), (epoch_metrics, "epoch")):
            if not row:
                continue
            self._history_keys.update(row)
            if step is not None:
                row.setdefault(step_key, step)
            self.run.log(row)
        val_accuracy = _scalar(metrics.get("val_accuracy"))
        if val_accuracy is not None and val_accuracy > self._best_val_accuracy:
            self._best_val_accuracy = val_accuracy
            self.run.summary["best_val_accuracy"] = val_accuracy

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        if self.run is None or not images:
            return
        import wandb

        caption = None if step is None else f"epoch {step}"
        row: dict[str, Any] = {k: wandb.Image(np.asarray(v), caption=caption) for k, v in images.items()}
        if step is not None:
            row["epoch"] = step
        self.run.log(row)

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        summary = dict(summary or {})
        try:
            # Keys that were logged as history keep W&B's own summary (e.g. val_accuracy's max); add the rest.
            for key, value in summary.items():
                if key not in self._history_keys and (value is None or isinstance(value, (str, int, float, bool))):
                    run.summary[key] = value
            run.summary["state"] = state
            run.summary["reason"] = summary.get("reason") or ""  # W&B drops None values
            run.tags = (*run.tags, state) if state not in run.tags else run.tags
        finally:
            run.finish(exit_code=1 if state in FAILED_STATES else 0)


class TensorBoardTracker:
    """Scalars and images in `<run_dir>/tensorboard` with torch's SummaryWriter; x is the step given to `log`."""

    run_id: str | None = None

    def __init__(self) -> None:
        self.writer = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        text = json.dumps(mask_secrets(config), indent=2, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            scalar = _scalar(value)
            if scalar is not None:
                self.writer.add_scalar(key, scalar, global_step=step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        if self.writer is None:
            return
        for key, image in images.items():
            self.writer.add_image(key, np.asarray(image), global_step=step, dataformats="HWC")

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            text = json.dumps({"state": state, **mask_secrets(dict(summary or {}))}, indent=2, default=str)
            writer.add_text("summary", "```\n" + text + "\n```")
        finally:
            writer.close()


def build_tracker(tracker_cfg: Mapping[str, Any] | None, *, is_main_process: bool) -> Tracker:
    """The enabled trackers of `tracker_cfg` as one tracker (or a no-op on non-main processes / when none is on).

    Args:
        tracker_cfg: the `tracker` config: `wandb` (enabled, mode, project, entity, group, job_type, tags, name, id,
            notes), `tensorboard` (enabled), `extra_config` (merged into the W&B config).
        is_main_process: only the main process gets real trackers.
    """
    if not is_main_process or tracker_cfg is None:
        return NoOpTracker()
    tracker_cfg = to_plain(tracker_cfg)
    trackers: list[Tracker] = []
    wandb_cfg = dict(tracker_cfg.get("wandb") or {})
    unknown = sorted(set(wandb_cfg) - {"enabled", "mode", *WANDB_INIT_KEYS})
    if unknown:
        raise ValueError(f"tracker.wandb.{unknown[0]} is not a W&B tracker option: use {', '.join(WANDB_INIT_KEYS)}.")
    if wandb_cfg.pop("enabled", False):
        mode = wandb_cfg.pop("mode", "offline")
        if mode not in WANDB_MODES:
            raise ValueError(f"tracker.wandb.mode={mode!r} is not a W&B mode: use one of {', '.join(WANDB_MODES)}.")
        # disabled writes nothing and logs nothing: skip W&B entirely (and its ~1 s import).
        if mode != "disabled":
            trackers.append(WandbTracker(mode=mode, extra_config=tracker_cfg.get("extra_config") or {}, **wandb_cfg))
    if (tracker_cfg.get("tensorboard") or {}).get("enabled", False):
        trackers.append(TensorBoardTracker())
    if not trackers:
        return NoOpTracker()
    return trackers[0] if len(trackers) == 1 else CompositeTracker(trackers)
