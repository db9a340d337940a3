"""Compose, validate and use the training config (Hydra 1.3 over `conf/`, typed by `experiments.schema`).

cfg = compose_config(["model.depth=2", "trainer.epochs=1"])   # validated DictConfig
model = build_model(cfg)                                     # the one place config becomes constructor arguments

Every mistake a user can make in a config is refused here, before any work starts, with a `ConfigError`: one
sentence that names the key and says what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from experiments.config_errors import ConfigError, closest, rephrase
from experiments.launch import MIXED_PRECISION_ENV, launcher_name
from experiments.schema import TrainConfig, register_schemas
from experiments.tracking import check_trackers, mask_secrets
from rpb.options import OptionError, check_model_options, to_2tuple

if TYPE_CHECKING:
    from rpb import VisionTransformer

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "build_model",
    "compose_config",
    "compose_unvalidated",
    "composed_defaults",
    "fill_defaults",
    "resolve_mixed_precision",
    "to_yaml",
    "validate_config",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

DATASETS = ("digits", "synthetic", "cifar10", "imagefolder")  # one file each in conf/data/ (tested)
CHOICES = {
    "data.name": DATASETS,
    "optim.name": ("adamw", "sgd"),
    "schedule.name": ("warmup_cosine", "constant"),
    "trainer.mixed_precision": ("no", "fp16", "bf16"),
    "trainer.early_stopping_monitor": ("val_loss", "val_accuracy"),
}
# Keys of CHOICES that may also be null (unset), and what null means.
NULL_MEANS = {"trainer.mixed_precision": "the launcher's --mixed_precision, else no"}
# key -> (lowest allowed, whether the lowest is allowed itself); None values pass (optional keys).
LOWER_BOUNDS = {
    "seed": (0, True),
    "data.img_size": (1, True),
    "data.in_channels": (1, True),
    "data.num_classes": (2, True),
    "data.batch_size": (1, True),
    "data.eval_batch_size": (1, True),
    "data.num_samples": (2, True),
    "data.num_workers": (0, True),
    "model.depth": (1, True),
    "model.mlp_ratio": (0, False),
    "optim.lr": (0, False),
    "optim.weight_decay": (0, True),
    "optim.eps": (0, False),
    "optim.momentum": (0, True),
    "schedule.warmup_epochs": (0, True),
    "schedule.min_lr": (0, True),
    "trainer.epochs": (1, True),
    "trainer.grad_accum_steps": (1, True),
    "trainer.clip_grad_norm": (0, False),
    "trainer.early_stopping_patience": (1, True),
    "trainer.log_every_n_steps": (1, True),
    "trainer.heatmap_every_n_epochs": (0, True),
    "trainer.limit_train_batches": (1, True),
    "trainer.limit_val_batches": (1, True),
}
# The model's options (rpb.options, checked there) and the config key of each: VisionTransformer keyword -> key.
MODEL_KEYS = {
    "img_size": "data.img_size",
    "in_channels": "data.in_channels",
    "num_classes": "data.num_classes",
    "patch_size": "model.patch_size",
    "embed_dim": "model.embed_dim",
    "depth": "model.depth",
    "num_heads": "model.num_heads",
    "mlp_ratio": "model.mlp_ratio",
    "qkv_bias": "model.qkv_bias",
    "head_dim": "model.head_dim",
    "scale": "model.scale",
    "drop_rate": "model.drop_rate",
    "attn_drop_rate": "model.attn_drop_rate",
    "drop_path_rate": "model.drop_path_rate",
    "use_relative_position": "model.rpb.enabled",
    "window_size": "model.rpb.window_size",
    "window_mode": "model.rpb.mode",
    "shift_windows": "model.rpb.shift_windows",
    "bias_type": "model.rpb.bias_type",
    "rpb_init_std": "model.rpb.init_std",
    "rpb_learnable": "model.rpb.learnable",
    "pos_embed": "model.pos_embed",
    "class_token": "model.class_token",
    "global_pool": "model.global_pool",
    "grad_checkpointing": "model.grad_checkpointing",
    "attn_impl": "model.attn_impl",
    "norm_eps": "model.norm_eps",
    "layer_scale_init": "model.layer_scale_init",
    "fc_norm": "model.fc_norm",
}
FRACTIONS = ("model.drop_rate", "model.attn_drop_rate", "model.drop_path_rate", "trainer.label_smoothing")

register_schemas()


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "train", config_dir: str | Path | None = None
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides (e.g. `"model.depth=2"`) and validate it.

    `config_dir`: a folder that holds `<config_name>.yaml` and is searched before conf/ (`rpb-train
    --config-dir=DIR --config-name=NAME`; a sweep's best.yaml lists `train` in its defaults). Works inside a running
    Hydra app too: its global state is set aside and restored.
    """
    return validate_config(compose_unvalidated(overrides, config_name, config_dir))


