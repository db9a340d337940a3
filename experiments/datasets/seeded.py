"""Datasets whose augmentation is a function of a per-sample seed they are handed, fetched a batch at a time.

A dataset with `get_seeded(indices, seeds)` (and `seeded` true) returns the samples `indices`, sample i augmented with the draws of
`seeds[i]` alone (no global generator): `experiments.data.EpochSeededDataset` hands it the seeds of (run seed, epoch,
index) and fetches a whole batch in one call (DataLoader's `__getitems__`), so the augmentation runs as a few tensor
ops a batch instead of a generator reseeded and put back every sample (CIFAR-10: ~60 us an image before, about
6% of the CPU training step; `python -m experiments.bench_tracking --loop-efficiency`). Used on its own (the
validation loader, a test), such a dataset draws its seeds from torch's global generator (`seeds_from_torch`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

SEED_BOUND = 1 << 63  # seeds from torch's generator: 0 <= s < 2**63 (int64); EpochSeededDataset's go to 2**64


@runtime_checkable
class SeededItems(Protocol):
    seeded: bool  # whether get_seeded can be used (a dataset may take seeds with one transform and not another)

    def get_seeded(self, indices: list[int], seeds: list[int] | None) -> list[tuple[torch.Tensor, Any]]:
        """Samples `indices` as (image, label) pairs, sample i drawn from `seeds[i]` (None: seeds from torch's
        global generator, `seeds_from_torch`)."""
        ...


def seeds_from_torch(n: int) -> list[int]:
    """`n` seeds drawn from torch's global CPU generator (one draw), for a seeded dataset used without seeds."""
    return torch.randint(0, SEED_BOUND - 1, (n,), dtype=torch.int64).tolist()


def pairs(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A batch (images (B, ...), labels (B,)) as the B (image, label) pairs DataLoader's collate stacks again."""
    return list(zip(images.unbind(0), labels.unbind(0)))
