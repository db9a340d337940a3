"""Compose, validate and use the training config (Hydra 1.3 over `conf/`, typed by `experiments.schema`).

cfg = compose_config(["model.depth=2", "trainer.epochs=1"])   # validated DictConfig
model = build_model(cfg)                                     # the one place config becomes constructor arguments

Every mistake a user can make in a config is refused here, before any work starts, with a `ConfigError`: one
sentence that names the key and says what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from experiments.config_errors import ConfigError, rephrase
from experiments.schema import TrainConfig, register_schemas

if TYPE_CHECKING:
    from rpb import VisionTransformer

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "build_model",
    "compose_config",
    "compose_unvalidated",
    "to_yaml",
    "validate_config",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

DATASETS = ("digits", "synthetic", "cifar10", "imagefolder")  # experiments.data.DATASETS (torch-free copy; tested)
CHOICES = {
    "data.name": DATASETS,
    "model.global_pool": ("token", "avg"),
    "model.attn_impl": ("auto", "reference", "sdpa", "flex"),
    "model.rpb.bias_type": ("2d", "1d"),
    "model.rpb.mode": ("clip", "local"),
    "optim.name": ("adamw", "sgd"),
    "schedule.name": ("warmup_cosine", "constant"),
    "trainer.mixed_precision": ("no", "fp16", "bf16"),
    "trainer.early_stopping_monitor": ("val_loss", "val_accuracy"),
    "tracker.wandb.mode": ("online", "offline", "disabled"),
}
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
    "model.patch_size": (1, True),
    "model.embed_dim": (1, True),
    "model.depth": (1, True),
    "model.num_heads": (1, True),
    "model.head_dim": (1, True),
    "model.mlp_ratio": (0, False),
    "model.rpb.init_std": (0, True),
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
FRACTIONS = ("model.drop_rate", "model.attn_drop_rate", "model.drop_path_rate", "trainer.label_smoothing")

register_schemas()


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides (e.g. `"model.depth=2"`) and validate it.

    Works inside a running Hydra app too: its global state is set aside and restored.
    """
    return validate_config(compose_unvalidated(overrides, config_name))


def compose_unvalidated(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The composed config before `validate_config` (schema types and keys are already enforced by Hydra)."""
    overrides = list(overrides)

    def compose_without(key: str) -> DictConfig | None:  # the keys really there, for the error's sentence
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        try:
            return _compose(kept, config_name) if len(kept) < len(overrides) else None
        except Exception:
            return None

    try:
        return _compose(overrides, config_name)
    except Exception as exc:  # Hydra and OmegaConf errors become one sentence
        raise rephrase(exc, CONF_DIR, compose_without) from None


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    """Hydra's compose over conf/, with the global state of a running Hydra app set aside and restored."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def validate_config(cfg: DictConfig | dict) -> DictConfig:
    """Check `cfg` against the schema and the rules types cannot express; return it typed.

    Raises:
        ConfigError: one sentence naming the first offending key and what is allowed.
    """
    try:
        # Through a plain container so that keys a `+key=` override slipped into a typed node are refused too.
        plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
        missing = sorted(OmegaConf.missing_keys(typed))
        if missing:
            raise ConfigError(f"{missing[0]} has no value (???): set it, e.g. `{missing[0]}=...`.")
        OmegaConf.resolve(typed)
    except OmegaConfBaseException as exc:
        raise rephrase(exc, CONF_DIR) from None
    _check_values(typed)
    _check_model(typed)
    return typed


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} has no value (???): set it, e.g. `{key}=...`.") from None


def _check_values(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(str, choices))}.")
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


