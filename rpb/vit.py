"""Vision Transformer with a learnable relative position bias in every block (the training guide's model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Attention, DropPath, LayerScale, Mlp, PatchEmbed, RelativePositionBias
from .layers.pos_embed import sincos_2d_pos_embed
from .options import (
    ATTN_IMPL,
    BIAS_TYPE,
    CLS_TOKEN_INIT_STD,
    FC_NORM,
    GLOBAL_POOL,
    INIT_STD,
    LAYER_SCALE_INIT,
    MODE,
    NORM_EPS,
    POS_EMBED,
    check_model_options,
    rpb_kwargs_to_options,
    swin_shift,
)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x))) (ls: LayerScale, or nothing).

    Args:
        dim, num_heads: token width and attention heads.
        mlp_ratio: hidden width of the MLP over `dim`.
        drop: dropout after the attention projection and in the MLP.
        drop_path: stochastic-depth rate of both residual branches.
        head_dim, qkv_bias, scale, attn_drop, rel_pos_bias, attn_impl, grid_size, window_size, shift_size:
            those of `Attention`.
        norm_eps: epsilon of both LayerNorms.
        layer_scale_init: initial gain of LayerScale on both branches; None: no LayerScale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        scale: bool = True,
        attn_drop: float = 0.0,
        rel_pos_bias: RelativePositionBias | None = None,
        attn_impl: str = ATTN_IMPL,
        grid_size: tuple[int, int] | None = None,
        window_size: int | tuple[int, int] | None = None,
        shift_size: int | tuple[int, int] = 0,
        norm_eps: float = NORM_EPS,
        layer_scale_init: float | None = LAYER_SCALE_INIT,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            scale=scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            rel_pos_bias=rel_pos_bias,
            attn_impl=attn_impl,
            grid_size=grid_size,
            window_size=window_size,
            shift_size=shift_size,
        )
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """With `num_queries=n`, only the first n tokens are updated and returned: (B, n, C)."""
        attn = self.attn(self.norm1(x), num_queries)
        x = (x if num_queries is None else x[:, :num_queries]) + self.drop_path(self.ls1(attn))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT with a relative position bias per block (Swin/BEiT style), with or without an absolute embedding.

    Every option's allowed values, default and rules live in `rpb.options`; a broken rule raises `OptionError`
    (a ValueError) in one sentence at construction.

    Args:
        img_size, patch_size, in_channels, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias:
            as in timm's VisionTransformer.
        head_dim: width per head (default embed_dim // num_heads).
        scale: multiply logits by head_dim**-0.5 (True) or leave them unscaled (False).
        drop_rate, attn_drop_rate, drop_path_rate: dropout after projections/MLP, on attention probabilities,
            and the stochastic-depth rate (linearly increasing over blocks).
        use_relative_position: give every block a RelativePositionBias.
        window_size: (Wh, Ww) of the bias table and, with window_mode="local", of the attention windows; an int
            for a square window (1d bias: W positions). None: the token grid (global attention, full bias).
        window_mode: "clip" (global attention; offsets beyond the window share the table's edge entries) or
            "local" (Swin's windows; needs class_token=False; works without a bias too).
        shift_windows: shift the windows of every second block by half a window (Swin's SW-MSA).
        bias_type: "2d" (offsets on the token grid) or "1d" (offsets along the flattened sequence).
        rpb_init_std: truncated-normal std of the bias tables (0: zeros).
        rpb_learnable: False keeps the tables fixed.
        pos_embed: absolute position embedding: "none", "learned" (ViT) or "sincos" (MAE's fixed 2d sin-cos);
            alone or together with the relative position bias.
        class_token: prepend a class token (BEiT's three class entries are added to the bias table).
        global_pool: "token" (class token) or "avg" (mean of patch tokens).
        fc_norm: put the final LayerNorm after pooling (timm's `fc_norm`, as MAE and BEiT) instead of on every
            token before it.
        norm_eps: epsilon of every LayerNorm (default torch's 1e-5, as the guide's blocks; timm's ViTs use 1e-6).
        layer_scale_init: LayerScale on both residual branches of every block, gains initialised to this value
            (timm's `init_values`); None: no LayerScale.
        grad_checkpointing: recompute blocks in backward to save memory (training only).
        attn_impl: "auto", "reference", "sdpa" or "flex" (`rpb.layers.attention.select_attn_impl`).
        class_token_last_block: with global_pool="token", the last block of `forward` computes the class token
            only (the same logits, ~1/depth less work); False runs it on every token as timm does.
        rpb_kwargs: the training guide's {num_heads, window_size, bias_type, init_std, learnable, mode,
            shift_windows}; each key sets the keyword argument `rpb.options.RPB_KWARGS` names.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        scale: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_relative_position: bool = True,
        window_size: int | tuple[int, int] | None = None,
        window_mode: str = MODE,
        shift_windows: bool = False,
        bias_type: str = BIAS_TYPE,
        rpb_init_std: float = INIT_STD,
        rpb_learnable: bool = True,
        pos_embed: str = POS_EMBED,
        class_token: bool = True,
        global_pool: str = GLOBAL_POOL,
        fc_norm: bool = FC_NORM,
        norm_eps: float = NORM_EPS,
        layer_scale_init: float | None = LAYER_SCALE_INIT,
        grad_checkpointing: bool = False,
        attn_impl: str = ATTN_IMPL,
        class_token_last_block: bool = True,
        rpb_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        options = {
            "window_size": window_size,
            "window_mode": window_mode,
            "shift_windows": shift_windows,
            "bias_type": bias_type,
            "rpb_init_std": rpb_init_std,
            "rpb_learnable": rpb_learnable,
        }
        if rpb_kwargs:
            options.update(rpb_kwargs_to_options(rpb_kwargs, num_heads))
        rpb_learnable = bool(options.pop("rpb_learnable"))
        resolved = check_model_options(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_heads=num_heads,
            head_dim=head_dim,
            class_token=class_token,
            global_pool=global_pool,
            attn_impl=attn_impl,
            pos_embed=pos_embed,
            use_relative_position=use_relative_position,
            norm_eps=norm_eps,
            layer_scale_init=layer_scale_init,
            **options,
        )
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.grad_checkpointing = grad_checkpointing
        self.class_token_last_block = class_token_last_block
        self.patch_embed = PatchEmbed(img_size, patch_size=patch_size, in_channels=in_channels, embed_dim=embed_dim)
        self.grid_size = resolved["grid_size"]
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed_type = pos_embed
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        if pos_embed == "learned":  # (1, N, C), class token included, as in ViT
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        elif pos_embed == "sincos":  # fixed: a buffer rebuilt from the shape, not saved
            self.register_buffer("pos_embed", sincos_2d_pos_embed(embed_dim, self.grid_size, class_token), False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        window, local = resolved["window_size"], options["window_mode"] == "local"
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i in range(depth):
            bias = None
            if use_relative_position:
                bias = RelativePositionBias(
                    num_heads,
                    window,
                    bias_type=options["bias_type"],
                    init_std=options["rpb_init_std"],
                    learnable=rpb_learnable,
                    class_token=class_token,
                    grid_size=None if local else self.grid_size,  # local: the index covers one window
                )
            shift = swin_shift(window) if local and options["shift_windows"] and i % 2 == 1 else 0
            blocks.append(
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=dpr[i],
                    head_dim=resolved["head_dim"],
                    qkv_bias=qkv_bias,
                    scale=scale,
                    attn_drop=attn_drop_rate,
                    rel_pos_bias=bias,
                    attn_impl=attn_impl,
                    grid_size=self.grid_size,
                    window_size=window if local else None,
                    shift_size=shift,
                    norm_eps=norm_eps,
                    layer_scale_init=layer_scale_init,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=CLS_TOKEN_INIT_STD)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (besides biases and norms)."""
        names = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return names | {n for n in ("cls_token", "pos_embed") if isinstance(getattr(self, n), nn.Parameter)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, N, C) of the last block, class token first; normalised unless `fc_norm`
        (then the norm comes after pooling, in `forward_head`)."""
        return self.norm(self._blocks(self._embed(x), class_token_only=False))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def _blocks(self, x: torch.Tensor, class_token_only: bool) -> torch.Tensor:
        """Run the blocks; with `class_token_only` the last block updates (and returns) the class token only."""
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            num_queries = 1 if class_token_only and i == last else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, num_queries, use_reentrant=False)
            else:
                x = blk(x, num_queries)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; equal to `forward_head(forward_features(x))`. With class-token pooling the last block computes
        the class token's row only (`class_token_last_block`): the patch tokens' outputs of the last block are
        never read, so their queries, attention rows, projection and MLP are skipped (~1/depth of the work)."""
        class_token_only = self.global_pool == "token" and self.class_token_last_block
        return self.forward_head(self.norm(self._blocks(self._embed(x), class_token_only)))
