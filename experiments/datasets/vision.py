"""CIFAR-10 and ImageFolder through torchvision, read from files on disk (PIL decoding, as the dataset classes do).

A file or folder they cannot use is named in one sentence (`DataFileError`, a ConfigError: exit 2), not left to a
traceback from inside torchvision: a CIFAR-10 batch that is not the python pickle of the real files (checked when
torchvision's load fails or gives something else than 32x32 uint8 images with labels 0..9), a class folder without
images (when the dataset is built), an image PIL cannot open (when it is loaded, in a DataLoader worker too).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from experiments.config_errors import DataFileError
from experiments.datasets.seeded import pairs, seeds_from_torch

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_SPLIT_SEED = 0
CIFAR10_CLASSES, CIFAR10_PIXELS = 10, 3 * 32 * 32  # a batch row: 1024 red, 1024 green, 1024 blue bytes
CIFAR10_FOLDER = "cifar-10-batches-py"
RESTORE_CIFAR10 = (
    f"restore {CIFAR10_FOLDER} from the original cifar-10-python.tar.gz (or delete the folder and set "
    "data.download=true)"
)


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        """CIFAR10 that checks the batch files exist instead of hashing ~180 MB at every start.

        The download still verifies the archive's md5; a file that is not a CIFAR-10 batch is named by
        `_cifar10_error` when torchvision cannot load it or loads something else. With a `CropFlipNormalize`
        transform images go to it a batch at a time as uint8 tensors (B, C, H, W), not one by one as PIL images.
        """

        train_list = [(name, None) for name, _ in CIFAR10.train_list]
        test_list = [(name, None) for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

        @property
        def seeded(self) -> bool:
            """Whether `get_seeded` applies: with a `CropFlipNormalize` (else torchvision's PIL path, per image)."""
            return isinstance(self.transform, CropFlipNormalize)

        def __getitem__(self, index: int):
            return self.get_seeded([index], None)[0] if self.seeded else super().__getitem__(index)

        def __getitems__(self, indices: list[int]):
            """A batch of samples (DataLoader's batched fetch): one `get_seeded` with a `CropFlipNormalize`."""
            return self.get_seeded(indices, None) if self.seeded else [self[index] for index in indices]

        def get_seeded(self, indices: list[int], seeds: list[int] | None):
            """(image float32 (C, H, W), label) of `indices`, image i augmented from `seeds[i]`
            (`experiments.datasets.seeded`; None: drawn from torch's generator). Only with a `CropFlipNormalize`."""
            images = torch.from_numpy(self.data[indices]).permute(0, 3, 1, 2)  # (B, H, W, C) uint8 -> (B, C, H, W)
            labels = torch.as_tensor([self.targets[i] for i in indices], dtype=torch.int64)
            return pairs(self.transform(images.contiguous(), seeds), labels)

    return CIFAR10Files


class CropFlipNormalize:
    """uint8 images (B, C, H, W) or one (C, H, W) -> normalised float32 of that shape; for training, first a random
    crop of each image padded with `padding` zeros on each side and a horizontal flip with probability 1/2.

    What `image_transforms` builds at the native size without RandAugment (v2.RandomCrop(padding) +
    v2.RandomHorizontalFlip + ToDtype(scale) + Normalize), in plain tensor ops on a whole batch: the crops are one
    indexing of the zero-padded batch's windows, the flips one more, and the batch is normalised in one fused
    multiply-add (x * 1/(255 std) - mean/std). ~580 us an image for the v2 pipeline on a PIL image, ~60 us for this
    transform an image at a time, ~12 us an image on a batch of 64 (2-core machine; `python -m
    experiments.bench_tracking --loop-efficiency`). The draws of image i are a function of `seeds[i]` alone: its offsets (dy, dx), each
    uniform in [-padding, padding], and its flip, probability 1/2, independent as v2's, are the digits of
    `seeds[i] mod 2 (2 padding + 1)^2` (`experiments.datasets.seeded`; seeds=None draws them from torch's global
    generator, as v2 draws its own).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], *, train: bool, padding: int = 4) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1 / (255 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
        self.train, self.padding = train, padding

    def __call__(self, images: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        batch = images[None] if images.dim() == 3 else images
        if self.train:
            batch = self._crop_flip(batch, seeds_from_torch(len(batch)) if seeds is None else seeds)
        out = torch.addcmul(self.shift, batch.to(torch.float32), self.scale)
        return out[0] if images.dim() == 3 else out

    def _crop_flip(self, batch: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Image i of `batch` (B, C, H, W) cropped at offsets (dy, dx) of its zero-padded self, flipped or not, by
        the digits of seeds[i] mod 2 side^2 (side = 2 padding + 1): one indexing of the padded batch's windows."""
        (n, c, h, w), p = batch.shape, self.padding
        side = 2 * p + 1  # offsets -p..p on each axis: the crop starts at (p + dy, p + dx) of the padded image
        draws = torch.tensor([seed % (2 * side * side) for seed in seeds])
        flip, offset = (draws // (side * side)).bool(), draws % (side * side)
        padded = batch.new_zeros((n, c, h + 2 * p, w + 2 * p))
        padded[:, :, p : p + h, p : p + w] = batch
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, side, side, H, W): every crop, a view
        crops = windows[torch.arange(n), :, offset // side, offset % side]  # (B, C, H, W)
        if flip.any():
            crops[flip] = crops[flip].flip(-1)
        return crops


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
    """PIL image -> normalised float tensor (C, H, W); train adds random crop with padding, flip, RandAugment.

    At the native size without RandAugment (`mean` with one value per channel), a `CropFlipNormalize` (the same
    augmentation in tensor ops, for datasets that hand it uint8 tensors: CIFAR-10, and ImageFolder's images
    decoded and resized by `DecodeResize`); else torchvision's v2 pipeline.
    """
    if native_size == img_size and in_channels == len(mean) and not (train and randaugment):
        return CropFlipNormalize(mean, std, train=train and augment, padding=crop_padding)
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
    """CIFAR-10 train (50k) and test (10k, used as val) from `root/cifar-10-batches-py`.

    Raises:
        ValueError: no such folder, files missing, or the download failed.
        DataFileError: a file there is not a CIFAR-10 python batch (`cifar10_file_problem`).
    """
    folder = Path(root) / CIFAR10_FOLDER
    if not download and not folder.is_dir():
        raise ValueError(
            f"data.root={root!r} holds no {CIFAR10_FOLDER} folder: point data.root at the folder that contains "
            "it, or set data.download=true to fetch CIFAR-10 there."
        )
    cifar10 = _cifar10_class()
    kwargs = dict(img_size=img_size, in_channels=in_channels, mean=CIFAR10_MEAN, std=CIFAR10_STD, native_size=32)
    kwargs.update(augment=augment, randaugment=randaugment, crop_padding=max(1, img_size // 8))
    try:
        train = cifar10(root, train=True, download=download, transform=image_transforms(train=True, **kwargs))
        val = cifar10(root, train=False, download=False, transform=image_transforms(train=False, **kwargs))
    except Exception as err:  # torchvision's load: a missing file, a failed download, or a file it cannot read
        raise _cifar10_error(root, folder, download, err) from None
    for split in (train, val):
        if not _loaded_like_cifar10(split):  # a file torchvision read without complaint, but not CIFAR-10's
            raise _cifar10_error(root, folder, download, None)
    return train, val


def _cifar10_files() -> list[tuple[str, bool]]:
    """(file name, whether it is the metadata file) of cifar-10-batches-py, the training batches first."""
    from torchvision.datasets import CIFAR10

    return [(name, False) for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [(CIFAR10.meta["filename"], True)]


def _cifar10_error(root: str, folder: Path, download: bool, err: Exception | None) -> ValueError:
    """The one sentence for a CIFAR-10 folder torchvision could not load (`err`) or loaded wrong (None)."""
    missing = [name for name, _ in _cifar10_files() if not (folder / name).is_file()]
    if missing and download and isinstance(err, OSError):  # urllib's URLError included
        return ValueError(
            f"CIFAR-10 could not be downloaded to data.root={root!r} ({err}): put {CIFAR10_FOLDER} there "
            "yourself and set data.download=false."
        )
    if missing:
        return ValueError(
            f"CIFAR-10 files under data.root={root!r} are incomplete ({folder} lacks {', '.join(missing)}): restore "
            f"{CIFAR10_FOLDER} (data_batch_1..5, test_batch, batches.meta) or set data.download=true."
        )
    for name, meta in _cifar10_files():
        problem = cifar10_file_problem(folder / name, meta=meta)
        if problem:
            return DataFileError(
                f"{folder / name} is not a file of CIFAR-10's python version: it {problem}; {RESTORE_CIFAR10}."
            )
    what = f" ({type(err).__name__}: {err})" if err is not None else ""
    return DataFileError(f"CIFAR-10 under {folder} could not be read{what}: {RESTORE_CIFAR10}.")


def _loaded_like_cifar10(split) -> bool:
    """Whether torchvision's CIFAR10 holds what the real files give: uint8 32x32x3 images, one label 0..9 each."""
    data, targets = split.data, np.asarray(split.targets)
    return (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (32, 32, 3)
        and targets.shape == (len(data),) and np.issubdtype(targets.dtype, np.integer)
        and (len(targets) == 0 or (targets.min() >= 0 and targets.max() < CIFAR10_CLASSES))
        and len(split.classes) == CIFAR10_CLASSES
    )  # fmt: skip


def cifar10_file_problem(path: Path, *, meta: bool = False) -> str | None:
    """What makes `path` unlike a file of cifar-10-batches-py ("has bytes keys ..."), or None when it is like one.

    The real files are Python 2 pickles of dicts with text keys: a batch has "data" (uint8, one row of 3072 bytes an
    image) and "labels" (0..9, one per row); batches.meta has "label_names" (10 names).
    """
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")  # as torchvision reads it
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except Exception as err:  # EOFError, UnpicklingError, ...: truncated or not a pickle
        return f"is truncated or not a pickle ({type(err).__name__}: {err})"
    keys = ("label_names",) if meta else ("data", "labels")
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__} where the CIFAR-10 files hold a dict with keys {', '.join(keys)}"
    if not all(k in entry for k in keys):
        found = ", ".join(repr(k) for k in list(entry)[:6])
        if any(isinstance(k, bytes) for k in entry):
            return (
                f"has bytes keys ({found}) where the CIFAR-10 files have text keys ({', '.join(keys)}; it was "
                "pickled again after a load with encoding='bytes')"
            )
        return f"has keys {found or 'none'} where the CIFAR-10 files have {', '.join(keys)}"
    if meta:
        names = entry["label_names"]
        ok = isinstance(names, (list, tuple)) and len(names) == CIFAR10_CLASSES
        return None if ok else f"has label_names {names!r:.80} where CIFAR-10 names {CIFAR10_CLASSES} classes"
    data, labels = entry["data"], entry["labels"]
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == CIFAR10_PIXELS
    ):
        shape = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"holds data as {shape} where CIFAR-10 has uint8 rows of {CIFAR10_PIXELS} bytes"
    labels = np.asarray(labels)
    if labels.shape != (len(data),):
        return f"has {labels.size} labels for {len(data)} images"
    if not np.issubdtype(labels.dtype, np.integer):
        return f"has {labels.dtype} labels where CIFAR-10 labels are the integers 0..9"
    outside = sorted(set(labels[(labels < 0) | (labels >= CIFAR10_CLASSES)].tolist()))
    if outside:
        return f"has labels outside 0..9 ({', '.join(map(str, outside[:5]))}{' ...' if len(outside) > 5 else ''})"
    return None


def _stratified_split(targets: list[int], val_fraction: float) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    indices = list(range(len(targets)))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=targets, random_state=IMAGEFOLDER_SPLIT_SEED
    )
    return sorted(train_idx), sorted(val_idx)


def load_image(path: str):
    """The RGB PIL image at `path` (as torchvision's default loader gives it), or a DataFileError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        why = "PIL does not recognise it as an image"
    except Exception as err:  # PIL: "image file is truncated", a broken header, ...; or the file went away
        why = f"{type(err).__name__}: {err}"
    raise DataFileError(f"{path} cannot be opened as an image ({why}): replace it with a readable image or delete it.")


def _image_folder(folder: Path, transform, decode: DecodeResize | None = None):
    """torchvision's ImageFolder over `folder` (class subfolders), images opened by `load_image`; with `decode`,
    one that decodes and resizes a batch of images to uint8 and augments it with `transform`, a
    `CropFlipNormalize` (`get_seeded`).

    Raises:
        DataFileError: a class folder holds no image (it would be a class the model never sees).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    dataset = _seeded_image_folder_class()(str(folder), transform=transform, loader=load_image, allow_empty=True)
    dataset.decode = decode
    found = set(dataset.targets)
    empty = [name for name, index in dataset.class_to_idx.items() if index not in found]
    if empty:
        also = f" (as are {', '.join(empty[1:4])}{' ...' if len(empty) > 4 else ''})" if len(empty) > 1 else ""
        images = f"files ending in {', '.join(IMG_EXTENSIONS)}"
        raise DataFileError(
            f"The class folder {folder / empty[0]} holds no images ({images}){also}: put the images of class "
            f"{empty[0]!r} in it, or remove the folder."
        )
    return dataset


class DecodeResize:
    """An image file -> uint8 tensor (C, size, size): `load_image` (RGB), resized by PIL (bilinear, as v2.Resize
    does a PIL image), then converted to grey for one channel (as v2.Grayscale does, after the resize)."""

    def __init__(self, size: int, in_channels: int) -> None:
        self.size, self.grey = size, in_channels == 1

    def __call__(self, path: str) -> torch.Tensor:
        from PIL import Image

        image = load_image(path)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        if self.grey:
            image = image.convert("L")
        pixels = torch.from_numpy(np.asarray(image).copy())  # (H, W) or (H, W, 3) uint8
        return pixels[None] if self.grey else pixels.permute(2, 0, 1)


def _seeded_image_folder_class():
    from torchvision.datasets import ImageFolder

    class ImageFolderFiles(ImageFolder):
        """ImageFolder that, with a `DecodeResize` (`decode`), hands its images a batch at a time to its
        `CropFlipNormalize` (`get_seeded`, `experiments.datasets.seeded`); without one, torchvision's per-image
        path (RandAugment)."""

        decode: DecodeResize | None = None

        @property
        def seeded(self) -> bool:
            return self.decode is not None

        def __getitem__(self, index: int):
            return self.get_seeded([index], None)[0] if self.seeded else super().__getitem__(index)

        def __getitems__(self, indices: list[int]):
            return self.get_seeded(indices, None) if self.seeded else [self[index] for index in indices]

        def get_seeded(self, indices: list[int], seeds: list[int] | None):
            """(image float32 (C, H, W), label) of `indices`, image i augmented from `seeds[i]` (None: drawn from
            torch's generator)."""
            images = torch.stack([self.decode(self.samples[i][0]) for i in indices])
            labels = torch.as_tensor([self.samples[i][1] for i in indices], dtype=torch.int64)
            return pairs(self.transform(images, seeds), labels)

    return ImageFolderFiles


class SeededSubset(Subset):
    """A Subset that passes `get_seeded` on to its dataset (torch's Subset passes `__getitems__` only)."""

    @property
    def seeded(self) -> bool:
        return bool(getattr(self.dataset, "seeded", False))

    def get_seeded(self, indices: list[int], seeds: list[int] | None):
        return self.dataset.get_seeded([self.indices[i] for i in indices], seeds)


def build_imagefolder(
    root: str, img_size: int, in_channels: int, val_fraction: float, *, augment: bool, randaugment: bool
) -> tuple[Dataset, Dataset]:
    """ImageFolder from `root/train` + `root/val` when both exist, else a stratified split of `root/<class>/...`.

    Raises:
        ValueError: no folder, or no class subfolders.
        DataFileError: a class folder without images; when an image is loaded, one PIL cannot open.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(
            f"data.root={root!r} is not a folder: set data.root to a folder of class subfolders of images "
            "(or with train/ and val/ subfolders)."
        )
    kwargs = dict(img_size=img_size, in_channels=in_channels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    kwargs.update(augment=augment, randaugment=randaugment, crop_padding=max(1, img_size // 8))
    decode = None if randaugment else DecodeResize(img_size, in_channels)  # decoded to the size: a batch's crops
    if decode is not None:  # then the tensor-op transform, as at CIFAR-10's native size
        kwargs["native_size"] = img_size
        if in_channels == 1:
            kwargs.update(mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,))
    train_tf, val_tf = image_transforms(train=True, **kwargs), image_transforms(train=False, **kwargs)
    try:
        if (base / "train").is_dir() and (base / "val").is_dir():
            train = _image_folder(base / "train", train_tf, decode)
            val = _image_folder(base / "val", val_tf, decode)
            if train.classes != val.classes:
                raise ValueError(
                    f"data.root={root!r}: train/ has classes {train.classes} but val/ has {val.classes}; "
                    "give both the same class subfolders."
                )
            return train, val
        train_all = _image_folder(base, train_tf, decode)
    except FileNotFoundError as err:  # no class folders
        raise ValueError(f"data.root={root!r} holds no images in class subfolders ({err}).") from err
    val_all = _image_folder(base, val_tf, decode)
    train_idx, val_idx = _stratified_split(train_all.targets, val_fraction)
    train, val = SeededSubset(train_all, train_idx), SeededSubset(val_all, val_idx)
    train.classes = val.classes = train_all.classes  # so the class count check sees them
    return train, val
