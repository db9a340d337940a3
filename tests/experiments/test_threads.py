"""The intra-op thread rule (`experiments.threads`): usable cores less the busy ones, trainer.threads overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import threads


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
    with pytest.raises(ValueError, match=r"trainer.threads=0 must be at least 1"):
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
