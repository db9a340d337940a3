"""The W&B reader behind the RunReader interface, against a fake public API (no network)."""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dashboards.load import LocalRunReader, load_study, trial_runs
from dashboards.report import build_report
from dashboards.wandb_reader import WandbRunReader


class FakeFile:
    def __init__(self, src: Path, name: str):
        self.src, self.name = src, name

    def download(self, root: str, replace: bool = False, exist_ok: bool = False):
        dst = Path(root) / self.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.src, dst)


class FakeRun:
    """What wandb.apis.public.Run offers, built from a run folder (as W&B would hold it after `wandb sync`)."""

    def __init__(self, run_dir: Path, media: Path):
        self.config = yaml.safe_load((run_dir / "config.yaml").read_text())
        # History rows carry W&B's own keys too; scan_history(keys=...) returns only the asked keys.
        self._rows = [{**json.loads(line), "_step": i} for i, line in enumerate((run_dir / "metrics.jsonl").open())]
        self.summary_metrics = {
            **json.loads((run_dir / "summary.json").read_text()),
            "bias/block_0": {"_type": "image-file", "path": "media/images/bias/block_0_2_abc.png", "format": "png"},
        }
        self.media = media

    def scan_history(self, keys=None):
        return [{k: row[k] for k in keys} for row in self._rows if all(k in row for k in keys)]

    def file(self, name: str) -> FakeFile:
        return FakeFile(self.media, name)


class FakeApi:
    def __init__(self, runs: dict[str, FakeRun]):
        self.runs, self.asked = runs, []

    def run(self, path: str) -> FakeRun:
        self.asked.append(path)
        run_id = path.rsplit("/", 1)[-1]
        if run_id not in self.runs:
            raise ValueError(f"Could not find run {path}")
        return self.runs[run_id]


@pytest.fixture
def fake_api(ablation_journal, tmp_path):
    media = tmp_path / "heatmap.png"
    Image.fromarray((np.indices((40, 120)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(media)
    study = load_study(str(ablation_journal))
    runs = {t.user_attrs["wandb_run_id"]: FakeRun(Path(t.user_attrs["run_dir"]), media) for t in study.trials}
    runs.pop(f"w{len(study.trials) - 1}")  # the last run deleted from W&B: the report goes on without it
    return FakeApi(runs)


def test_reads_the_same_fields_as_the_local_reader(ablation_journal, fake_api, tmp_path):
    study = load_study(str(ablation_journal))
    remote = {t.number: r for t, r in trial_runs(study, WandbRunReader(fake_api, "me", "rpb-lab", cache_dir=tmp_path))}
    local = {t.number: r for t, r in trial_runs(study, LocalRunReader())}
    assert fake_api.asked[0] == "me/rpb-lab/w0"
    assert sorted(remote) == sorted(local)[:-1]  # the missing run is skipped, not fatal
    for number, run in remote.items():
        twin = local[number]
        assert run.config == twin.config
        assert run.history == [{k: row[k] for k in row if k != "status"} for row in twin.history]
        assert run.summary["best_val_accuracy"] == twin.summary["best_val_accuracy"]
        assert run.offset_maps() is None and run.heatmap_images[0].is_file()


def test_report_from_wandb_uses_the_logged_heatmaps(ablation_journal, fake_api, tmp_path):
    study = load_study(str(ablation_journal))
    index = build_report(study, WandbRunReader(fake_api, "me", "rpb-lab", cache_dir=tmp_path / "c"), tmp_path / "r")
    text = index.read_text()
    assert "rpb 2d 7x7" in text and sorted(p.name for p in (tmp_path / "r").iterdir()) == ["index.html", "report.json"]
    figure = re.search(r'<figure data-name="heatmap_rpb_2d_3x3"><img src="data:image/png;base64,([^"]+)"', text)
    assert figure and base64.b64decode(figure.group(1)) == (tmp_path / "heatmap.png").read_bytes()  # W&B's image


def test_cli_reads_runs_from_wandb(ablation_journal, fake_api, tmp_path, monkeypatch):
    from dashboards import report

    made = []

    def fake_public_api(entity, project, cache_dir=None):
        made.append((entity, project))
        return WandbRunReader(fake_api, entity, project, cache_dir=tmp_path / "c")

    monkeypatch.setattr(WandbRunReader, "from_public_api", staticmethod(fake_public_api))
    argv = ["--storage", str(ablation_journal), "--source", "wandb", "--entity", "me", "--out", str(tmp_path / "r")]
    assert report.main(argv) == 0
    assert made == [("me", "rpb-lab")] and fake_api.asked[0] == "me/rpb-lab/w0"
    assert '<figure data-name="heatmap_rpb_2d_5x5">' in (tmp_path / "r" / "index.html").read_text()