NAMED_GROUPS = ("data", "optim", "schedule")  # config groups whose files carry a `name` key of their own


def normalise_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides as Hydra must see them: a group's name as the group (`group_names_as_groups`) and a window in
    any spelling as a list (`_window_override`). `rpb-train` hands these, not the typed ones, to Hydra.

    Raises:
        ConfigError: a group name or a window that cannot be honoured.
    """
    return [_window_override(o) for o in group_names_as_groups(list(overrides))]


def group_names_as_groups(overrides: list[str]) -> list[str]:
    """`data.name=cifar10` as `data=cifar10`: the group's own settings come with its name (32x32 RGB for CIFAR-10,
    where `data.name` alone kept the digits group's 28x28 greyscale); the same for every group in `NAMED_GROUPS`.

    Raises:
        ConfigError: a name no file of the group has, or one that contradicts the group chosen beside it.
    """
    out = list(overrides)
    for i, override in enumerate(overrides):
        key, eq, value = override.partition("=")
        group = key.removeprefix("+").removesuffix(".name")
        if not eq or group not in NAMED_GROUPS or key.lstrip("+") != f"{group}.name":
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == group]
        if value not in options:
            raise ConfigError(
                f"{group}.name={value} is not one of the {group} group's files{closest(value, options)}: choose it "
                f"with {group}=NAME, one of {', '.join(options)} (it brings that {group}'s settings)."
            )
        if chosen and chosen[-1] != value:
            raise ConfigError(
                f"{group}.name={value} contradicts {group}={chosen[-1]}: drop {group}.name and set {group}={value}."
            )
        out[i] = f"{group}={value}"
    return out


def compose_unvalidated(
    overrides: Sequence[str] = (), config_name: str = "train", config_dir: str | Path | None = None
) -> DictConfig:
    """The composed config before `validate_config` (schema types and keys are already enforced by Hydra)."""
    overrides = normalise_overrides(overrides)
    if config_dir is not None:  # conf/ stays on the search path: the folder's config composes over train.yaml
        overrides.insert(0, f"hydra.searchpath=[file://{CONF_DIR}]")

    def compose_without(key: str) -> DictConfig | None:  # the keys really there, for the error's sentence
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            return _compose(kept, config_name, config_dir) if len(kept) < len(overrides) else None
        except Exception:
            return None

    try:
        return _compose(overrides, config_name, config_dir)
    except Exception as exc:  # Hydra and OmegaConf errors become one sentence
        raise rephrase(exc, CONF_DIR, compose_without) from None


def _compose(overrides: list[str], config_name: str, config_dir: str | Path | None = None) -> DictConfig:
    """Hydra's compose over `config_dir` (default conf/), with the global state of a running Hydra app set aside
    and restored."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir or CONF_DIR).resolve()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


