"""rpb.options: torch-free, one sentence per rule, rendered for constructor arguments or for config keys."""

import subprocess
import sys

import pytest

from rpb.options import OptionError, check_model_options, check_window, num_relative_distances, window_shift


def test_options_import_without_torch():
    code = "import sys, rpb.options; assert 'torch' not in sys.modules, 'rpb.options imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_sentence_two_vocabularies():
    with pytest.raises(OptionError) as info:
        check_model_options(img_size=28, patch_size=4, embed_dim=96, num_heads=4, window_mode="local")
    err = info.value
    assert str(err) == (
        "window_mode='local' has no place for a class token: set class_token=False and global_pool='avg'."
    )
    keys = {"window_mode": "model.rpb.mode", "class_token": "model.class_token", "global_pool": "model.global_pool"}
    assert err.render(keys, lambda v: str(v).lower()) == (
        "model.rpb.mode=local has no place for a class token: set model.class_token=false and model.global_pool=avg."
    )
    assert err.option == "window_mode"


@pytest.mark.parametrize(
    ("window", "grid", "shift", "expected"),
    [
        ((7, 1), (14, 14), (3, 0), (3, 0)),  # a side of 1 never shifts along it
        ((7, 1), (7, 7), (3, 0), (0, 0)),  # the window spans the height: no shift there (Swin, timm)
        ((4, 4), (4, 4), 2, (0, 0)),
        ((2, 3), (4, 6), (1, 1), (1, 1)),
    ],
)
def test_window_shift_follows_swin(window, grid, shift, expected):
    assert window_shift(window, grid, shift) == expected


def test_window_rules():
    assert check_window(None, (7, 7)) == (7, 7)
    assert check_window(None, (7, 7), bias_type="1d") == 49
    assert check_window((9, 9), (7, 7), use_relative_position=False) == (7, 7)  # no bias, global: no window
    with pytest.raises(OptionError, match=r"shift_size=\(2, 2\) must be smaller than the window 2x2"):
        window_shift((2, 2), (4, 4), (2, 2))
    assert num_relative_distances((7, 7), "2d", class_token=True) == 172
    assert num_relative_distances(7, "1d") == 13
