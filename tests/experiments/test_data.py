"""Data: digits, synthetic, CIFAR-10 and ImageFolder read from small files in their real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch

from experiments.data import SyntheticImageDataset, build_dataloaders, build_datasets, load_digits_tensors
from experiments.datasets.files import write_cifar10, write_image_folder

DIGITS = {"name": "digits", "img_size": 28, "in_channels": 1, "num_classes": 10, "val_fraction": 0.2}


def test_digits_shapes_split_and_normalisation():
    train, val = build_datasets({**DIGITS, "augment": False})
    assert len(train) + len(val) == 1797
    assert abs(len(val) - 0.2 * 1797) < 1
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    images = torch.stack([train[i][0] for i in range(len(train))])
    # Normalised with the train statistics: mean 0, std 1 over the train set (not over val).
    assert images.mean().abs() < 1e-4 and (images.std() - 1).abs() < 1e-3
    # Stratified: each class's share in val equals its share in train within one sample.
    train_counts = torch.bincount(train.labels, minlength=10).float()
    val_counts = torch.bincount(val.labels, minlength=10).float()
    expected_val = train_counts / train_counts.sum() * len(val)
    assert (val_counts - expected_val).abs().max() <= 1.5


def test_digits_split_independent_of_run_seed_and_cached():
    a = load_digits_tensors(28, 1, 0.2, 0)
    b = load_digits_tensors(28, 1, 0.2, 0)
    assert a is b  # cached: resized once
    _, val_a = build_dataloaders({**DIGITS, "batch_size": 64}, seed=1)
    _, val_b = build_dataloaders({**DIGITS, "batch_size": 64}, seed=2)
    assert torch.equal(val_a.dataset.labels, val_b.dataset.labels)
    assert torch.equal(next(iter(val_a))[0], next(iter(val_b))[0])


def test_digits_three_channels_and_size():
    train, val = build_datasets({**DIGITS, "img_size": 32, "in_channels": 3})
    image, _ = train[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert val[0][0].shape == (3, 32, 32)


def test_digits_augmentation_translates_and_is_deterministic_under_seed():
    train, _ = build_datasets({**DIGITS, "augment": True})
    plain, _ = build_datasets({**DIGITS, "augment": False})
    torch.manual_seed(0)
    first = torch.stack([train[i][0] for i in range(50)])
    torch.manual_seed(0)
    again = torch.stack([train[i][0] for i in range(50)])
    assert first.shape == (50, 1, 28, 28)
    assert torch.equal(first, again)
    reference = torch.stack([plain[i][0] for i in range(50)])
    assert not torch.equal(first, reference)  # some images were shifted
    # A shift moves pixels, it does not change them: the multiset of a shifted digit's ink is mostly kept.
    assert (first.max() - reference.max()).abs() < 1e-5


def test_dataloader_shuffle_follows_seed():
    def first_labels(seed):
        train_loader, _ = build_dataloaders({**DIGITS, "batch_size": 16, "augment": False}, seed=seed)
        return next(iter(train_loader))[1]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))


def test_augmentation_in_workers_follows_the_loader_seed():
    def first_batch(seed):
        cfg = {**DIGITS, "batch_size": 16, "augment": True, "num_workers": 1}
        train_loader, _ = build_dataloaders(cfg, seed=seed)
        return next(iter(train_loader))[0]

    torch.manual_seed(0)
    a = first_batch(3)
    torch.manual_seed(1)  # the main process's RNG does not reach the augmentation: the run seed does
    b = first_batch(3)
    assert torch.equal(a, b)


def test_dataloader_options():
    cfg = {**DIGITS, "batch_size": 8, "eval_batch_size": 100, "num_workers": 1, "persistent_workers": True}
    train_loader, val_loader = build_dataloaders(cfg, seed=0)
    assert train_loader.batch_size == 8 and val_loader.batch_size == 100
    assert train_loader.persistent_workers and train_loader.num_workers == 1
    images, labels = next(iter(train_loader))
    assert images.shape == (8, 1, 28, 28) and labels.shape == (8,)
    # persistent_workers is ignored (not an error) without workers.
    loader, _ = build_dataloaders({**cfg, "num_workers": 0}, seed=0)
    assert not loader.persistent_workers


def test_synthetic_deterministic_and_learnable():
    a = SyntheticImageDataset(num_samples=40, img_size=16, patch_size=4, in_channels=3, num_classes=4, seed=5)
    b = SyntheticImageDataset(num_samples=40, img_size=16, patch_size=4, in_channels=3, num_classes=4, seed=5)
    c = SyntheticImageDataset(num_samples=40, img_size=16, patch_size=4, in_channels=3, num_classes=4, seed=6)
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(a[7][0], c[7][0])
    assert a[0][0].shape == (3, 16, 16)
    assert torch.bincount(a.labels).tolist() == [10, 10, 10, 10]
    # Learnable: patch means of an image are closest to its own class template (a nearest-template classifier).
    images = torch.stack([c[i][0] for i in range(len(c))])
    cells = torch.nn.functional.avg_pool2d(images, 4).flatten(1)  # (N, C * 4 * 4)
    distances = torch.cdist(cells, c.templates.flatten(1))
    accuracy = (distances.argmin(1) == c.labels).float().mean()
    assert accuracy > 0.9


def test_synthetic_through_config_splits_num_samples():
    train, val = build_datasets(
        {"name": "synthetic", "num_samples": 50, "img_size": 28, "in_channels": 1, "num_classes": 10}
    )
    assert len(train) == 40 and len(val) == 10
    assert train[0][0].shape == (1, 28, 28)
    assert torch.equal(train.templates, val.templates)


CIFAR = {"name": "cifar10", "img_size": 32, "in_channels": 3, "num_classes": 10, "batch_size": 4}


def test_cifar10_from_batch_files(tmp_path):
    write_cifar10(tmp_path)
    train, val = build_datasets({**CIFAR, "root": str(tmp_path), "randaugment": True})
    assert len(train) == 20 and len(val) == 4
    image, label = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert train.classes[0] == "airplane"
    # The val image is the stored pixels, normalised: undo the normalisation and compare.
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="bytes")
    pixels = torch.as_tensor(raw[b"data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(image * std[:, None, None] + mean[:, None, None], pixels, atol=1e-5)
    assert label == raw[b"labels"][0]
    train_loader, _ = build_dataloaders({**CIFAR, "root": str(tmp_path)}, seed=0)
    images, labels = next(iter(train_loader))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)


def test_cifar10_resized_grey(tmp_path):
    write_cifar10(tmp_path)
    train, val = build_datasets({**CIFAR, "root": str(tmp_path), "img_size": 28, "in_channels": 1})
    assert train[0][0].shape == (1, 28, 28) and val[0][0].shape == (1, 28, 28)


def test_cifar10_missing_root_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.root.*data\.download=true"):
        build_datasets({**CIFAR, "root": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=r"data\.root is not set"):
        build_datasets({**CIFAR, "root": None})
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty
    with pytest.raises(ValueError, match=r"data\.root.*incomplete"):
        build_datasets({**CIFAR, "root": str(tmp_path)})


IMAGEFOLDER = {"name": "imagefolder", "img_size": 16, "in_channels": 3, "num_classes": 3, "val_fraction": 0.4}


def test_imagefolder_stratified_split(tmp_path):
    write_image_folder(tmp_path)
    train, val = build_datasets({**IMAGEFOLDER, "root": str(tmp_path)})
    assert len(train) == 9 and len(val) == 6
    assert set(train.indices).isdisjoint(val.indices)
    val_targets = [val.dataset.targets[i] for i in val.indices]
    assert sorted(val_targets) == [0, 0, 1, 1, 2, 2]
    assert train[0][0].shape == (3, 16, 16) and val[0][0].shape == (3, 16, 16)


def test_imagefolder_train_val_folders_and_grey(tmp_path):
    write_image_folder(tmp_path / "train", per_class=3)
    write_image_folder(tmp_path / "val", per_class=2)
    train, val = build_datasets({**IMAGEFOLDER, "root": str(tmp_path), "in_channels": 1})
    assert len(train) == 9 and len(val) == 6
    assert train[0][0].shape == (1, 16, 16)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data\.root.*is not a folder"):
        build_datasets({**IMAGEFOLDER, "root": str(tmp_path / "missing")})
    write_image_folder(tmp_path / "images")
    with pytest.raises(ValueError, match=r"data\.num_classes=5 but imagefolder has 3 classes"):
        build_datasets({**IMAGEFOLDER, "root": str(tmp_path / "images"), "num_classes": 5})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data\.root.*no images"):
        build_datasets({**IMAGEFOLDER, "root": str(tmp_path / "empty")})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"name": "mnist"}, r"data\.name='mnist' is not a known dataset"),
        ({"num_classes": 100}, r"data\.num_classes=100 but digits has 10 classes"),
        ({"in_channels": 2}, r"data\.in_channels=2"),
        ({"val_fraction": 1.0}, r"data\.val_fraction"),
        ({"img_size": 0}, r"data\.img_size must be a positive integer"),
    ],
)
def test_config_mistakes_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        build_datasets({**DIGITS, **override})


def test_accepts_dictconfig():
    from omegaconf import OmegaConf

    train, _ = build_datasets(OmegaConf.create({**DIGITS, "root": None, "augment": False}))
    assert train[0][0].shape == (1, 28, 28)


def test_cifar10_download(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(ValueError, match=r"could not be downloaded to data\.root.*data\.download=false"):
        build_datasets({**CIFAR, "root": str(tmp_path), "download": True})
    assert len(calls) == 1
    # With the files in place, download=true fetches nothing.
    write_cifar10(tmp_path)
    train, _ = build_datasets({**CIFAR, "root": str(tmp_path), "download": True})
    assert len(train) == 20 and len(calls) == 1


def test_cifar10_crop_flip_normalize_is_the_v2_pipeline_in_tensor_ops():
    """The tensor-op transform CIFAR-10 uses at its native size equals torchvision's v2 pipeline on the PIL image:
    exactly without augmentation; with it, every output is one of the 9 x 9 crops of the zero-padded image, flipped
    or not, and over many draws both flips and several offsets occur."""
    from PIL import Image
    from torchvision.transforms import v2

    from experiments.datasets.vision import CIFAR10_MEAN, CIFAR10_STD, CropFlipNormalize

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    plain = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    expected = plain(Image.fromarray(hwc))
    torch.testing.assert_close(CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, train=False)(chw), expected)

    padded = torch.nn.functional.pad(expected, (4, 4, 4, 4), value=0.0)
    zero = plain(Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)))[:, 0, 0]  # a padded pixel, normalised
    padded = torch.where(
        torch.nn.functional.pad(torch.ones(1, 32, 32), (4, 4, 4, 4)).bool(), padded, zero.view(3, 1, 1)
    )
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            candidates[(top, left, False)], candidates[(top, left, True)] = crop, crop.flip(-1)
    train = CropFlipNormalize(CIFAR10_MEAN, CIFAR10_STD, train=True, padding=4)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)
        out = train(chw)
        match = [key for key, c in candidates.items() if torch.allclose(out, c, atol=1e-6)]
        assert match, f"seed {seed}: not a padded crop of the image"
        seen.update(match)
    assert {flip for *_, flip in seen} == {False, True} and len({(top, left) for top, left, _ in seen}) > 10


def test_cifar10_crop_flip_reaches_every_offset_and_flip_evenly():
    """Every one of the 9 x 9 offsets, flipped and not, is drawn (as v2's independent uniform crop and flip draw
    them), each about equally often, and the crop is the image shifted by its offset with zeros where it left the
    image: read back from an image whose pixels name their own row and column."""
    from collections import Counter

    from experiments.datasets.vision import CropFlipNormalize

    rows, cols = torch.arange(32).view(32, 1).expand(32, 32), torch.arange(32).view(1, 32).expand(32, 32)
    image = torch.stack([rows * 8 + 1, cols * 8 + 1, torch.full((32, 32), 255)]).to(torch.uint8)
    transform = CropFlipNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=True, padding=4)  # output: pixel / 255
    torch.manual_seed(0)
    drawn = Counter()
    for _ in range(3000):
        out = (transform(image) * 255).round().long()
        inside = out[2] == 255  # pixels of the image, not the zero padding
        flip = bool(inside[16].any()) and bool((out[1, 16][inside[16]].diff() < 0).all())
        unflipped = out.flip(-1) if flip else out
        i, j = (int(v) for v in (unflipped[2] == 255).nonzero()[0])
        dy, dx = int(unflipped[0, i, j] - 1) // 8 - i, int(unflipped[1, i, j] - 1) // 8 - j
        shifted = torch.zeros_like(image)
        shifted[:, max(0, -dy) : 32 - max(0, dy), max(0, -dx) : 32 - max(0, dx)] = image[
            :, max(0, dy) : 32 + min(0, dy), max(0, dx) : 32 + min(0, dx)
        ]
        assert torch.equal(unflipped, shifted.long()), (dy, dx, flip)
        drawn[(dy, dx, flip)] += 1
    assert set(drawn) == {(dy, dx, f) for dy in range(-4, 5) for dx in range(-4, 5) for f in (False, True)}
    assert max(drawn.values()) < 3 * 3000 / 162 and min(drawn.values()) > 3000 / 162 / 4  # about even
    flips = sum(n for (*_, f), n in drawn.items() if f)
    assert abs(flips - 1500) < 5 * (3000 * 0.25) ** 0.5


def _seeded_train_set(tmp_path, name):
    if name == "digits":
        return build_datasets({**DIGITS, "augment": True})[0]
    if name == "cifar10":
        write_cifar10(tmp_path, per_batch=8)
        return build_datasets({**CIFAR, "root": str(tmp_path)})[0]
    write_image_folder(tmp_path, per_class=8, size=20)  # resized to 16: the decode path
    return build_datasets({**IMAGEFOLDER, "root": str(tmp_path), "in_channels": 1 if name == "grey" else 3})[0]


@pytest.mark.parametrize("name", ["digits", "cifar10", "imagefolder", "grey"])
def test_a_batch_fetched_at_once_equals_its_samples_fetched_one_by_one(tmp_path, name):
    """The batched fetch (DataLoader's `__getitems__`, how the loaders fetch digits and CIFAR-10) gives each sample
    what fetching it alone gives, with its own seed's draws (not its position in the batch), in the main process and
    in a loader worker, and draws nothing from torch's generator."""
    from experiments.data import EpochSeededDataset

    dataset = EpochSeededDataset(_seeded_train_set(tmp_path, name), seed=5)
    assert dataset._seeded  # the batched path is the one taken
    dataset.set_epoch(3)
    indices = [7, 2, 9, 2, 0, 11]
    rng_before = torch.get_rng_state()
    batch = dataset.__getitems__(indices)
    assert torch.equal(torch.get_rng_state(), rng_before)
    one_by_one = [dataset[i] for i in reversed(indices)][::-1]
    for (image, label), (alone, alone_label) in zip(batch, one_by_one, strict=True):
        assert torch.equal(image, alone) and int(label) == int(alone_label)
    assert torch.equal(batch[1][0], batch[3][0])  # index 2 twice: one seed, one crop
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(indices), sampler=indices, num_workers=1)
    images, labels = next(iter(loader))
    assert torch.equal(images, torch.stack([image for image, _ in batch]))
    assert labels.dtype == torch.int64 and labels.tolist() == [int(label) for _, label in batch]
    dataset.set_epoch(4)
    assert not torch.equal(torch.stack([image for image, _ in dataset.__getitems__(indices)]), images)


