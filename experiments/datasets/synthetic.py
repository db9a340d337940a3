"""The training guide's `SyntheticImageDataset`: deterministic, learnable, generated lazily per item."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# Class templates come from this fixed seed, not from `seed`, so a train set and a val set built with different
# seeds share the same classes (and the val set is learnable from the train set).
TEMPLATE_SEED = 1234


class SyntheticImageDataset(Dataset):
    """Random images whose label is a class-dependent pattern plus Gaussian noise.

    Each class has a fixed random template that is constant within `patch_size` x `patch_size` cells, so a patch
    based model can read the class from patch means; pixel noise of std `noise_std` sits on top. Items are generated
    on demand from (seed, index), so the dataset is deterministic, costs no memory and works in DataLoader workers.

    Args:
        num_samples: number of items.
        img_size: image height and width.
        patch_size: side of the cells the class pattern is constant over.
        in_channels: image channels.
        num_classes: number of classes; labels are balanced (index % num_classes, shuffled by `seed`).
        seed: seed of the label order and of the per-item noise.
        noise_std: std of the pixel noise (the templates have std 1).
    """

    def __init__(
        self,
        num_samples: int = 1000,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        num_classes: int = 1000,
        seed: int = 0,
        noise_std: float = 1.0,
    ) -> None:
        for name, value in (
            ("num_samples", num_samples),
            ("img_size", img_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("num_classes", num_classes),
        ):
            if value < 1:
                raise ValueError(f"SyntheticImageDataset: {name} must be a positive integer, got {value}.")
        self.num_samples = num_samples
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.seed = seed
        self.noise_std = noise_std
        grid = -(-img_size // patch_size)  # cells per side, ceil so the pattern covers the image
        template_gen = torch.Generator().manual_seed(TEMPLATE_SEED)
        # Kept at cell resolution: (num_classes, C, grid, grid); 1000 classes at 224/16 is ~2 MB, not ~600 MB.
        self.templates = torch.randn(num_classes, in_channels, grid, grid, generator=template_gen)
        label_gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(num_samples) % num_classes
        self.labels = labels[torch.randperm(num_samples, generator=label_gen)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = self.labels[index]
        # A generator per item: the same (seed, index) gives the same image in any process and any order.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pattern = F.interpolate(self.templates[label][None], scale_factor=self.patch_size, mode="nearest")[0]
        pattern = pattern[:, : self.img_size, : self.img_size]  # (C, H, W)
        noise = torch.randn(self.in_channels, self.img_size, self.img_size, generator=gen)
        return pattern + self.noise_std * noise, label
