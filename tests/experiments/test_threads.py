"""The intra-op thread rule (`experiments.threads`): usable cores less the busy ones, trainer.threads overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import threads
from experiments.config_errors import ConfigError


def _stat(path: Path, busy: int, idle: int) -> None:
    # cpu user nice system idle iowait irq softirq steal
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0\n")


@pytest.mark.parametrize(("busy", "usable", "expected"), [(0.0, 2, 2), (0.9, 2, 1), (1.2, 2, 1), (2.0, 2, 1),
                                                          (8.0, 2, 1), (1.0, 8, 7), (None, 4, 4)])  # fmt: skip
def test_the_rule_leaves_the_busy_cores_to_their_work(monkeypatch, busy, usable, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: usable)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: busy)
    choice = threads.choose_threads()
    assert choice.threads == expected
    assert f"threads: {expected} of {usable} usable cores" in choice.line and "trainer.threads" in choice.line


def test_trainer_threads_overrides_the_rule(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s: pytest.fail("no sampling when configured"))
    choice = threads.choose_threads(3)
    assert choice.threads == 3 and "(trainer.threads)" in choice.line
    with pytest.raises(ConfigError, match=r"trainer.threads=0 must be at least 1"):
        threads.choose_threads(0)


def test_busy_cores_reads_the_machine_s_cpu_times(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    _stat(stat, busy=1000, idle=1000)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)

    def advance(_seconds):  # over the sample, 3 of every 4 jiffies were busy: 3 of 4 cores
        _stat(stat, busy=1300, idle=1100)

    monkeypatch.setattr(threads.time, "sleep", advance)
    assert threads.busy_cores(0.2, stat) == pytest.approx(3.0)
    assert threads.busy_cores(0.2, tmp_path / "missing") is None


def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.usable_cores() == 2


def test_a_process_chooses_once_and_trainer_threads_or_omp_num_threads_win(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_CHOSEN", [])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    calls = []
    monkeypatch.setattr(threads, "choose_threads", lambda configured=None: calls.append(configured)
                        or threads.ThreadChoice(configured or 1, 2, 1.0, configured))  # fmt: skip
    try:
        assert threads.apply_threads().threads == 1 and torch.get_num_threads() == 1
        assert threads.apply_threads().threads == 1 and calls == [None]  # measured once per process
        assert threads.apply_threads(2).threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert "OMP_NUM_THREADS=1" in threads.apply_threads().line
    finally:
        torch.set_num_threads(before)


def test_the_run_says_what_it_chose_first(tmp_path, capsys):
    from experiments.config import compose_config
    from experiments.train import train

    train(compose_config(["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                          "tracker=none", "trainer.threads=1", "trainer.progress_bar=false", "model.depth=1",
                          f"run_dir={tmp_path}/run"]))  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[rpb-train] threads: 1 (trainer.threads); " + out[0].split("; ")[1]