@functools.cache
def _composed_defaults(config_name: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    return OmegaConf.to_container(_compose(list(overrides), config_name), resolve=False)


def composed_defaults(config_name: str = "train", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """`conf/<config_name>.yaml` composed with `overrides`, unresolved, as a plain dict (a fresh copy each call):
    the defaults of a config built by hand (the schemas hold none). Composed once per process."""
    return copy.deepcopy(_composed_defaults(config_name, tuple(overrides)))


def fill_defaults(given: Any, schema: type, defaults: Callable[[], Mapping[str, Any]]) -> Any:
    """`given` (a plain dict) with every key of `schema` it leaves out taken from `defaults()`, the composed YAML.

    The nodes `schema` types as dataclasses are filled key by key; any other value, a mapping such as `sweep.space`
    or `tracker` included, is taken whole, from `given` when it has the key, else from the defaults (so a space given
    is never merged with the default one). `defaults` is called only when a key is left out; `given` is not changed.
    A key given as `???` stays missing (the schema check names it).
    """
    loaded: list[Mapping[str, Any]] = []

    def default(path: tuple[str, ...]) -> Any:
        if not loaded:
            loaded.append(defaults())
        value: Any = loaded[0]
        for key in path:
            value = value.get(key, _ABSENT) if isinstance(value, Mapping) else _ABSENT
        return value

    def fill(node: Any, dc: type, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out = dict(node)
        for name, kind in typing.get_type_hints(dc).items():
            if name not in node:
                value = default((*path, name))
                if value is not _ABSENT:
                    out[name] = copy.deepcopy(value)
            elif dataclasses.is_dataclass(kind):
                out[name] = fill(node[name], kind, (*path, name))
        return out

    return fill(given, schema, ())


_ABSENT = object()


# The attribute a `train(cfg, on_epoch_end)` function sets (True) when it neither changes the config it is given
# nor keeps it past its return (`experiments.train.train` validates it into a config of its own first): a sweep
# worker may then hand it the same config object every trial, that trial's values set anew (`sweeps.objective`).
READS_CONFIG_ONLY = "reads_config_only"


def validate_config(cfg: DictConfig | dict) -> DictConfig:
    """Check `cfg` against the schema and the rules types cannot express; return it typed.

    A key `cfg` leaves out (a config built by hand, a run's config.yaml saved before the key existed) takes its value
    from `conf/train.yaml` as composed: the YAML files are the defaults, the schema only types them.

    Raises:
        ConfigError: one sentence naming the first offending key and what is allowed.
    """
    try:
        # Through a plain container so that keys a `+key=` override slipped into a typed node are refused too.
        plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
        plain = fill_defaults(plain, TrainConfig, composed_defaults)
        _window_as_pair(plain)
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
        missing = sorted(OmegaConf.missing_keys(typed))
        if missing:
            raise ConfigError(f"{missing[0]} has no value (???): set it, e.g. `{missing[0]}=...`.")
        OmegaConf.resolve(typed)
    except OmegaConfBaseException as exc:
        raise rephrase(exc, CONF_DIR) from None
    _check_values(typed)
    _check_model(typed)
    check_trackers(typed.tracker)
    return typed


def _window_override(override: str) -> str:
    """`model.rpb.window_size=9x9` (or `=9`) as `model.rpb.window_size=[9,9]`: Hydra checks the schema's list type
    while it composes, before `validate_config` could read the other spellings."""
    key, eq, value = override.partition("=")
    if not eq or key.lstrip("+") != "model.rpb.window_size" or value.strip().startswith(("[", "$", "null")):
        return override
    try:
        h, w = to_2tuple(value)
    except OptionError:
        raise ConfigError(
            f"model.rpb.window_size={value} is not a window size: write 7, 7x7 or [7,7] (height x width)."
        ) from None
    return f"{key}=[{h},{w}]"


def _window_as_pair(plain: Any) -> None:
    """`model.rpb.window_size` spelt 7, "7", "7x7" or [7, 7] -> [7, 7] in place (`rpb.options.to_2tuple`), before
    the schema (a list of two ints) sees it.

    Raises:
        ConfigError: a value that is no window.
    """
    rpb = (
        plain.get("model", {}).get("rpb") if isinstance(plain, dict) and isinstance(plain.get("model"), dict) else None
    )
    value = rpb.get("window_size") if isinstance(rpb, dict) else None
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return
    try:
        rpb["window_size"] = list(to_2tuple(value))
    except OptionError:
        raise ConfigError(
            f"model.rpb.window_size={value!r} is not a window size: write 7, 7x7 or [7,7] (height x width)."
        ) from None


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} has no value (???): set it, e.g. `{key}=...`.") from None


def _check_values(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value is None and key in NULL_MEANS:
            continue
        if value not in choices:
            null = f" (or null: {NULL_MEANS[key]})" if key in NULL_MEANS else ""
            raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(str, choices))}{null}.")
    for key, (low, inclusive) in LOWER_BOUNDS.items():
        value = _get(cfg, key)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key}={value} is out of range: it must be {bound}.")
    for key in FRACTIONS:
        value = _get(cfg, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}={value} is out of range: it must be in [0, 1).")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} is out of range: it must be in (0, 1).")
    if not 0.0 < cfg.schedule.warmup_start_factor <= 1.0:
        raise ConfigError(
            f"schedule.warmup_start_factor={cfg.schedule.warmup_start_factor} is out of range: it must be in (0, 1]."
        )
    if cfg.schedule.min_lr > cfg.optim.lr:
        raise ConfigError(f"schedule.min_lr={cfg.schedule.min_lr} exceeds optim.lr={cfg.optim.lr}: lower it.")
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas={betas} is not allowed: give two numbers in [0, 1), e.g. [0.9, 0.999].")
    if cfg.trainer.early_stopping_patience is not None and cfg.trainer.early_stopping_monitor not in (
        "val_loss",
        "val_accuracy",
    ):
        raise ConfigError("trainer.early_stopping_monitor must be val_loss or val_accuracy.")


