"""Off the default path of composing: a group's `name` set alone, and the spellings of a window."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments.config import compose_config, validate_config
from experiments.config_errors import ConfigError


def test_data_name_alone_brings_the_group_s_settings():
    cfg = compose_config(["data.name=cifar10", "data.root=/nowhere"])
    assert (cfg.data.name, cfg.data.img_size, cfg.data.in_channels) == ("cifar10", 32, 3)  # not digits' 28x28 grey
    assert OmegaConf.to_container(compose_config(["data=cifar10", "data.root=/nowhere"]).data) == \
        OmegaConf.to_container(cfg.data)  # fmt: skip
    sgd = compose_config(["optim.name=sgd"]).optim
    assert sgd.name == "sgd" and sgd.momentum == 0.9  # the sgd group's own settings


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (["data.name=cifar"], "data.name=cifar is not one of the data group's files (did you mean 'cifar10'?)"),
        (["data=digits", "data.name=cifar10"], "data.name=cifar10 contradicts data=digits: drop data.name"),
        (["schedule.name=cosine"], "choose it with schedule=NAME"),
    ],
)
def test_a_group_name_that_cannot_be_honoured_is_one_sentence(overrides, sentence):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert sentence in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("spelling", "window"), [("5", [5, 5]), ("5x5", [5, 5]), ("3x5", [3, 5]), ("[5,7]", [5, 7]),
                                                  ("7X7", [7, 7])])  # fmt: skip
def test_every_spelling_of_a_window_trains_the_same_model(spelling, window):
    assert list(compose_config([f"model.rpb.window_size={spelling}"]).model.rpb.window_size) == window


def test_a_window_in_a_config_dict_is_read_the_same_way():
    plain = OmegaConf.to_container(compose_config([]))
    plain["model"]["rpb"]["window_size"] = "3x3"
    assert list(validate_config(plain).model.rpb.window_size) == [3, 3]


@pytest.mark.parametrize("spelling", ["9y9", "true", "0x3"])
def test_a_value_that_is_no_window_is_one_sentence(spelling):
    with pytest.raises(ConfigError, match=r"is not a window size: write 7, 7x7 or \[7,7\]"):
        compose_config([f"model.rpb.window_size={spelling}"])
