"""A new tracker is a class and one YAML file: this test adds a JSON-lines tracker that way (the file written into a
config folder of its own, put on Hydra's search path) and trains a tiny run with it beside TensorBoard."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.train import train


class JsonLinesTracker:
    """Writes each call as one JSON line to <run_dir>/<file_name>."""

    run_id: str | None = None

    def __init__(self, file_name: str = "tracker.jsonl") -> None:
        self.file_name = file_name
        self.path: Path | None = None

    def _write(self, **row: Any) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(row, default=str) + "\n")

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        self.path = Path(run_dir) / self.file_name
        self._write(call="start", seed=config["seed"], trial=config.get("trial_number"))

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._write(call="log", step=step, metrics={k: float(v) for k, v in metrics.items()})

    def log_images(self, images: Mapping[str, np.ndarray], step: int | None = None) -> None:
        self._write(call="log_images", step=step, keys=sorted(images))

    def finish(self, state: str, summary: Mapping[str, Any] | None = None) -> None:
        self._write(call="finish", state=state)


TRACKER_YAML = f"""\
jsonl:
  _target_: {__name__}.JsonLinesTracker
  file_name: calls.jsonl
"""


def test_a_tracker_is_a_class_and_one_yaml_file(tmp_path, compose):
    conf = tmp_path / "conf"
    (conf / "tracker").mkdir(parents=True)
    (conf / "tracker" / "jsonl.yaml").write_text(TRACKER_YAML)
    cfg = compose(
        [f"hydra.searchpath=[file://{conf}]", "tracker=[tensorboard,jsonl]", "+tracker.extra_config.trial_number=3"]
    )
    assert sorted(cfg.tracker) == ["extra_config", "jsonl", "tensorboard"]

    result = train(cfg)

    rows = [json.loads(line) for line in (Path(result["run_dir"]) / "calls.jsonl").read_text().splitlines()]
    assert rows[0] == {"call": "start", "seed": cfg.seed, "trial": 3}  # extra_config reaches every tracker
    assert rows[-1] == {"call": "finish", "state": "completed"}
    epochs = [r for r in rows if r["call"] == "log" and "val_accuracy" in r["metrics"]]
    assert [r["step"] for r in epochs] == [1] and epochs[0]["metrics"]["val_accuracy"] == result["val_accuracy"]
    assert any(r["call"] == "log_images" for r in rows)
    assert (Path(result["run_dir"]) / "tensorboard").is_dir()  # the presets compose: TensorBoard beside it
