"""A misspelt key under any config group is one sentence naming the key, with a suggestion and the keys really there.

Covers groups whatever their schema: dataclass nodes with a default_factory (model, optim, ...), `Any = None` nodes
filled only by some primary configs (`sweep` in conf/sweep.yaml, `ablation` in conf/ablate.yaml), plain dicts
(`sweep.space`, `tracker.extra_config`), top-level keys, keys added with `+` and removed with `~`; and that the
translator degrades to a plain sentence instead of crashing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import ConfigKeyError

from experiments import config_errors
from experiments.config import CONF_DIR, compose_config
from experiments.config_errors import MAX_KNOWN_KEYS, ConfigError, known_keys_sentence, rephrase

REPO = Path(__file__).resolve().parents[2]


def _error(overrides, config_name="train") -> str:
    with pytest.raises(ConfigError) as info:
        compose_config(overrides, config_name=config_name)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def _known(message: str) -> list[str]:
    m = re.search(r"; known keys there: (.*?)(?: and \d+ more)?\.$", message)
    assert m, message
    return m.group(1).split(", ")


@pytest.mark.parametrize(
    ("overrides", "config_name", "key", "suggestion"),
    [
        (["sweep.smapler.name=grid"], "sweep", "sweep.smapler.name", "sampler"),
        (["sweep.sampler.nmae=grid"], "sweep", "sweep.sampler.nmae", "name"),
        (["sweep.space.optim.lrr={type: float, low: 0.1, high: 1}"], "sweep", "sweep.space.optim.lrr", "lr"),
        (["ablation.window_size=[3,5]"], "ablate", "ablation.window_size", "window_sizes"),
        (["ablation.seed=[0]"], "ablate", "ablation.seed", "seeds"),
        (["trainer_epochs=3"], "train", "trainer_epochs", "trainer.epochs"),
        (["traner.epochs=3"], "train", "traner.epochs", "trainer"),
        (["sed=1"], "sweep", "sed", "seed"),
        (["model.rpb.windw_size=[5,5]"], "train", "model.rpb.windw_size", "window_size"),
        (["model.embed_dimm=64"], "ablate", "model.embed_dimm", "embed_dim"),
        (["optim.lrr=0.1"], "train", "optim.lrr", "lr"),
        (["schedule.warmup_epoch=2"], "train", "schedule.warmup_epoch", "warmup_epochs"),
        (["data.batchsize=8"], "train", "data.batchsize", "batch_size"),
        (["tracker.wandb.projct=x"], "train", "tracker.wandb.projct", "project"),
        (["trainer.epoch=3"], "sweep", "trainer.epoch", "epochs"),
    ],
)
def test_misspelt_key_names_the_key_and_the_closest_one(overrides, config_name, key, suggestion):
    message = _error(overrides, config_name)
    assert message.startswith(f"Unknown config key {key!r} (did you mean {suggestion!r}?); known keys there: ")


def test_known_keys_come_from_the_composed_node():
    # `sweep: Any = None` in the schema: the keys are those of conf/sweep/default.yaml as composed.
    known = _known(_error(["sweep.smapler.name=grid"], "sweep"))
    assert {"study_name", "n_trials", "storage"} <= set(known)
    assert _known(_error(["ablation.window_size=[3,5]"], "ablate")) == [
        "study_name", "window_sizes", "bias_types", "modes", "pos_embeds", "seeds", "baseline", "workers", "prune",
    ]  # fmt: skip
    assert _known(_error(["sweep.space.model.rpb.int_std={type: float}"], "sweep")) == ["window_size", "init_std"]
    root = _known(_error(["traner.epochs=3"]))
    assert "trainer" in root and "hydra" not in root  # Hydra's own node is not one of ours


def test_long_lists_of_known_keys_are_cut():
    message = _error(["sweep.smapler.name=grid"], "sweep")
    assert re.search(r" and \d+ more\.$", message)
    assert len(_known(message)) == MAX_KNOWN_KEYS
    assert known_keys_sentence(["a", "b"]) == "; known keys there: a, b"
    assert known_keys_sentence([]) == ""
    keys = [f"k{i}" for i in range(MAX_KNOWN_KEYS + 1)]
    assert known_keys_sentence(keys).endswith("k12")  # a few over the cap: no "and 1 more"
    keys = [f"k{i}" for i in range(40)]
    assert known_keys_sentence(keys).endswith(f"k{MAX_KNOWN_KEYS - 1} and {40 - MAX_KNOWN_KEYS} more")


def test_a_key_added_with_plus_is_refused_by_the_schema():
    message = _error(["+model.rpb.windw_size=[5,5]"])
    assert message.startswith("Unknown config key 'model.rpb.windw_size' (did you mean 'window_size'?); known keys")
    assert _error(["+traner.epochs=3"]).startswith("Unknown config key 'traner' (did you mean 'trainer'?)")
    assert _error(["+optim.lrr=0.1"]).startswith("Unknown config key 'optim.lrr' (did you mean 'lr'?)")


def test_a_misspelt_deletion_names_the_key():
    message = _error(["~sweep.smapler"], "sweep")
    assert message.startswith("Unknown config key 'sweep.smapler' (did you mean 'sampler'?); known keys there: ")


def test_a_group_that_is_null_or_empty_says_so():
    # conf/train.yaml has no sweep / ablation: the node is null there.
    assert _error(["sweep.sampler.name=grid"]) == (
        "Unknown config key 'sweep.sampler.name': 'sweep' is null in this config, so it has no keys."
    )
    assert _error(["ablation.window_sizes=[3]"], "sweep") == (
        "Unknown config key 'ablation.window_sizes': 'ablation' is null in this config, so it has no keys."
    )
    # An empty dict takes new keys with `+`.
    assert _error(["tracker.extra_config.foo=1"]) == (
        "Unknown config key 'tracker.extra_config.foo': 'tracker.extra_config' has no keys yet; "
        "add one with '+tracker.extra_config.foo=...'."
    )


def _key_error(full_key: str, key: str, parent_node=None) -> ConfigKeyError:
    exc = ConfigKeyError(f"Key {key!r} is not in struct")
    exc.full_key, exc.key, exc.parent_node = full_key, key, parent_node
    return exc


def test_without_the_node_the_keys_come_from_the_config_composed_without_the_override():
    from omegaconf import OmegaConf

    outer = Exception("Could not override 'sweep.smapler.name'.")
    outer.__cause__ = _key_error("sweep.smapler", "smapler")
    asked = []

    def compose_without(key):
        asked.append(key)
        return OmegaConf.create({"sweep": {"sampler": {"name": "tpe"}, "pruner": {"name": "none"}}})

    message = str(rephrase(outer, CONF_DIR, compose_without))
    assert asked == ["sweep.smapler.name"]
    assert message == (
        "Unknown config key 'sweep.smapler.name' (did you mean 'sampler'?); known keys there: sampler, pruner."
    )


def test_without_node_or_compose_the_keys_come_from_the_schema():
    message = str(rephrase(_key_error("model.rpb.windw_size", "windw_size"), CONF_DIR))
    assert message.startswith("Unknown config key 'model.rpb.windw_size' (did you mean 'window_size'?); known keys")
    assert "init_std" in message
    # `sweep: Any = None`: the schema knows no keys, and the translator does not crash on it.
    assert str(rephrase(_key_error("sweep.smapler", "smapler"), CONF_DIR)).startswith(
        "Unknown config key 'sweep.smapler'"
    )


class _Hostile:
    """A parent node whose every use raises."""

    def __getattr__(self, name):
        raise RuntimeError("boom")


def test_the_translator_never_crashes(monkeypatch):
    def failing_compose(key):
        raise RuntimeError("compose failed")

    outer = Exception("Could not override 'sweep.smapler.name'.\nTo append to your config use +sweep.smapler.name=x")
    outer.__cause__ = _key_error("sweep.smapler", "smapler", parent_node=_Hostile())
    message = str(rephrase(outer, CONF_DIR, failing_compose))
    assert message.startswith("Unknown config key 'sweep.smapler.name'") and "\n" not in message

    def broken(*args, **kwargs):
        raise TypeError("'_MISSING_TYPE' object is not callable")

    monkeypatch.setattr(config_errors, "_unknown_key", broken)
    monkeypatch.setattr(config_errors, "_schema_keys", broken)
    error = rephrase(outer, CONF_DIR, failing_compose)
    assert isinstance(error, ConfigError)
    assert str(error) == "The config key 'sweep.smapler.name' cannot be set: check its spelling and value (see conf/)."
    assert "\n" not in str(rephrase(_key_error("a.b", "b"), CONF_DIR))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "override", "prefix", "expected"),
    [
        ("sweeps.cli", "sweep.smapler.name=grid", "rpb-sweep: error: ",
         "Unknown config key 'sweep.smapler.name' (did you mean 'sampler'?); known keys there: "),
        ("sweeps.ablate", "ablation.window_size=[3,5]", "rpb-ablate: ",
         "Unknown config key 'ablation.window_size' (did you mean 'window_sizes'?); known keys there: "),
        ("sweeps.cli", "traner.epochs=1", "rpb-sweep: error: ",
         "Unknown config key 'traner.epochs' (did you mean 'trainer'?); known keys there: "),
    ],
)  # fmt: skip
def test_the_clis_print_one_line_and_exit_2(tmp_path, module, override, prefix, expected):
    proc = subprocess.run(
        [sys.executable, "-m", module, override, f"sweep.output_dir={tmp_path}/sweeps"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix + expected), proc.stderr
    assert not (tmp_path / "sweeps").exists()  # refused before any study or trial
