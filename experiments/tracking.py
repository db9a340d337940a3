"""Experiment trackers behind one small interface: W&B (offline by default) and TensorBoard.

The training loop builds one tracker and calls it from one place:

    tracker = build_tracker(cfg.tracker, is_main_process=accelerator.is_main_process)
    tracker.start(config, run_dir)        # continues the W&B run recorded in run_dir, if any (see WandbTracker)
    tracker.log({"train/loss": 0.7, ...}, step=global_step)   # "train/*" keys: x = global_step
    tracker.log({"val_accuracy": 0.9, ...}, step=epoch)       # every other key: x = epoch
    tracker.log_images(bias_heatmap_images(model), step=epoch)   # {"bias/block_0": (H, W, 3) uint8, ...}
    tracker.finish("completed", summary=result)

Non-main processes get a `NoOpTracker`, so only rank 0 writes. W&B is imported lazily (it costs ~1 s).
`bias_heatmap_images` draws the per-epoch heatmaps with numpy in milliseconds; `rpb.plot.render_bias_heatmaps`
(matplotlib, labelled axes) costs about a second per epoch for the default model, which alone breaks the 3%
tracking budget on digits: keep matplotlib for the final figures in the run folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from experiments.config_errors import ConfigError
from experiments.trackers.common import FAILED_STATES, mask_secrets, to_plain
from experiments.trackers.heatmaps import bias_heatmap_images
from experiments.trackers.tensorboard_tracker import TensorBoardTracker
from experiments.trackers.wandb_tracker import WandbTracker

__all__ = [
    "FAILED_STATES",
    "CompositeTracker",
    "NoOpTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "bias_heatmap_images",
    "build_tracker",
    "mask_secrets",
    "to_plain",
]

WANDB_MODES = ("offline", "online", "disabled")
WANDB_INIT_KEYS = ("project", "entity", "group", "job_type", "tags", "name", "id", "notes")


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


def build_tracker(tracker_cfg: Mapping[str, Any] | None, *, is_main_process: bool) -> Tracker:
    """The enabled trackers of `tracker_cfg` as one tracker (or a no-op on non-main processes / when none is on).

    Args:
        tracker_cfg: the `tracker` config: `wandb` (enabled, mode, verbose: W&B's own console lines, project,
            entity, group, job_type, tags, name, id, notes), `tensorboard` (enabled), `extra_config` (merged into the
            W&B config).
        is_main_process: only the main process gets real trackers.
    """
    if not is_main_process or tracker_cfg is None:
        return NoOpTracker()
    tracker_cfg = to_plain(tracker_cfg)
    trackers: list[Tracker] = []
    wandb_cfg = dict(tracker_cfg.get("wandb") or {})
    options = ("enabled", "mode", "verbose", *WANDB_INIT_KEYS)
    unknown = sorted(set(wandb_cfg) - set(options))
    if unknown:
        raise ValueError(f"tracker.wandb.{unknown[0]} is not a W&B tracker option: use {', '.join(options)}.")
    if wandb_cfg.pop("enabled", False):
        mode = wandb_cfg.pop("mode", "offline")
        if mode not in WANDB_MODES:
            raise ConfigError(f"tracker.wandb.mode={mode!r} is not a W&B mode: use one of {', '.join(WANDB_MODES)}.")
        # disabled writes nothing and logs nothing: skip W&B entirely (and its ~1 s import).
        if mode != "disabled":
            trackers.append(WandbTracker(mode=mode, extra_config=tracker_cfg.get("extra_config") or {}, **wandb_cfg))
    if (tracker_cfg.get("tensorboard") or {}).get("enabled", False):
        trackers.append(TensorBoardTracker())
    if not trackers:
        return NoOpTracker()
    return trackers[0] if len(trackers) == 1 else CompositeTracker(trackers)
