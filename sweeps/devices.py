"""One GPU (or one group of GPUs) per local sweep worker: the `CUDA_VISIBLE_DEVICES` each spawned worker gets.

    rpb-sweep sweep.workers=4                          # 4 GPUs: worker k sees GPU k; 2 GPUs: k mod 2 (two per GPU)
    rpb-sweep sweep.workers=2 sweep.devices=[2,3]      # worker k sees devices[k mod 2]
    rpb-sweep sweep.workers=2 'sweep.devices=["0,1","2,3"]'   # a group of GPUs per worker (a train_fn that uses
                                                               # several devices itself)

The rule (`worker_devices`): with `sweep.devices` empty, worker k gets GPU k mod G of the G GPUs this process
sees; with a list, worker k gets entry k mod len(list). Numbers are indices into what this process sees, so a
command started under `CUDA_VISIBLE_DEVICES=4,5` gives its workers 4 and 5. Without a GPU (G = 0) and no list,
the workers inherit the environment unchanged. Trials that each train on K GPUs under `accelerate launch`
(`accelerate launch --num_processes K -m sweeps.cli`) run one worker per command and are not touched here: give
each such command its own devices (`CUDA_VISIBLE_DEVICES=0,1 accelerate launch ...`, `CUDA_VISIBLE_DEVICES=2,3
...`), all on the same study storage.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence

from sweeps.space import SweepConfigError

ENV = "CUDA_VISIBLE_DEVICES"
_GROUP_RE = re.compile(r"^\d+(,\d+)*$")


def parse_devices(devices: Sequence[int | str] | None) -> list[list[int]]:
    """`sweep.devices` -> one list of device indices per entry: `[0, "1,2"]` -> `[[0], [1, 2]]`.

    Raises:
        SweepConfigError: an entry that is not a non-negative int or a comma-separated list of them.
    """
    groups = []
    for i, entry in enumerate(devices or []):
        text = str(entry).replace(" ", "")
        if isinstance(entry, bool) or not _GROUP_RE.match(text):
            raise SweepConfigError(
                f"sweep.devices[{i}]={entry!r} is not a GPU index; list indices such as [0, 1] or groups such as "
                '["0,1", "2,3"].'
            )
        groups.append([int(d) for d in text.split(",")])
    return groups


def worker_devices(
    workers: int, devices: Sequence[int | str] | None, device_count: int, visible: str | None = None
) -> list[str | None]:
    """The `CUDA_VISIBLE_DEVICES` of each of `workers` local workers (None: leave the variable as it is).

    Args:
        workers: spawned worker processes (sweep.workers).
        devices: sweep.devices (empty: one GPU each, round robin over the `device_count` GPUs).
        device_count: GPUs this process sees (`torch.cuda.device_count()`).
        visible: this process's own CUDA_VISIBLE_DEVICES; indices are mapped through it.

    Raises:
        SweepConfigError: a malformed entry, or an index this process does not see.
    """
    groups = parse_devices(devices)
    if not groups:
        if device_count == 0:
            return [None] * workers
        groups = [[k] for k in range(device_count)]
    names = [v.strip() for v in visible.split(",")] if visible else [str(k) for k in range(device_count)]
    for i, group in enumerate(groups):
        for d in group:
            if d >= len(names):
                raise SweepConfigError(
                    f"sweep.devices[{i}] names GPU {d} but this host shows {device_count} GPU(s); list indices below "
                    f"{device_count} or leave sweep.devices empty."
                    if device_count
                    else f"sweep.devices[{i}] names GPU {d} but this host shows no GPU; leave sweep.devices empty."
                )
    return [",".join(names[d] for d in groups[k % len(groups)]) for k in range(workers)]


def assign_worker_devices(workers: int, devices: Sequence[int | str] | None) -> list[str | None]:
    """`worker_devices` for this host: its GPU count from torch, its own CUDA_VISIBLE_DEVICES."""
    import torch

    return worker_devices(workers, devices, torch.cuda.device_count(), os.environ.get(ENV))


@contextlib.contextmanager
def visible_devices(value: str | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES=`value` while a worker process starts (a spawned child copies the environment then);
    None leaves it unchanged. The parent's own value is restored afterwards."""
    if value is None:
        yield
        return
    before = os.environ.get(ENV)
    os.environ[ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
