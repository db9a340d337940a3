"""Datasets in their real on-disk formats, written locally: tests and benchmarks read them where nothing may be
downloaded (a CIFAR-10 `cifar-10-batches-py` folder, an ImageFolder tree of PNG files), with random pixels.

    write_cifar10(root, per_batch=4)        # root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    write_image_folder(root, classes, ...)  # root/<class>/<i>.png
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the real CIFAR-10 files (pickled by Python 2) hold them.

    Loaded with encoding="bytes" the keys come back as b"data"/b"labels" (the CIFAR website's recipe), with
    encoding="latin1" as "data"/"labels" (torchvision's way).
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar10(root: Path, per_batch: int = 4) -> None:
    """The real `cifar-10-batches-py` layout: pickled dicts with b"data" uint8 (N, 3072) and b"labels"."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(py2_pickle(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 5, size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
