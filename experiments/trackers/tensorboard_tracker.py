"""TensorBoard tracker: torch's SummaryWriter under <run_dir>/tensorboard."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.trackers.common import mask_secrets, scalar


class TensorBoardTracker:
    """Scalars and images in `<run_dir>/tensorboard` with torch's SummaryWriter; x is the step given to `log`."""

    run_id: str | None = None

    def __init__(self) -> None:
        self.writer = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # torch + tensorboard: deferred on purpose, to start

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        text = json.dumps(mask_secrets(config), indent=2, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)

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
        try:
            text = json.dumps({"state": state, **mask_secrets(dict(summary or {}))}, indent=2, default=str)
            writer.add_text("summary", "```\n" + text + "\n```")
        finally:
            writer.close()
