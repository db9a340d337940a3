"""Typed schemas of the training config (dataclasses registered in Hydra's ConfigStore).

Hydra merges every YAML of `conf/` onto these nodes, so a misspelt key or a value of the wrong type is refused
while composing; `experiments.config.validate_config` adds the checks that types cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from rpb.options import (
    ATTN_IMPL,
    BIAS_TYPE,
    FC_NORM,
    GLOBAL_POOL,
    INIT_STD,
    LAYER_SCALE_INIT,
    MODE,
    NORM_EPS,
    POS_EMBED,
)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    img_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    batch_size: int = 32  # per process: the global batch is batch_size * num_processes * grad_accum_steps
    eval_batch_size: int | None = None
    val_fraction: float = 0.2
    num_samples: int = 1000  # synthetic only
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    download: bool = False
    augment: bool = True
    randaugment: bool = False


@dataclass
class RPBConfig:
    enabled: bool = True
    bias_type: str = BIAS_TYPE
    window_size: list[int] = field(default_factory=lambda: [7, 7])  # also the windows of mode=local
    init_std: float = INIT_STD
    learnable: bool = True
    mode: str = MODE  # clip | local (Swin windows, with or without a bias)
    shift_windows: bool = False


@dataclass
class ModelConfig:
    patch_size: int = 4
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 4
    head_dim: int | None = 24
    scale: bool = True
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.1
    attn_drop_rate: float = 0.1
    drop_path_rate: float = 0.0
    class_token: bool = True
    global_pool: str = GLOBAL_POOL
    pos_embed: str = POS_EMBED  # none | learned | sincos: absolute position, alone or with model.rpb
    attn_impl: str = ATTN_IMPL
    grad_checkpointing: bool = False
    norm_eps: float = NORM_EPS  # LayerNorm epsilon (timm's ViTs: 1e-6)
    layer_scale_init: float | None = LAYER_SCALE_INIT  # LayerScale's initial gain; null: no LayerScale
    fc_norm: bool = FC_NORM  # the final norm after pooling (timm's fc_norm) instead of before
    # Start from these weights: a run folder (its checkpoints/best.pt, else checkpoints/last), a checkpoint file
    # (.pt/.pth/.safetensors) or a timm VisionTransformerRelPos state dict (experiments.init_from).
    init_from: str | None = None
    rpb: RPBConfig = field(default_factory=RPBConfig)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "warmup_cosine"
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.1
    min_lr: float = 1.0e-6


@dataclass
class TrainerConfig:
    epochs: int = 10
    mixed_precision: str | None = None  # null: the launcher's (experiments.config.resolve_mixed_precision)
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = 1.0
    label_smoothing: float = 0.0
    compile: bool = False
    early_stopping_patience: int | None = None
    early_stopping_monitor: str = "val_loss"
    cpu: bool = False
    threads: int | None = None  # null: experiments.threads.choose_threads (the free cores)
    log_every_n_steps: int = 10
    heatmap_every_n_epochs: int = 1
    progress_bar: bool = True
    save_checkpoints: bool = True
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None


@dataclass
class TrainConfig:
    seed: int = 42
    name: str = "rpb-vit"
    output_dir: str = "runs"
    run_dir: str | None = None  # null -> <output_dir>/<name>-<timestamp>
    resume: str | None = None  # a run dir to continue
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # One entry per tracker (conf/tracker/*.yaml: `_target_` and its arguments) plus `extra_config`: checked by
    # `experiments.tracking.check_trackers`, so a new tracker needs no schema of its own.
    tracker: dict[str, Any] = field(default_factory=dict)
    # Owned and checked by the sweep and ablation tools (conf/sweep, conf/ablation); training ignores them.
    sweep: Any = None
    ablation: Any = None


SCHEMA_NAME = "train_schema"


def register_schemas() -> None:
    """Store the root schema; `conf/train.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)
