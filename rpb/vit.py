"""Vision Transformer with a learnable relative position bias in every block (the training guide's model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Attention, DropPath, Mlp, PatchEmbed, RelativePositionBias
from .layers.relative_position import to_2tuple

RPB_KEYS = ("num_heads", "window_size", "bias_type", "init_std", "learnable", "mode", "shift_windows")
GLOBAL_POOLS = ("token", "avg")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        scale: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        rel_pos_bias: RelativePositionBias | None = None,
        attn_impl: str = "auto",
        shift_size: int = 0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(
            dim, num_heads, head_dim, qkv_bias, scale, attn_drop, drop, rel_pos_bias, attn_impl, shift_size
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """With `num_queries=n`, only the first n tokens are updated and returned: (B, n, C)."""
        attn = self.attn(self.norm1(x), num_queries)
        x = (x if num_queries is None else x[:, :num_queries]) + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a relative position bias per block (Swin/BEiT style) instead of, or besides, absolute embeddings.

    Args:
        img_size, patch_size, in_channels, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias:
            as in timm's VisionTransformer.
        head_dim: width per head (default embed_dim // num_heads).
        scale: multiply logits by head_dim**-0.5 (True) or leave them unscaled (False).
        drop_rate, attn_drop_rate, drop_path_rate: dropout after projections/MLP, on attention probabilities,
            and the stochastic-depth rate (linearly increasing over blocks).
        use_relative_position: give every block a RelativePositionBias.
        rpb_kwargs: {num_heads, window_size, bias_type, init_std, learnable, mode, shift_windows}; window_size
            defaults to the token grid (global attention, full bias). mode="local" is Swin-style windowed
            attention (needs class_token=False); shift_windows shifts the windows of every second block.
        class_token: prepend a class token (BEiT's three class entries are added to the bias table).
        global_pool: "token" (class token) or "avg" (mean of patch tokens).
        grad_checkpointing: recompute blocks in backward to save memory (training only).
        attn_impl: "auto", "reference", "sdpa" or "flex".
        abs_pos_embed: learned absolute position embedding; None means "only without relative position bias".
        class_token_last_block: with global_pool="token", the last block of `forward` computes the class token
            only (the same logits, ~1/depth less work); False runs it on every token as timm does.
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
        rpb_kwargs: dict[str, Any] | None = None,
        class_token: bool = True,
        global_pool: str = "token",
        grad_checkpointing: bool = False,
        attn_impl: str = "auto",
        abs_pos_embed: bool | None = None,
        class_token_last_block: bool = True,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}.")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs a class token; set class_token=True or global_pool='avg'.")
        if head_dim is None and embed_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} does not divide embed_dim={embed_dim}; "
                f"pick a divisor of {embed_dim} or set head_dim."
            )
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.grad_checkpointing = grad_checkpointing
        self.class_token_last_block = class_token_last_block
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        use_abs = not use_relative_position if abs_pos_embed is None else abs_pos_embed
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim)) if use_abs else None
        self.pos_drop = nn.Dropout(drop_rate)

        rpb = self._rpb_options(rpb_kwargs, num_heads) if use_relative_position else None
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i in range(depth):
            bias = None
            shift: int | tuple[int, int] = 0
            if rpb is not None:
                bias = RelativePositionBias(
                    num_heads,
                    rpb["window_size"],
                    bias_type=rpb["bias_type"],
                    init_std=rpb["init_std"],
                    learnable=rpb["learnable"],
                    class_token=class_token,
                    grid_size=self.grid_size,
                    mode=rpb["mode"],
                )
                if rpb["shift_windows"] and i % 2 == 1:
                    shift = (bias.window_size[0] // 2, bias.window_size[1] // 2)
            blocks.append(
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    head_dim,
                    scale,
                    drop_rate,
                    attn_drop_rate,
                    drop_path=dpr[i],
                    rel_pos_bias=bias,
                    attn_impl=attn_impl,
                    shift_size=shift,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def _rpb_options(self, rpb_kwargs: dict[str, Any] | None, num_heads: int) -> dict[str, Any]:
        opts = dict(rpb_kwargs or {})
        unknown = sorted(set(opts) - set(RPB_KEYS))
        if unknown:
            raise ValueError(f"unknown rpb_kwargs key(s) {unknown}; allowed keys are {list(RPB_KEYS)}.")
        if opts.get("num_heads", num_heads) != num_heads:
            raise ValueError(
                f"rpb_kwargs num_heads={opts['num_heads']} differs from num_heads={num_heads}; make them equal."
            )
        bias_type = opts.get("bias_type", "2d")
        window = opts.get("window_size")
        if window is None:
            window = self.grid_size
        if bias_type == "2d":
            window = to_2tuple(window, "rpb_kwargs window_size")
            gh, gw = self.grid_size
            if window[0] > gh or window[1] > gw:
                raise ValueError(
                    f"rpb_kwargs window_size {window} is larger than the {gh}x{gw} token grid "
                    f"(img_size // patch_size); use a window_size of at most {self.grid_size}."
                )
        mode = opts.get("mode", "clip")
        if opts.get("shift_windows") and mode != "local":
            raise ValueError(
                "rpb_kwargs shift_windows=True needs mode='local'; set mode='local' or shift_windows=False."
            )
        if mode == "local" and self.num_prefix_tokens:
            raise ValueError(
                "rpb_kwargs mode='local' has no place for a class token; set class_token=False and global_pool='avg'."
            )
        return {
            "window_size": window,
            "bias_type": bias_type,
            "init_std": float(opts.get("init_std", 0.02)),
            "learnable": bool(opts.get("learnable", True)),
            "mode": mode,
            "shift_windows": bool(opts.get("shift_windows", False)),
        }

    def init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (besides biases and norms)."""
        names = {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return names | {n for n in ("cls_token", "pos_embed") if getattr(self, n) is not None}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, N, C) of the last block, class token first."""
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
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; equal to `forward_head(forward_features(x))`. With class-token pooling the last block computes
        the class token's row only (`class_token_last_block`): the patch tokens' outputs of the last block are
        never read, so their queries, attention rows, projection and MLP are skipped (~1/depth of the work)."""
        class_token_only = self.global_pool == "token" and self.class_token_last_block
        return self.forward_head(self.norm(self._blocks(self._embed(x), class_token_only)))