def resolve_mixed_precision(configured: str | None) -> tuple[str, str | None]:
    """The precision a run trains in ("no", "fp16" or "bf16") and, when the config and the launcher disagree, the
    sentence that says which wins (else None).

    trainer.mixed_precision when it is set (explicit in the config or on the command line, so it wins); else the
    launcher's (`MIXED_PRECISION_ENV`: `accelerate launch --mixed_precision` or its config file); else "no".
    accelerate launch sets "no" when neither of its sources names a precision, so only its fp16 / bf16 counts as
    asking for one: a launcher's "no" under trainer.mixed_precision=bf16 is not a disagreement.

    Raises:
        ConfigError: the launcher asks for a precision this training does not have (fp8) and the config sets none.
    """
    allowed = CHOICES["trainer.mixed_precision"]
    launcher = os.environ.get(MIXED_PRECISION_ENV, "").strip().lower() or None
    asked = f"{launcher} from {launcher_name()} (--mixed_precision or its config file)"
    if configured is None:
        if launcher is None:
            return "no", None
        if launcher not in allowed:
            raise ConfigError(
                f"{asked} is not a precision rpb-train trains in: launch with --mixed_precision "
                f"{' / '.join(allowed)}, or set trainer.mixed_precision to one of them."
            )
        return launcher, None
    if launcher in (None, "no", configured):
        return configured, None
    return configured, (
        f"trainer.mixed_precision={configured} overrides {asked}: training in {configured}; "
        "drop one of them to silence this."
    )


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The VisionTransformer keyword arguments `cfg` describes (`MODEL_KEYS`); window_size as a tuple."""
    kwargs = {name: OmegaConf.select(cfg, key) for name, key in MODEL_KEYS.items()}
    kwargs["window_size"] = tuple(kwargs["window_size"])
    return kwargs


def _yaml_value(value: Any) -> str:
    """A value as an override writes it: true, null, local, [7, 7]."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _check_model(cfg: DictConfig) -> None:
    """The model's rules (`rpb.options.check_model_options`), their sentence rendered with config keys."""
    m = cfg.model
    kwargs = model_kwargs(cfg)
    try:
        check_model_options(**{k: kwargs[k] for k in inspect.signature(check_model_options).parameters})
    except OptionError as err:
        raise ConfigError(err.render(MODEL_KEYS, _yaml_value)) from None
    # A config-only rule: a head_dim that outlives a changed num_heads (a sweep, an override) would silently
    # change the width of attention; the model itself accepts any head_dim (as timm does).
    if m.head_dim is not None and m.head_dim * m.num_heads != m.embed_dim:
        raise ConfigError(
            f"model.head_dim={m.head_dim} times model.num_heads={m.num_heads} is {m.head_dim * m.num_heads}, "
            f"not model.embed_dim={m.embed_dim}: set model.head_dim={m.embed_dim // m.num_heads} "
            "(heads must divide the width) or model.head_dim=null to derive it."
        )


def build_model(cfg: DictConfig) -> VisionTransformer:
    """The VisionTransformer described by `cfg.model` for the images of `cfg.data` (`model_kwargs`)."""
    from rpb import VisionTransformer

    return VisionTransformer(**model_kwargs(cfg))


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets (passwords in URLs, password/token/api_key keys) masked."""

    return OmegaConf.to_yaml(OmegaConf.create(mask_secrets(OmegaConf.to_container(cfg, resolve=True))))
