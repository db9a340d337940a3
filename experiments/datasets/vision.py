"""CIFAR-10 and ImageFolder through torchvision, read from files on disk (PIL decoding, as the dataset classes do)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_SPLIT_SEED = 0


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        """CIFAR10 that checks the batch files exist instead of hashing ~180 MB at every start.

        The download still verifies the archive's md5; a truncated batch fails to unpickle loudly anyway.
        """

        train_list = [(name, None) for name, _ in CIFAR10.train_list]
        test_list = [(name, None) for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10Files


def image_transforms(
    img_size: int,
    in_channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    train: bool,
    augment: bool,
    randaugment: bool,
    native_size: int | None = None,
    crop_padding: int = 4,
):
    """PIL image -> normalised float tensor (C, H, W); train adds random crop with padding, flip, RandAugment."""
    from torchvision.transforms import v2

    ops: list = []
    if native_size != img_size:
        ops.append(v2.Resize((img_size, img_size), antialias=True))
    if train and augment:
        ops += [v2.RandomCrop(img_size, padding=crop_padding), v2.RandomHorizontalFlip()]
    if train and randaugment:
        ops.append(v2.RandAugment())
    if in_channels == 1:
        ops.append(v2.Grayscale(num_output_channels=1))
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def build_cifar10(
    root: str, img_size: int, in_channels: int, *, download: bool, augment: bool, randaugment: bool
) -> tuple[Dataset, Dataset]:
    """CIFAR-10 train (50k) and test (10k, used as val) from `root/cifar-10-batches-py`."""
    folder = Path(root) / "cifar-10-batches-py"
    if not download and not folder.is_dir():
        raise ValueError(
            f"data.root={root!r} holds no cifar-10-batches-py folder: point data.root at the folder that contains "
            "it, or set data.download=true to fetch CIFAR-10 there."
        )
    cifar10 = _cifar10_class()
    kwargs = dict(img_size=img_size, in_channels=in_channels, mean=CIFAR10_MEAN, std=CIFAR10_STD, native_size=32)
    kwargs.update(augment=augment, randaugment=randaugment, crop_padding=max(1, img_size // 8))
    try:
        train = cifar10(root, train=True, download=download, transform=image_transforms(train=True, **kwargs))
        val = cifar10(root, train=False, download=False, transform=image_transforms(train=False, **kwargs))
    except OSError as err:  # urllib's URLError included: no network, or no write access to data.root
        raise ValueError(
            f"CIFAR-10 could not be downloaded to data.root={root!r} ({err}): put cifar-10-batches-py there "
            "yourself and set data.download=false."
        ) from err
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(
            f"CIFAR-10 files under data.root={root!r} are incomplete ({err}): restore cifar-10-batches-py "
            "(data_batch_1..5, test_batch, batches.meta) or set data.download=true."
        ) from err
    return train, val


def _stratified_split(targets: list[int], val_fraction: float) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    indices = list(range(len(targets)))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=targets, random_state=IMAGEFOLDER_SPLIT_SEED
    )
    return sorted(train_idx), sorted(val_idx)


def build_imagefolder(
    root: str, img_size: int, in_channels: int, val_fraction: float, *, augment: bool, randaugment: bool
) -> tuple[Dataset, Dataset]:
    """ImageFolder from `root/train` + `root/val` when both exist, else a stratified split of `root/<class>/...`."""
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not base.is_dir():
        raise ValueError(
            f"data.root={root!r} is not a folder: set data.root to a folder of class subfolders of images "
            "(or with train/ and val/ subfolders)."
        )
    kwargs = dict(img_size=img_size, in_channels=in_channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    kwargs.update(augment=augment, randaugment=randaugment, crop_padding=max(1, img_size // 8))
    train_tf, val_tf = image_transforms(train=True, **kwargs), image_transforms(train=False, **kwargs)
    try:
        if (base / "train").is_dir() and (base / "val").is_dir():
            train = ImageFolder(str(base / "train"), transform=train_tf)
            val = ImageFolder(str(base / "val"), transform=val_tf)
            if train.classes != val.classes:
                raise ValueError(
                    f"data.root={root!r}: train/ has classes {train.classes} but val/ has {val.classes}; "
                    "give both the same class subfolders."
                )
            return train, val
        train_all = ImageFolder(str(base), transform=train_tf)
    except FileNotFoundError as err:  # no class folders or no images with a known extension
        raise ValueError(f"data.root={root!r} holds no images in class subfolders ({err}).") from err
    val_all = ImageFolder(str(base), transform=val_tf)
    train_idx, val_idx = _stratified_split(train_all.targets, val_fraction)
    train, val = Subset(train_all, train_idx), Subset(val_all, val_idx)
    train.classes = val.classes = train_all.classes  # so the class count check sees them
    return train, val
