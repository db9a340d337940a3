"""Typed schemas of the training config (dataclasses registered in Hydra's ConfigStore).

Hydra merges every YAML of `conf/` onto these nodes, so a misspelt key or a value of the wrong type is refused
while composing; `experiments.config.validate_config` adds the checks that types cannot express.

The schemas hold no defaults (every leaf is `MISSING`): the YAML files of `conf/` are the defaults, in one place.
A config built by hand takes the keys it leaves out from `conf/train.yaml` as composed
(`experiments.config.validate_config`); tests/experiments/test_defaults.py keeps it so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = MISSING
    img_size: int = MISSING
    in_channels: int = MISSING
    num_classes: int = MISSING
    batch_size: int = MISSING  # per process: the global batch is batch_size * num_processes * grad_accum_steps
    eval_batch_size: int | None = MISSING
    val_fraction: float = MISSING
    num_samples: int = MISSING  # synthetic only
    num_workers: int | None = MISSING  # null: by the device (experiments.data.loader_options)
    pin_memory: bool | None = MISSING
    persistent_workers: bool | None = MISSING
    download: bool = MISSING
    augment: bool = MISSING
    randaugment: bool = MISSING


@dataclass
class RPBConfig:
    enabled: bool = MISSING
    bias_type: str = MISSING
    window_size: list[int] = MISSING  # also the windows of mode=local
    init_std: float = MISSING
    learnable: bool = MISSING
    mode: str = MISSING  # clip | local (Swin windows, with or without a bias)
    shift_windows: bool = MISSING


@dataclass
class ModelConfig:
    patch_size: int = MISSING
    embed_dim: int = MISSING
    depth: int = MISSING
    num_heads: int = MISSING
    head_dim: int | None = MISSING
    scale: bool = MISSING
    mlp_ratio: float = MISSING
    qkv_bias: bool = MISSING
    drop_rate: float = MISSING
    attn_drop_rate: float = MISSING
    drop_path_rate: float = MISSING
    class_token: bool = MISSING
    global_pool: str = MISSING
    pos_embed: str = MISSING  # none | learned | sincos: absolute position, alone or with model.rpb
    attn_impl: str = MISSING
    grad_checkpointing: bool = MISSING
    norm_eps: float = MISSING  # LayerNorm epsilon (timm's ViTs: 1e-6)
    layer_scale_init: float | None = MISSING  # LayerScale's initial gain; null: no LayerScale
    fc_norm: bool = MISSING  # the final norm after pooling (timm's fc_norm) instead of before
    # Start from these weights: a run folder (its checkpoints/best.pt, else checkpoints/last), a checkpoint file
    # (.pt/.pth/.safetensors) or a timm VisionTransformerRelPos state dict (experiments.init_from).
    init_from: str | None = MISSING
    rpb: RPBConfig = field(default_factory=RPBConfig)


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class ScheduleConfig:
    name: str = MISSING
    warmup_epochs: float = MISSING
    warmup_start_factor: float = MISSING
    min_lr: float = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    mixed_precision: str | None = MISSING  # null: the launcher's (experiments.config.resolve_mixed_precision)
    grad_accum_steps: int = MISSING
    clip_grad_norm: float | None = MISSING
    label_smoothing: float = MISSING
    compile: bool = MISSING
    early_stopping_patience: int | None = MISSING
    early_stopping_monitor: str = MISSING
    cpu: bool = MISSING
    threads: int | None = MISSING  # null: experiments.threads.choose_threads (the free cores)
    log_every_n_steps: int = MISSING
    heatmap_every_n_epochs: int = MISSING
    progress_bar: bool = MISSING
    save_checkpoints: bool = MISSING
    limit_train_batches: int | None = MISSING
    limit_val_batches: int | None = MISSING


@dataclass
class TrainConfig:
    seed: int = MISSING
    name: str = MISSING
    output_dir: str = MISSING
    run_dir: str | None = MISSING  # null -> <output_dir>/<name>-<timestamp>
    resume: str | None = MISSING  # a run dir to continue
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # One entry per tracker (conf/tracker/*.yaml: `_target_` and its arguments) plus `extra_config`: checked by
    # `experiments.tracking.check_trackers`, so a new tracker needs no schema of its own.
    tracker: dict[str, Any] = MISSING
    # Owned and checked by the sweep and ablation tools (conf/sweep, conf/ablation); training ignores them. None
    # is no default: a training config has no such node until conf/sweep.yaml or conf/ablate.yaml adds one.
    sweep: Any = None
    ablation: Any = None


SCHEMA_NAME = "train_schema"


def register_schemas() -> None:
    """Store the root schema; `conf/train.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)
