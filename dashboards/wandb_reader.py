"""Read a study's runs through the W&B public API instead of run folders (same `RunReader` interface).

Each trial names its W&B run in ``user_attrs["wandb_run_id"]``; config, epoch history and summary come from W&B,
and the last logged ``bias/block_{i}`` images stand in for the offset maps (which only live in run folders).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import optuna

from dashboards.runs import RunData
from experiments.trackers.common import EPOCH_KEYS as TRACKED_EPOCH_KEYS
from sweeps.record import TrialAttr

log = logging.getLogger(__name__)
# One epoch row of experiments.train: all of these are logged together, so a scan over them finds every epoch.
EPOCH_KEYS = ("epoch", *TRACKED_EPOCH_KEYS)
_HEATMAP = re.compile(r"^bias/block_(\d+)$")


class WandbRunReader:
    """Reads trials' runs from ``<entity>/<project>`` with a `wandb.Api`-like object (tests pass a fake).

    Args:
        api: has ``run(path)`` returning an object with ``config``, ``summary_metrics``, ``scan_history(keys=)``
            and ``file(name).download(root=, replace=, exist_ok=)``.
        cache_dir: where heatmap images are downloaded (a temporary folder by default).
    """

    def __init__(self, api: Any, entity: str | None, project: str, cache_dir: Path | str | None = None):
        self.api, self.entity, self.project = api, entity, project
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="rpb-report-wandb-"))

    @classmethod
    def from_public_api(cls, entity: str | None, project: str, cache_dir: Path | str | None = None) -> WandbRunReader:
        """A reader over the real public API (needs `wandb login`; the only part of rpb-report that uses network)."""
        import wandb  # optional and slow to import: deferred on purpose, only `--source wandb` needs it

        return cls(wandb.Api(), entity, project, cache_dir)

    def _path(self, run_id: str) -> str:
        return f"{self.entity}/{self.project}/{run_id}" if self.entity else f"{self.project}/{run_id}"

    def read(self, trial: optuna.trial.FrozenTrial) -> RunData | None:
        run_id = trial.user_attrs.get(TrialAttr.WANDB_RUN_ID)
        if not run_id:
            return None
        try:
            run = self.api.run(self._path(run_id))
        except Exception as err:  # the public API raises several types (CommError, ValueError, HTTP errors)
            log.warning("trial %d: W&B run %s could not be read (%s)", trial.number, self._path(run_id), err)
            return None
        summary = dict(run.summary_metrics)
        history = sorted((dict(row) for row in run.scan_history(keys=list(EPOCH_KEYS))), key=lambda r: r["epoch"])
        images: dict[int, Path] = {}
        for key, value in summary.items():
            match = _HEATMAP.match(key)
            if match and isinstance(value, dict) and value.get("_type") == "image-file":
                root = self.cache_dir / run_id
                run.file(value["path"]).download(root=str(root), replace=True, exist_ok=True)
                images[int(match.group(1))] = root / value["path"]
        return RunData(
            name=f"trial-{trial.number}",
            config=dict(run.config),
            history=history,
            summary=summary,
            heatmap_images=images,
        )
