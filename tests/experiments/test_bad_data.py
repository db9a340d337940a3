"""Data the training cannot read is one sentence that names the file or folder and says what to do (a ConfigError:
exit 2), not a traceback from inside torchvision or a DataLoader worker."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.config_errors import ConfigError, DataFileError
from experiments.data import build_dataloaders, build_datasets
from experiments.datasets.files import write_cifar10, write_image_folder
from tests.experiments.test_data import CIFAR, IMAGEFOLDER

REPO = Path(__file__).resolve().parents[2]
RESTORE = (
    "restore cifar-10-batches-py from the original cifar-10-python.tar.gz (or delete the folder and set "
    "data.download=true)."
)


def _rewrite(path: Path, change) -> None:
    """Load a CIFAR file as torchvision does, change the dict, and pickle it again (Python 3, text keys)."""
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    change(entry)
    path.write_bytes(pickle.dumps(entry))


def _bytes_keys(path: Path) -> None:
    """The CIFAR website's recipe (`pickle.load(f, encoding="bytes")`), pickled again: every key is bytes."""
    path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes(), encoding="bytes")))


CORRUPTIONS = {
    "bytes keys": (_bytes_keys, "has bytes keys (b'batch_label', b'data', b'labels', b'filenames') where the "
                   "CIFAR-10 files have text keys (data, labels; it was pickled again after a load with "
                   "encoding='bytes')"),
    "not a pickle": (lambda p: p.write_text("id,label\n1,cat\n"), "is truncated or not a pickle"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "is truncated or not a pickle"),
    "a list": (lambda p: p.write_bytes(pickle.dumps([1, 2])), "holds a list where the CIFAR-10 files hold a dict"),
    "other keys": (lambda p: _rewrite(p, lambda e: e.pop("labels")), "has keys 'batch_label', 'data', 'filenames'"),
    "float pixels": (lambda p: _rewrite(p, lambda e: e.update(data=e["data"].astype(np.float32))),
                     "holds data as a float32 array of shape (4, 3072) where CIFAR-10 has uint8 rows of 3072 bytes"),
    "labels past 9": (lambda p: _rewrite(p, lambda e: e.update(labels=[3, 10, 11, 2])),
                      "has labels outside 0..9 (10, 11)"),
    "a label short": (lambda p: _rewrite(p, lambda e: e.update(labels=e["labels"][:3])), "has 3 labels for 4 images"),
}  # fmt: skip


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("file", ["data_batch_3", "test_batch"])
def test_a_cifar10_file_that_is_not_cifar10s_is_named(tmp_path, name, file):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / file
    corrupt, problem = CORRUPTIONS[name]
    corrupt(path)
    with pytest.raises(DataFileError) as err:
        build_datasets({**CIFAR, "root": str(tmp_path)})
    sentence = str(err.value)
    assert sentence.startswith(f"{path} is not a file of CIFAR-10's python version: it {problem}"), sentence
    assert sentence.endswith(RESTORE) and "\n" not in sentence


def test_cifar10_metadata_with_bytes_keys_is_named(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    _bytes_keys(meta)
    with pytest.raises(DataFileError, match=rf"^{meta} is not a file of CIFAR-10's python version: it has bytes keys"):
        build_datasets({**CIFAR, "root": str(tmp_path)})


def test_a_missing_cifar10_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(ValueError, match=r"incomplete \(.*cifar-10-batches-py lacks data_batch_4\)"):
        build_datasets({**CIFAR, "root": str(tmp_path)})


def _broken_image_folder(root: Path) -> Path:
    write_image_folder(root, per_class=5)
    broken = root / "dog" / "2.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature and nothing PIL can read
    return broken


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_an_image_pil_cannot_open_is_named_when_loaded_in_workers_too(tmp_path, num_workers):
    broken = _broken_image_folder(tmp_path)
    cfg = {**IMAGEFOLDER, "root": str(tmp_path), "batch_size": 3, "num_workers": num_workers}
    train_loader, val_loader = build_dataloaders(cfg, seed=0)  # building reads no image
    with pytest.raises(DataFileError) as err:
        for loader in (train_loader, val_loader):
            for _ in loader:
                pass
    assert str(err.value) == (
        f"{broken} cannot be opened as an image (PIL does not recognise it as an image): replace it with a readable "
        "image or delete it."
    )  # the sentence alone: no "Caught DataFileError in DataLoader worker process", no worker traceback


def test_the_sentence_survives_torchs_worker_rewrapping():
    """Pins the private torch behaviour DataFileError relies on (`ExceptionWrapper.reraise`: type(exc)(text))."""
    from torch._utils import ExceptionWrapper

    try:
        raise DataFileError("/data/cat/1.png cannot be opened as an image (...): replace it or delete it.")
    except DataFileError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataFileError) as err:
        wrapped.reraise()
    assert str(err.value) == "/data/cat/1.png cannot be opened as an image (...): replace it or delete it."
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("layout", ["classes", "train/val"])
def test_a_class_folder_without_images_is_named(tmp_path, layout):
    base = tmp_path if layout == "classes" else tmp_path / "train"
    write_image_folder(base, classes=("cat", "dog", "fox"), per_class=4)
    if layout == "train/val":
        write_image_folder(tmp_path / "val", classes=("cat", "dog", "fox", "owl"), per_class=2)
    (base / "owl").mkdir()
    (base / "owl" / "README.txt").write_text("owls go here")  # not an image
    with pytest.raises(DataFileError) as err:
        build_datasets({**IMAGEFOLDER, "root": str(tmp_path), "num_classes": 4})
    assert str(err.value) == (
        f"The class folder {base / 'owl'} holds no images (files ending in .jpg, .jpeg, .png, .ppm, .bmp, .pgm, "
        ".tif, .tiff, .webp): put the images of class 'owl' in it, or remove the folder."
    )


def _rpb_train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.cli", "model.depth=1", "model.embed_dim=16", "model.num_heads=2",
           "model.head_dim=null", "trainer.epochs=1", "trainer.progress_bar=false", "tracker=none",
           *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_rpb_train_says_which_cifar10_file_and_exits_2(tmp_path):
    write_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    _bytes_keys(batch)
    proc = _rpb_train(tmp_path, "data=cifar10", f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"rpb-train: {batch} is not a file of CIFAR-10's python version: it has bytes keys")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_rpb_train_says_which_image_from_a_worker_and_exits_2(tmp_path):
    broken = _broken_image_folder(tmp_path / "images")
    proc = _rpb_train(
        tmp_path, "data=imagefolder", f"data.root={tmp_path / 'images'}", "data.num_classes=3", "data.img_size=16",
        "model.rpb.window_size=[4,4]", "data.num_workers=2", "data.batch_size=3", f"run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"rpb-train: {broken} cannot be opened as an image (PIL does not recognise it as an image): replace it with a "
        "readable image or delete it."
    ], proc.stderr