def test_the_crops_of_a_batch_are_the_offsets_and_flips_its_seeds_name():
    """Image i of a batch is cropped at the offsets (dy, dx) and flipped as the digits of seeds[i] mod 2 * 9 * 9 say
    (padding 4): checked against the crop cut from the zero-padded image, for every one of the 162 draws."""
    from experiments.datasets.vision import CropFlipNormalize

    images = torch.randint(0, 256, (162, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seeds = [draw + 162 * k for k, draw in zip(range(1000, 1162), range(162))]  # every draw once, big seeds
    transform = CropFlipNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=True, padding=4)  # output: pixel / 255
    out = (transform(images, seeds) * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i, seed in enumerate(seeds):
        flip, offset = divmod(seed % 162, 81)
        top, left = divmod(offset, 9)  # 4 + dy, 4 + dx
        crop = padded[i, :, top : top + 32, left : left + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip else crop), (i, top, left, flip)
        assert torch.equal(out[i], (transform(images[i], [seed]) * 255).round().to(torch.uint8))


def test_digits_crops_are_the_offsets_their_seeds_name():
    from experiments.datasets.digits import TensorImageDataset

    images = torch.arange(5 * 12 * 12, dtype=torch.float32).view(5, 1, 12, 12)  # 10x10 images padded by 1
    dataset = TensorImageDataset(images, torch.arange(5), translate=1)
    seeds = [4, 9 * 7 + 8, 2**64 - 1, 0, 3]  # offsets: (1, 1), (2, 2), (2**64 - 1) mod 9 = 6 -> (2, 0), (0, 0), (1, 0)
    for (image, label), seed, index in zip(dataset.get_seeded([0, 1, 2, 3, 4], seeds), seeds, range(5), strict=True):
        top, left = divmod(seed % 9, 3)
        assert torch.equal(image, images[index, :, top : top + 10, left : left + 10]) and int(label) == index


@pytest.mark.parametrize("in_channels", [3, 1])
def test_imagefolder_decoded_a_batch_at_a_time_is_the_v2_pipeline(tmp_path, in_channels):
    """ImageFolder's batched path (PIL decode and resize, then `CropFlipNormalize`) gives what torchvision's v2
    pipeline gives the PIL image: exactly the same validation image (resized, grey or not, normalised), and as a
    training image the crop at its seed's offsets of that image, flipped as the seed says."""
    from torchvision.transforms import v2

    from experiments.datasets.vision import IMAGENET_MEAN, IMAGENET_STD, load_image

    write_image_folder(tmp_path, per_class=4, size=21)
    cfg = {**IMAGEFOLDER, "root": str(tmp_path), "in_channels": in_channels}
    train, val = build_datasets(cfg)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
    grey = [v2.Grayscale(num_output_channels=1)] if in_channels == 1 else []
    plain = v2.Compose([v2.Resize((16, 16), antialias=True), *grey, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize(mean, std)])  # fmt: skip
    for subset in (val, train):
        assert subset.seeded
    for i in range(len(val)):
        path = val.dataset.samples[val.indices[i]][0]
        torch.testing.assert_close(val[i][0], plain(load_image(path)))
    padding = 16 // 8
    side = 2 * padding + 1
    for i, seed in enumerate([0, 7, 2 * side * side - 1, 12345]):
        image, _ = train.get_seeded([i], [seed])[0]
        expected = torch.nn.functional.pad(plain(load_image(train.dataset.samples[train.indices[i]][0])),
                                           (padding,) * 4, value=0.0)  # fmt: skip
        flip, offset = divmod(seed % (2 * side * side), side * side)
        zero = (torch.zeros(1) - torch.tensor(mean)) / torch.tensor(std)  # a padded pixel, normalised
        inside = torch.nn.functional.pad(torch.ones(1, 16, 16), (padding,) * 4).bool()
        expected = torch.where(inside, expected, zero.view(-1, 1, 1))
        top, left = divmod(offset, side)
        crop = expected[:, top : top + 16, left : left + 16]
        torch.testing.assert_close(image, crop.flip(-1) if flip else crop)
