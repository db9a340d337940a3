"""scikit-learn's bundled 8x8 digits as a cached, resized, normalised tensor dataset."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from experiments.datasets.seeded import pairs, seeds_from_torch

DIGITS_NUM_CLASSES = 10
# The split is a property of the dataset, not of the run: every run and every sweep trial sees the same val set.
DIGITS_SPLIT_SEED = 0


class DigitsTensors(NamedTuple):
    train_images: torch.Tensor  # (N_train, C, H + 2t, W + 2t), normalised, zero-background padded by `translate`
    train_labels: torch.Tensor  # (N_train,) int64
    val_images: torch.Tensor  # (N_val, C, H, W), normalised
    val_labels: torch.Tensor  # (N_val,) int64
    mean: float
    std: float


@functools.lru_cache(maxsize=8)
def load_digits_tensors(img_size: int, in_channels: int, val_fraction: float, translate: int = 0) -> DigitsTensors:
    """Load, resize (bilinear, once), split (stratified, fixed seed) and normalise (train statistics) the digits.

    Cached per argument tuple, so sweeps and tests that build the dataset many times pay for it once.
    The tensors are shared between callers: treat them as read-only.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=val_fraction,
        stratify=labels.numpy(),
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    train_images, val_images = images[train_idx], images[val_idx]
    mean, std = train_images.mean().item(), train_images.std().item()
    if translate > 0:
        # Pad with the raw background (0) before normalising, so shifted-in pixels look like background.
        train_images = F.pad(train_images, (translate,) * 4, value=0.0)
    train_images = ((train_images - mean) / std).repeat(1, in_channels, 1, 1).contiguous()
    val_images = ((val_images - mean) / std).repeat(1, in_channels, 1, 1).contiguous()
    return DigitsTensors(train_images, labels[train_idx], val_images, labels[val_idx], mean, std)


class TensorImageDataset(Dataset):
    """Images held in one tensor; with `translate > 0` each item is a random crop of an image padded by `translate`.

    The crop's offsets (top, left), each uniform in [0, 2 translate], are the digits of `seed mod (2 translate + 1)^2`
    for the sample's seed (`experiments.datasets.seeded`): `experiments.data.build_dataloaders` hands it the seed of
    (run seed, epoch, index) (`EpochSeededDataset`), so a sample's shift is the same in any process or worker; used
    on its own, the seeds come from torch's global generator.
    """

    seeded = True  # get_seeded applies (experiments.datasets.seeded)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, translate: int = 0) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.translate = translate
        self.size = images.shape[-1] - 2 * translate

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get_seeded([index], None)[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch of samples in one call (DataLoader's batched fetch)."""
        return self.get_seeded(indices, None)

    def get_seeded(self, indices: list[int], seeds: list[int] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(image (C, H, W), label) of `indices`, image i cropped at the offsets of `seeds[i]` (None: seeds drawn
        from torch's generator; no draw without `translate`)."""
        labels = self.labels[indices]
        if self.translate == 0:
            return pairs(self.images[indices], labels)
        side, size = 2 * self.translate + 1, self.size
        seeds = seeds_from_torch(len(indices)) if seeds is None else seeds
        crops = []
        for index, seed in zip(indices, seeds):
            top, left = divmod(seed % (side * side), side)
            crops.append(self.images[index, :, top : top + size, left : left + size])
        return pairs(torch.stack(crops), labels)


def build_digits(img_size: int, in_channels: int, val_fraction: float, augment: bool) -> tuple[Dataset, Dataset]:
    """Train and val digits datasets; `augment` turns on a light random translation (about 7% of the side)."""
    translate = max(1, round(img_size / 14)) if augment else 0
    tensors = load_digits_tensors(img_size, in_channels, val_fraction, translate)
    train = TensorImageDataset(tensors.train_images, tensors.train_labels, translate)
    val = TensorImageDataset(tensors.val_images, tensors.val_labels)
    return train, val
