"""Every default in one place: the YAML files of conf/ hold them, the schemas (experiments/schema.py, the `sweep`
node's in sweeps/config.py) only type them, and the config layer and the model package agree where both have one."""

from __future__ import annotations

import inspect

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.config import MODEL_KEYS, compose_config, fill_defaults, model_kwargs, validate_config
from experiments.schema import TrainConfig
from rpb import VisionTransformer
from sweeps.config import DEFAULT_TRAIN_FN, SweepConfig, sweep_config, sweep_defaults

# The model's sizes: the config's are those of the digits model (conf/model/rpb_vit.yaml), VisionTransformer's
# keyword defaults timm's ViT-B/16 on ImageNet. Every other option has one default, in both.
SIZES = ("img_size", "in_channels", "num_classes", "patch_size", "embed_dim", "depth", "num_heads", "head_dim",
         "window_size")  # fmt: skip


def _leaves(node: DictConfig, path: str = ""):
    """(dotted key, value) of every leaf of a structured config; a missing one as "???"."""
    for key in node:
        full = f"{path}{key}"
        if OmegaConf.is_missing(node, key):
            yield full, "???"
        elif isinstance(child := node[key], DictConfig):
            yield from _leaves(child, f"{full}.")
        else:
            yield full, OmegaConf.to_container(child) if isinstance(child, ListConfig) else child


@pytest.mark.parametrize(
    ("schema", "composed"),
    [(TrainConfig, lambda: OmegaConf.to_container(compose_config())), (SweepConfig, sweep_defaults)],
    ids=["train", "sweep"],
)
def test_the_schemas_hold_no_default_of_their_own(schema, composed):
    defaults = composed()
    for key, value in _leaves(OmegaConf.structured(schema)):
        # `sweep` / `ablation` of the training schema: None, no node, until conf/sweep.yaml or ablate.yaml adds one
        assert value == "???" or value == OmegaConf.select(OmegaConf.create(defaults), key), key


@pytest.mark.parametrize(("schema", "defaults"), [(TrainConfig, None), (SweepConfig, sweep_defaults)])
def test_the_yaml_gives_every_key_of_the_schema_a_value(schema, defaults):
    if defaults is None:  # composing refuses a key the YAML leaves out; compose_config checks it
        defaults = lambda: OmegaConf.to_container(compose_config(), resolve=False)  # noqa: E731
    typed = OmegaConf.merge(OmegaConf.structured(schema), fill_defaults({}, schema, defaults))
    assert not OmegaConf.missing_keys(typed)


def test_the_model_package_and_the_config_agree_on_every_default_they_both_have():
    config = model_kwargs(compose_config())
    signature = inspect.signature(VisionTransformer).parameters
    both = [name for name in MODEL_KEYS if name not in SIZES and signature[name].default is not inspect.Parameter.empty]
    assert len(both) == len(MODEL_KEYS) - len(SIZES)
    assert {n: config[n] for n in both} == {n: signature[n].default for n in both}


def test_a_config_built_by_hand_takes_what_it_leaves_out_from_the_yaml():
    typed = validate_config({"trainer": {"epochs": 3}, "model": {"rpb": {"window_size": "5x5"}}})
    assert typed == compose_config(["trainer.epochs=3", "model.rpb.window_size=5x5"])
    assert typed.trainer.label_smoothing == 0.1 and typed.model.embed_dim == 64  # the YAML's, not the old schema's


def test_a_saved_config_older_than_a_key_resumes_with_the_yaml_value():
    saved = OmegaConf.to_container(compose_config(["model.depth=2"]))
    del saved["model"]["fc_norm"], saved["trainer"]["threads"]
    typed = validate_config(OmegaConf.create(saved))
    assert typed.model.depth == 2 and typed.model.fc_norm is False and typed.trainer.threads is None


def test_a_partial_sweep_node_takes_what_it_leaves_out_from_conf_sweep_default_yaml():
    space = {"optim": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    cfg = OmegaConf.merge(compose_config(), {"sweep": {"pruner": {"name": "median"}, "space": space}})
    sweep = sweep_config(cfg)
    assert sweep.pruner.n_warmup_steps == 5 and sweep.sampler.name == "tpe" and sweep.launcher.name == "local"
    assert OmegaConf.to_container(sweep.space) == space  # a space given is never merged with the default one
    assert sweep.train_fn == DEFAULT_TRAIN_FN


def test_a_launcher_named_alone_brings_the_slurm_settings():
    cfg = OmegaConf.merge(
        compose_config(), {"sweep": {"launcher": {"name": "slurm"}, "storage": "postgresql://u@db/optuna"}}
    )
    launcher = sweep_config(cfg).launcher
    assert launcher.cluster == "slurm" and launcher.array_size == 4 and launcher.timeout_min == 240
