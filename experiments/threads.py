"""How many intra-op threads a CPU run uses: the cores it may use, less those other work keeps busy.

torch starts one intra-op thread per core. On a machine that other processes keep busy those threads fight them
for the same cores, and OpenMP's spinning threads then wait on each other: on 2 cores beside two busy processes,
the default model's training step took 120-153 ms with 2 threads against 63 ms with 1 (6.0 s against 0.67 s at a
load of 8), while on a quiet machine 2 threads beat 1 (29-35 ms against 39 ms). `python -m experiments.bench_threads`
measures it side by side.

The rule (`choose_threads`):
- the cores this process may use: its CPU affinity (`os.sched_getaffinity`), capped by a cgroup CPU quota
  (`/sys/fs/cgroup/cpu.max`, cgroup v2; `cpu.cfs_quota_us` / `cpu.cfs_period_us`, v1);
- less the cores other work keeps busy, sampled from `/proc/stat` over `sample_s` seconds at the start of a run
  (this process sleeps meanwhile, so what is busy is someone else's), rounded to the nearest core;
- at least 1. `trainer.threads` overrides it, and so does OMP_NUM_THREADS set by the user.

A process decides once (`apply_threads`): later runs in it (sweep trials) keep the first choice, so runs that are
compared in one process (a resumed run, a study's trials) use the same threads and the same arithmetic.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.config_errors import ConfigError

__all__ = ["ThreadChoice", "apply_threads", "busy_cores", "choose_threads", "usable_cores"]


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores allowed by a cgroup CPU quota (None: no quota, or none readable)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by the cgroup CPU quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cpu_times(stat: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    try:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(sample_s: float = 0.2, stat: Path = Path("/proc/stat")) -> float | None:
    """Cores kept busy by everything on the machine over the next `sample_s` seconds (None where /proc/stat is not
    there); the caller sleeps meanwhile, so it is other work."""
    before = _cpu_times(stat)
    if before is None:
        return None
    time.sleep(sample_s)
    after = _cpu_times(stat)
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a run uses and why (`line` is what the run prints first)."""

    threads: int
    usable: int
    busy: float | None
    configured: int | None
    source: str = ""  # what set it when neither the rule nor trainer.threads did

    @property
    def line(self) -> str:
        if self.source:
            return f"threads: {self.threads} ({self.source}); {self.usable} cores usable"
        if self.configured is not None:
            return f"threads: {self.threads} (trainer.threads); {self.usable} cores usable"
        busy = "" if self.busy is None else f", {self.busy:.1f} busy with other work"
        return f"threads: {self.threads} of {self.usable} usable cores{busy} (trainer.threads=N overrides)"


def choose_threads(configured: int | None = None, sample_s: float = 0.2) -> ThreadChoice:
    """The intra-op threads of a CPU run: `configured` when given, else the usable cores less the busy ones.

    Raises:
        ConfigError: `configured` below 1.
    """
    usable = usable_cores()
    if configured is not None:
        if int(configured) < 1:
            raise ConfigError(f"trainer.threads={configured} must be at least 1 (or null: chosen from the free cores).")
        return ThreadChoice(int(configured), usable, None, int(configured))
    busy = busy_cores(sample_s)
    free = usable if busy is None else usable - round(busy)
    return ThreadChoice(max(1, min(usable, free)), usable, busy, None)


_CHOSEN: list[ThreadChoice] = []  # this process's choice (`apply_threads`)


def apply_threads(configured: int | None = None) -> ThreadChoice:
    """Set torch's intra-op threads for a CPU run and return the choice: `configured` (trainer.threads) always;
    else OMP_NUM_THREADS when the user set it; else the rule, measured once per process."""
    import torch  # deferred: the rule itself is torch-free (its tests and the benchmark's busy processes need none)

    if configured is not None:
        choice = choose_threads(configured)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
        choice = ThreadChoice(torch.get_num_threads(), usable_cores(), None, None, f"OMP_NUM_THREADS={n}")
    else:
        if not _CHOSEN:
            _CHOSEN.append(choose_threads())
        choice = _CHOSEN[0]
    torch.set_num_threads(choice.threads)
    return choice
