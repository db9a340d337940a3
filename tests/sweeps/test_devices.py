"""One GPU per local sweep worker: the rule (`sweeps.devices.worker_devices`) and what spawned workers see."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

from sweeps.devices import ENV, parse_devices, worker_devices
from sweeps.space import SweepConfigError
from sweeps.storage import build_storage
from sweeps.study import run_study
from tests.sweeps import fake_train


@pytest.mark.parametrize(
    ("workers", "devices", "count", "visible", "want"),
    [
        (4, [], 4, None, ["0", "1", "2", "3"]),  # one GPU each
        (5, [], 2, None, ["0", "1", "0", "1", "0"]),  # k mod G: never all on cuda:0
        (3, [], 1, None, ["0", "0", "0"]),  # one GPU shared
        (2, [], 0, None, [None, None]),  # no GPU: the environment as it is
        (3, [2, 0], 4, None, ["2", "0", "2"]),  # a list: entry k mod len
        (2, ["0,1", "2,3"], 4, None, ["0,1", "2,3"]),  # a group of GPUs per worker
        (3, [], 2, "5,7", ["5", "7", "5"]),  # indices go through the command's own CUDA_VISIBLE_DEVICES
        (2, [1], 2, "GPU-a, GPU-b", ["GPU-b", "GPU-b"]),  # UUIDs too
    ],
)
def test_worker_devices_rule(workers, devices, count, visible, want):
    assert worker_devices(workers, devices, count, visible) == want


@pytest.mark.parametrize(
    ("devices", "count", "message"),
    [
        ([0, 4], 4, r"sweep.devices\[1\] names GPU 4 but this host shows 4 GPU\(s\); list indices below 4"),
        ([0], 0, r"sweep.devices\[0\] names GPU 0 but this host shows no GPU; leave sweep.devices empty"),
        (["cuda:0"], 1, r"sweep.devices\[0\]='cuda:0' is not a GPU index; list indices such as \[0, 1\]"),
        ([-1], 1, r"sweep.devices\[0\]=-1 is not a GPU index"),
    ],
)
def test_bad_devices_are_one_sentence(devices, count, message):
    with pytest.raises(SweepConfigError, match=message):
        worker_devices(2, devices, count)


def test_the_sweep_config_checks_devices(compose_sweep):
    from sweeps.config import check_sweep

    assert parse_devices(check_sweep(compose_sweep("sweep.devices=[0,'1,2']")).sweep.devices) == [[0], [1, 2]]
    with pytest.raises(SweepConfigError, match=r"sweep.devices\[0\]='gpu0' is not a GPU index"):
        check_sweep(compose_sweep("sweep.devices=[gpu0]"))


def record_devices_train(cfg, on_epoch_end=None) -> dict:
    """The fake trainer, writing the CUDA_VISIBLE_DEVICES and pid its worker process sees into the run folder."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "devices.json").write_text(json.dumps({"visible": os.environ.get(ENV), "pid": os.getpid()}))
    return fake_train.train(cfg, on_epoch_end)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_each_spawned_worker_sees_its_own_gpu(compose_sweep, monkeypatch):
    """3 GPUs faked in the parent, visible there as 5,6,7: worker 0 sees 5, worker 1 sees 6, and each keeps it."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv(ENV, "5,6,7")
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.4")
    cfg = compose_sweep("sweep.workers=2", "sweep.n_trials=4", "trainer.epochs=2",
                        "sweep.train_fn=tests.sweeps.test_devices:record_devices_train")  # fmt: skip
    run_study(cfg)
    assert os.environ[ENV] == "5,6,7"  # the parent's own value is back
    study = optuna.load_study(study_name="rpb-sweep", storage=build_storage(cfg.sweep, heartbeat=False))
    by_pid: dict[int, set] = {}
    for t in study.trials:
        seen = json.loads((Path(t.user_attrs["run_dir"]) / "devices.json").read_text())
        by_pid.setdefault(seen["pid"], set()).add(seen["visible"])
    assert sorted(map(sorted, by_pid.values())) == [["5"], ["6"]], by_pid