def _check_model(cfg: DictConfig) -> None:
    m, d = cfg.model, cfg.data
    if d.img_size % m.patch_size:
        raise ConfigError(
            f"model.patch_size={m.patch_size} does not divide data.img_size={d.img_size}: "
            f"choose a patch size that divides the image size."
        )
    if m.embed_dim % m.num_heads:
        divisors = [h for h in range(1, min(m.embed_dim, 16) + 1) if m.embed_dim % h == 0]
        raise ConfigError(
            f"model.num_heads={m.num_heads} does not divide model.embed_dim={m.embed_dim}: "
            f"choose one of {', '.join(map(str, divisors))} (or change the width)."
        )
    if m.head_dim is not None and m.head_dim * m.num_heads != m.embed_dim:
        raise ConfigError(
            f"model.head_dim={m.head_dim} times model.num_heads={m.num_heads} is {m.head_dim * m.num_heads}, "
            f"not model.embed_dim={m.embed_dim}: set model.head_dim={m.embed_dim // m.num_heads} "
            "(heads must divide the width) or model.head_dim=null to derive it."
        )
    if m.global_pool == "token" and not m.class_token:
        raise ConfigError("model.global_pool=token needs a class token: set model.class_token=true or global_pool=avg.")
    grid = d.img_size // m.patch_size
    if not m.rpb.enabled:
        return
    window = list(m.rpb.window_size)
    if len(window) != 2 or min(window) < 1:
        raise ConfigError(f"model.rpb.window_size={window} is not allowed: give two positive ints, e.g. [7, 7].")
    wh, ww = window
    if m.rpb.bias_type == "1d":
        if wh * ww > grid * grid:
            raise ConfigError(
                f"model.rpb.window_size={window} spans {wh * ww} positions but the sequence has {grid * grid} "
                f"tokens ({grid}x{grid} grid): use a window of at most {grid * grid} positions."
            )
    elif wh > grid or ww > grid:
        raise ConfigError(
            f"model.rpb.window_size={window} is larger than the {grid}x{grid} token grid "
            f"(data.img_size={d.img_size} / model.patch_size={m.patch_size}): use a window of at most "
            f"[{grid}, {grid}] or a larger image / smaller patch."
        )
    if m.rpb.mode == "local":
        if m.rpb.bias_type != "2d":
            raise ConfigError("model.rpb.mode=local works on 2d windows: set model.rpb.bias_type=2d or mode=clip.")
        if grid % wh or grid % ww:
            raise ConfigError(
                f"model.rpb.mode=local needs the window {window} to divide the {grid}x{grid} token grid: "
                "pick a window that divides it or use model.rpb.mode=clip."
            )
        if m.class_token:
            raise ConfigError(
                "model.rpb.mode=local has no place for a class token: set model.class_token=false "
                "and model.global_pool=avg."
            )
    elif m.rpb.shift_windows:
        raise ConfigError("model.rpb.shift_windows=true needs model.rpb.mode=local.")


def build_model(cfg: DictConfig) -> VisionTransformer:
    """The VisionTransformer described by `cfg.model` for the images of `cfg.data`."""
    from rpb import VisionTransformer

    m, d = cfg.model, cfg.data
    rpb_kwargs = None
    if m.rpb.enabled:
        rpb_kwargs = {
            "num_heads": m.num_heads,
            "window_size": tuple(m.rpb.window_size),
            "bias_type": m.rpb.bias_type,
            "init_std": m.rpb.init_std,
            "learnable": m.rpb.learnable,
            "mode": m.rpb.mode,
            "shift_windows": m.rpb.shift_windows,
        }
    return VisionTransformer(
        img_size=d.img_size,
        patch_size=m.patch_size,
        in_channels=d.in_channels,
        num_classes=d.num_classes,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        qkv_bias=m.qkv_bias,
        head_dim=m.head_dim,
        scale=m.scale,
        drop_rate=m.drop_rate,
        attn_drop_rate=m.attn_drop_rate,
        drop_path_rate=m.drop_path_rate,
        use_relative_position=m.rpb.enabled,
        rpb_kwargs=rpb_kwargs,
        class_token=m.class_token,
        global_pool=m.global_pool,
        grad_checkpointing=m.grad_checkpointing,
        attn_impl=m.attn_impl,
    )


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML with secrets (passwords in URLs, password/token/api_key keys) masked."""
    from experiments.tracking import mask_secrets

    return OmegaConf.to_yaml(OmegaConf.create(mask_secrets(OmegaConf.to_container(cfg, resolve=True))))
