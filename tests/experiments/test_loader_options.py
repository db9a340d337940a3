"""Loader options by device: the cifar10 and imagefolder presets leave them to it (workers, pinned memory and
persistent workers on a GPU; none on the CPU), digits and explicit values keep what they say."""

from __future__ import annotations

import pytest

from experiments.config import compose_config
from experiments.data import GPU_LOADER_WORKERS, build_dataloaders, loader_options


@pytest.mark.parametrize("preset", ["cifar10", "imagefolder"])
def test_decoded_image_presets_get_gpu_loader_defaults_and_none_on_the_cpu(preset):
    data = compose_config([f"data={preset}"]).data
    assert (data.num_workers, data.pin_memory, data.persistent_workers) == (None, None, None)
    assert loader_options(data, cuda=True, cores=16) == {
        "num_workers": GPU_LOADER_WORKERS, "pin_memory": True, "persistent_workers": True,
    }  # fmt: skip
    assert loader_options(data, cuda=True, cores=3) == {"num_workers": 2, "pin_memory": True, "persistent_workers": True}
    assert loader_options(data, cuda=True, cores=1) == {"num_workers": 0, "pin_memory": True}  # the process's core
    assert loader_options(data, cuda=False, cores=16) == {"num_workers": 0, "pin_memory": False}


def test_digits_and_explicit_values_are_kept_on_any_device():
    digits = compose_config([]).data
    for cuda in (False, True):
        assert loader_options(digits, cuda=cuda, cores=16) == {"num_workers": 0, "pin_memory": False}
    cifar = compose_config(["data=cifar10", "data.num_workers=2", "data.pin_memory=false",
                            "data.persistent_workers=false"]).data  # fmt: skip
    assert loader_options(cifar, cuda=True, cores=16) == {"num_workers": 2, "pin_memory": False,
                                                          "persistent_workers": False}  # fmt: skip
    assert loader_options({"num_workers": 1, "persistent_workers": None}, cuda=False)["persistent_workers"] is True
    with pytest.raises(ValueError, match=r"data\.num_workers must be 0 or more"):
        loader_options({"num_workers": -1}, cuda=False)


def test_the_loaders_built_on_the_cpu_from_a_null_preset_have_no_workers():
    cfg = compose_config(["data=synthetic", "data.num_workers=null", "data.pin_memory=null",
                          "data.persistent_workers=null", "data.num_samples=8"])  # fmt: skip
    train, val = build_dataloaders(cfg.data, seed=0)
    assert (train.num_workers, train.pin_memory, val.num_workers, val.pin_memory) == (0, False, 0, False)
