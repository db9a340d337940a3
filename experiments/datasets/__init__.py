"""Dataset builders; `experiments.data` is the import point for the rest of the project."""

from experiments.datasets.digits import build_digits, load_digits_tensors
from experiments.datasets.synthetic import SyntheticImageDataset
from experiments.datasets.vision import build_cifar10, build_imagefolder

__all__ = ["SyntheticImageDataset", "build_cifar10", "build_digits", "build_imagefolder", "load_digits_tensors"]
