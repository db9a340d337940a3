"""Experiment trackers behind one small interface, as plug-ins: W&B (offline by default), TensorBoard, any other.

A tracker is a class with the `Tracker` methods and one YAML file in `conf/tracker/` whose entry names it
(`_target_`) and holds its constructor's arguments; a preset lists the files it runs (`conf/tracker/default.yaml`:
wandb and tensorboard). `build_tracker` instantiates every entry of the `tracker` config and the training loop
calls the result from one place:

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

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import yaml
from hydra.utils import get_class

from experiments.config_errors import ConfigError
from experiments.trackers.common import FAILED_STATES, mask_secrets, merge_config, to_plain
from experiments.trackers.heatmaps import bias_heatmap_images

__all__ = [
    "FAILED_STATES",
    "CompositeTracker",
    "NoOpTracker",
    "Tracker",
    "bias_heatmap_images",
    "build_tracker",
    "check_trackers",
    "instantiate_tracker",
    "mask_secrets",
    "to_plain",
]

TRACKER_DIR = Path(__file__).resolve().parent.parent / "conf" / "tracker"
EXTRA_CONFIG = "extra_config"  # the one key of `tracker` that is not a tracker: merged into what each records


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
    """Forwards every call to each tracker; `finish` reaches all of them even when one raises.

    Args:
        trackers: the trackers, in the order of the config.
        extra_config: merged into the config each tracker records at `start` (sweeps: a trial's params).
    """

    def __init__(self, trackers: list[Tracker], extra_config: Mapping[str, Any] | None = None) -> None:
        self.trackers = trackers
        self.extra_config = to_plain(extra_config or {})

    @property
    def run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if t.run_id is not None), None)

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        config = merge_config(to_plain(config), self.extra_config)
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
    """Every tracker of `tracker_cfg` as one tracker (a no-op on non-main processes and when none is there).

    Args:
        tracker_cfg: the `tracker` config: one entry per tracker (`instantiate_tracker`), and `extra_config`,
            merged into the config every tracker records.
        is_main_process: only the main process gets real trackers.
    """
    if not is_main_process or tracker_cfg is None:
        return NoOpTracker()
    entries = dict(to_plain(tracker_cfg))
    extra_config = entries.pop(EXTRA_CONFIG, None)
    # a tracker that records nothing (W&B disabled) is left out: the run then draws no heatmaps for it either
    built = [instantiate_tracker(name, entry) for name, entry in entries.items()]
    trackers = [t for t in built if t is not None and getattr(t, "records", True)]
    return CompositeTracker(trackers, extra_config) if trackers else NoOpTracker()


def check_trackers(tracker_cfg: Mapping[str, Any] | None) -> None:
    """Raises ConfigError: an entry of `tracker_cfg` no tracker accepts (built and dropped: nothing starts)."""
    build_tracker(tracker_cfg, is_main_process=True)


def instantiate_tracker(name: str, entry: Mapping[str, Any] | None) -> Tracker | None:
    """The tracker of the entry `tracker.<name>`: `_target_` names its class, the other keys are its constructor's
    arguments; None when `enabled: false`. An entry without `_target_` (a run folder written before trackers were
    plug-ins) takes the one of `conf/tracker/<name>.yaml`.

    Raises:
        ConfigError: an entry that is not a mapping, names no class, or holds a key its constructor does not take.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(f"tracker.{name} is not a tracker: give it a _target_ class, or put it in extra_config.")
    options = dict(entry)
    if not options.pop("enabled", True):
        return None
    target = options.pop("_target_", None) or _packaged_target(name)
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(f"tracker.{name}._target_={target!r} is not a class that can be imported.") from None
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            title = getattr(cls, "title", name)
            raise ConfigError(
                f"tracker.{name}.{unknown[0]} is not a {title} tracker option: use {', '.join(['enabled', *params])}."
            )
    return cls(**options)


def _packaged_target(name: str) -> str:
    path = TRACKER_DIR / f"{name}.yaml"
    entry = (yaml.safe_load(path.read_text()) or {}).get(name, {}) if path.is_file() else {}
    if not isinstance(entry, dict) or "_target_" not in entry:
        raise ConfigError(
            f"tracker.{name} names no tracker class: add tracker.{name}._target_ (or conf/tracker/{name}.yaml)."
        )
    return entry["_target_"]
