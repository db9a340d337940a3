"""Datasets and data loaders from the `data` config group: digits (default), synthetic, cifar10, imagefolder.

train_ds, val_ds = build_datasets(cfg.data)
train_loader, val_loader = build_dataloaders(cfg.data, seed=cfg.seed)
set_epoch(train_loader, epoch)   # before each epoch (engine.train_epoch does it): its shuffle order and augmentation
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from experiments.config import DATASETS  # the torch-free home of the names (conf/data/)
from experiments.datasets import (
    SyntheticImageDataset,
    build_cifar10,
    build_digits,
    build_imagefolder,
    load_digits_tensors,
)
from experiments.datasets.seeded import SeededItems

__all__ = [
    "DATASETS",
    "EpochSeededDataset",
    "SyntheticImageDataset",
    "build_dataloaders",
    "build_datasets",
    "load_digits_tensors",
    "sample_seed",
    "set_epoch",
]

# The synthetic train and val sets share class templates and differ in their samples; fixed, like the digits split.
SYNTHETIC_TRAIN_SEED, SYNTHETIC_VAL_SEED = 0, 1


_UINT64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that spreads every input bit over the output."""
    x = (x + 0x9E3779B97F4A7C15) & _UINT64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _UINT64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _UINT64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (0 <= s < 2**64) of the augmentation of sample `index` in `epoch` of a run seeded with `seed`."""
    return sample_seeds(seed, epoch, [index])[0]


def sample_seeds(seed: int, epoch: int, indices: list[int]) -> list[int]:
    """`sample_seed` of each of `indices`, the (seed, epoch) part mixed once."""
    key = _splitmix64(_splitmix64(seed & _UINT64) ^ (epoch & _UINT64))
    return [_splitmix64(key ^ (index & _UINT64)) for index in indices]


class EpochSeededDataset(Dataset):
    """`dataset[index]` drawn from the seed `sample_seed(seed, epoch, index)`.

    A sample's augmentation is then a pure function of (run seed, epoch, index): the same in the main process and in
    any worker, on any rank, in a straight run and in one resumed at an epoch boundary. Seeding the workers instead
    (torch seeds each from the loader's generator when it starts) ties the draws to that generator's history, which
    a resumed process does not share, and, with persistent workers, to every sample the worker fetched before.

    A dataset that takes its seeds (`experiments.datasets.seeded.SeededItems`: digits, CIFAR-10 at its native size,
    ImageFolder without RandAugment) gets them handed over, a batch at a time (DataLoader's `__getitems__`), and touches no generator. Any other is
    fetched sample by sample with torch's CPU generator seeded by the sample's seed (torchvision's transforms draw
    from it; Python's `random` and NumPy's global generator are not seeded, and no dataset here draws from them);
    in the main process (num_workers=0) the generator's state is put back after each sample, so the training's own
    draws (dropout) go on as if no data were loaded.

    The epoch lives in shared memory, so persistent workers see `set_epoch` too; an epoch's indices reach the workers
    only once its pass starts (after `set_epoch`).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._seeded = isinstance(dataset, SeededItems) and bool(dataset.seeded)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """The samples `indices` of the current epoch (DataLoader fetches a batch with one call)."""
        seeds = sample_seeds(self.seed, int(self._epoch), indices)
        if self._seeded:
            return self.dataset.get_seeded(indices, seeds)
        return [self._drawn(index, item_seed) for index, item_seed in zip(indices, seeds)]

    def _drawn(self, index: int, item_seed: int) -> Any:
        generator = torch.default_generator
        if get_worker_info() is not None:  # a worker draws for the data alone: nothing to put back
            generator.manual_seed(item_seed)
            return self.dataset[index]
        state = generator.get_state()
        generator.manual_seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


def set_epoch(loader: Any, epoch: int) -> None:
    """Make the next pass over `loader` that of `epoch`: its shuffle order (a loader prepared by Accelerate, whose
    seedable sampler draws with seed + epoch) and its augmentation (an `EpochSeededDataset`). Anything else, such
    as a list of batches, is left as it is."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, EpochSeededDataset):
        dataset.set_epoch(epoch)  # Accelerate's set_epoch skips the dataset once its sampler is sharded (N processes)


def _get(data_cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = data_cfg.get(key, default)
    return default if value is None else value


def _check_positive(data_cfg: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        value = data_cfg.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{key} must be a positive integer, got {value!r}.")


def _require_root(data_cfg: Mapping[str, Any], name: str, hint: str) -> str:
    root = data_cfg.get("root")
    if not root:
        raise ValueError(f"data.root is not set for data.name={name}: set data.root to {hint}.")
    return str(root)


def build_datasets(data_cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """Train and val datasets of the configured kind; items are `(image (C, H, W) float32, label int64)`.

    Args:
        data_cfg: the `data` config (a DictConfig or a dict) with the contract's keys: name, root, img_size,
            in_channels, num_classes, val_fraction, num_samples (synthetic), download, augment, randaugment.
    """
    name = data_cfg.get("name", "digits")
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known dataset: choose one of {', '.join(DATASETS)}.")
    _check_positive(data_cfg, "img_size", "in_channels", "num_classes", "num_samples")
    img_size, in_channels = int(_get(data_cfg, "img_size", 28)), int(_get(data_cfg, "in_channels", 1))
    num_classes = int(_get(data_cfg, "num_classes", 10))
    val_fraction = float(_get(data_cfg, "val_fraction", 0.2))
    augment, randaugment = bool(_get(data_cfg, "augment", True)), bool(_get(data_cfg, "randaugment", False))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    if name != "synthetic" and in_channels not in (1, 3):
        raise ValueError(f"data.in_channels={in_channels} does not fit {name}: use 1 (grey) or 3 (RGB).")

    if name == "digits":
        _check_num_classes(name, num_classes, 10)
        return build_digits(img_size, in_channels, val_fraction, augment)
    if name == "synthetic":
        num_samples = int(_get(data_cfg, "num_samples", 1000))
        num_val = max(1, round(num_samples * val_fraction))
        if num_samples - num_val < 1:
            raise ValueError(f"data.num_samples={num_samples} leaves no training samples: raise it.")
        patch_size = int(_get(data_cfg, "patch_size", max(1, img_size // 7)))
        common = dict(img_size=img_size, patch_size=patch_size, in_channels=in_channels, num_classes=num_classes)
        train = SyntheticImageDataset(num_samples - num_val, seed=SYNTHETIC_TRAIN_SEED, **common)
        val = SyntheticImageDataset(num_val, seed=SYNTHETIC_VAL_SEED, **common)
        return train, val
    if name == "cifar10":
        _check_num_classes(name, num_classes, 10)
        root = _require_root(
            data_cfg, name, "the folder holding cifar-10-batches-py (with data.download=true to fetch it)"
        )
        download = bool(_get(data_cfg, "download", False))
        return build_cifar10(root, img_size, in_channels, download=download, augment=augment, randaugment=randaugment)
    # imagefolder
    root = _require_root(data_cfg, name, "a folder of class subfolders of images (or with train/ and val/)")
    train, val = build_imagefolder(root, img_size, in_channels, val_fraction, augment=augment, randaugment=randaugment)
    _check_num_classes(name, num_classes, len(train.classes))
    return train, val


def _check_num_classes(name: str, configured: int, actual: int) -> None:
    if configured != actual:
        raise ValueError(
            f"data.num_classes={configured} but {name} has {actual} classes: set data.num_classes={actual}."
        )


# Loader workers a null `data.num_workers` gives on a GPU, at most (one core is left to the training process).
GPU_LOADER_WORKERS = 4


def loader_options(data_cfg: Mapping[str, Any], *, cuda: bool, cores: int | None = None) -> dict[str, Any]:
    """DataLoader's `num_workers`, `pin_memory` and `persistent_workers` from `data.*`, a null chosen by the device.

    On a GPU (the cifar10 and imagefolder presets leave them null: decoded images, augmented per sample):
    `min(GPU_LOADER_WORKERS, cores - 1)` workers, pinned memory (asynchronous host-to-device copies) and persistent
    workers (not restarted every epoch), as the training guide and torch's tuning guide advise. On the CPU none of
    them: the workers take the cores the training step computes on (2 cores, CIFAR-10's epoch at 0.84 of the pure
    step's images/s with 1 worker, against 0.95 with none: `python -m experiments.bench_tracking --loop-efficiency
    cifar10 data.num_workers=1`), and pinned memory serves no device.

    Args:
        cuda: whether the batches go to a CUDA device.
        cores: the cores this process may use (default: `experiments.threads.usable_cores()`).

    Raises:
        ValueError: a negative `data.num_workers`.
    """
    num_workers = data_cfg.get("num_workers", 0)  # (not `_get`: null means "by the device" here)
    if num_workers is None:
        if cores is None:
            from experiments.threads import usable_cores

            cores = usable_cores()
        num_workers = min(GPU_LOADER_WORKERS, max(0, cores - 1)) if cuda else 0
    num_workers = int(num_workers)
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be 0 or more, got {num_workers}.")
    pin_memory = data_cfg.get("pin_memory", False)
    options: dict[str, Any] = dict(num_workers=num_workers, pin_memory=cuda if pin_memory is None else bool(pin_memory))
    if num_workers > 0:  # DataLoader refuses persistent_workers without workers
        persistent = data_cfg.get("persistent_workers", False)
        options["persistent_workers"] = True if persistent is None else bool(persistent)
    return options


def build_dataloaders(data_cfg: Mapping[str, Any], *, seed: int, cuda: bool = False) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled by `seed`) and val loaders, with `loader_options` (`cuda`: the batches go to a GPU).

    The train loader's generator is seeded with `seed` (the shuffle order; per epoch once Accelerate prepares it);
    its dataset is an `EpochSeededDataset`, whose augmentation follows (seed, epoch, index) whichever process or
    worker draws it: call `set_epoch` before each pass.
    """
    _check_positive(data_cfg, "batch_size", "eval_batch_size")
    common = loader_options(data_cfg, cuda=cuda)
    train_ds, val_ds = build_datasets(data_cfg)
    batch_size = int(_get(data_cfg, "batch_size", 32))
    eval_batch_size = int(_get(data_cfg, "eval_batch_size", batch_size))
    # Each loader has its own generator: starting a pass draws the workers' base seed from it, which would otherwise
    # come from torch's global generator (dropout's) once per pass, or once per process with persistent workers,
    # and so differ between a straight run and a resumed one.
    train_ds = EpochSeededDataset(train_ds, seed)
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(int(seed)), **common
    )
    val_loader = DataLoader(
        val_ds, batch_size=eval_batch_size, shuffle=False, generator=torch.Generator().manual_seed(int(seed)), **common
    )
    return train_loader, val_loader
