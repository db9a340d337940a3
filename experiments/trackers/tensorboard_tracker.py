"""TensorBoard tracker: torch's SummaryWriter under <run_dir>/tensorboard; a sweep trial's params as hparams."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.trackers.common import mask_secrets, scalar, scalar_or_text

TRIAL_PARAMS = "trial_params"  # the key of the recorded config a sweep sets (`tracker.extra_config.trial_params`)
HPARAMS_PREFIX = "hparams/"  # the final metrics' tags: apart from the per-epoch scalars of the same name


class TensorBoardTracker:
    """Scalars and images in `<run_dir>/tensorboard` with torch's SummaryWriter; x is the step given to `log`.

    A sweep trial (its config holds `trial_params`) also writes TensorBoard's hparams at `finish`: its params and
    its final metrics (`hparams/<key>` for every number of the run's summary), so the HParams tab of a TensorBoard
    over the study's folder compares its trials.
    """

    run_id: str | None = None

    def __init__(self) -> None:
        self.writer = None
        self.hparams: dict[str, Any] = {}

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # torch + tensorboard: deferred on purpose, to start

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        text = json.dumps(mask_secrets(config), indent=2, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)
        self.hparams = hparam_values(config.get(TRIAL_PARAMS) or {})

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            number = scalar(value)
            if number is not None:
                self.writer.add_scalar(key, number, global_step=step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        if self.writer is None:
            return
        for key, image in images.items():
            self.writer.add_image(key, np.asarray(image), global_step=step, dataformats="HWC")

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        summary = dict(summary or {})
        try:
            text = json.dumps({"state": state, **mask_secrets(summary)}, indent=2, default=str)
            writer.add_text("summary", "```\n" + text + "\n```")
            if self.hparams:
                metrics = {f"{HPARAMS_PREFIX}{k}": n for k, v in summary.items() if (n := scalar(v)) is not None}
                # run_name ".": the hparams go into this run's own folder (torch's default is a new sub-run per
                # call), so the HParams tab shows one session per trial beside its curves
                writer.add_hparams(self.hparams, metrics, run_name=".", global_step=summary.get("epochs_run"))
        finally:
            writer.close()


def hparam_values(params: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """`params` as TensorBoard takes hparams: None left out, a list or mapping as its JSON text."""
    return {str(k): scalar_or_text(v) for k, v in params.items() if v is not None}
