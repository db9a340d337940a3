"""Multi-head self-attention with a relative position bias and interchangeable kernels.

Paths (`attn_impl`): "reference" writes the softmax out (the ground truth the tests compare against),
"sdpa" calls F.scaled_dot_product_attention with the bias as an additive float mask, "flex" calls
FlexAttention with the bias as a score_mod. "auto" picks per call: SDPA, except in CPU training when the bias
needs a gradient (SDPA's fused kernel has none; its math fallback is slower than the written-out reference) or
in bf16 (the fused bf16 backward measured ~2x slower than the reference). Measured with experiments.bench_model.
In local mode (Swin) attention runs inside non-overlapping windows, optionally shifted with the Swin mask.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .relative_position import RelativePositionBias, to_2tuple

ATTN_IMPLS = ("auto", "reference", "sdpa", "flex")


def window_partition(x: torch.Tensor, grid_size: tuple[int, int], window_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B*nW, wh*ww, C) windows, row-major over windows."""
    B, _, C = x.shape
    (H, W), (wh, ww) = grid_size, window_size
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, grid_size: tuple[int, int], window_size: tuple[int, int]) -> torch.Tensor:
    """(B*nW, wh*ww, C) windows -> (B, H*W, C) tokens; the inverse of `window_partition`."""
    (H, W), (wh, ww) = grid_size, window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H * W, C)


def shifted_window_mask(
    grid_size: tuple[int, int], window_size: tuple[int, int], shift_size: tuple[int, int]
) -> torch.Tensor:
    """Swin's mask (nW, n, n): 0 where two tokens of a shifted window came from the same region, -inf elsewhere."""
    H, W = grid_size
    region = torch.zeros(1, H * W, 1)
    label = 0
    hs = (slice(0, -window_size[0]), slice(-window_size[0], -shift_size[0]), slice(-shift_size[0], None))
    ws = (slice(0, -window_size[1]), slice(-window_size[1], -shift_size[1]), slice(-shift_size[1], None))
    img = region.view(H, W)
    for h in hs:
        for w in ws:
            img[h, w] = label
            label += 1
    regions = window_partition(region, grid_size, window_size).squeeze(-1)  # (nW, n)
    same = regions[:, :, None] == regions[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


def flex_unavailable_reason(q: torch.Tensor, needs_grad: bool, dropout_p: float) -> str | None:
    """Why FlexAttention cannot run this call (None when it can)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    if dropout_p > 0:
        return "FlexAttention has no attention dropout"
    if needs_grad and q.device.type == "cpu":
        return "FlexAttention has no backward on CPU in this torch"
    return None


_flex_compiled = None


def _flex_attention(q, k, v, score_mod, scale):
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu":  # eager flex is correct on CPU; compiling it costs ~20 s per shape
        return flex_attention(q, k, v, score_mod=score_mod, scale=scale)
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled(q, k, v, score_mod=score_mod, scale=scale)


def _reference_is_faster(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU training: SDPA's fused kernel has no mask gradient (its math fallback is slower than the reference)
    and its bf16 backward measured ~2x slower than the reference on a CPU without AMX."""
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    bias_grad = bias is not None and bias.requires_grad
    return bias_grad or (q.requires_grad and q.dtype in (torch.bfloat16, torch.float16))


class Attention(nn.Module):
    """Multi-head self-attention; the bias module lives at `.relative_position_bias` (absent when disabled).

    Args:
        dim: token width.
        num_heads: attention heads.
        head_dim: width per head (default dim // num_heads).
        qkv_bias: bias in the fused qkv projection.
        scale: multiply logits by head_dim**-0.5 (the guide's `scale: true`); False leaves them unscaled.
        attn_drop: dropout on attention probabilities (dropout_p in SDPA).
        proj_drop: dropout after the output projection.
        rel_pos_bias: the bias module; its mode "local" switches on windowed attention.
        attn_impl: "auto", "reference", "sdpa" or "flex".
        shift_size: cyclic shift (Swin) of the windows in local mode; 0 for none.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        scale: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: RelativePositionBias | None = None,
        attn_impl: str = "auto",
        shift_size: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}.")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"num_heads={num_heads} does not divide embed_dim={dim}; pick a divisor of {dim} or set head_dim."
                )
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale else 1.0
        self.attn_impl = attn_impl
        self.attn_drop = attn_drop
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.local = False
        if rel_pos_bias is not None:
            if rel_pos_bias.num_heads != num_heads:
                raise ValueError(
                    f"the relative position bias has {rel_pos_bias.num_heads} heads but attention has {num_heads}; "
                    "make rpb_kwargs num_heads equal num_heads."
                )
            self.relative_position_bias = rel_pos_bias
            self.local = rel_pos_bias.mode == "local"
        self.shift_size = (0, 0)
        if self.local:
            self.grid_size = rel_pos_bias.grid_size
            self.window_size = rel_pos_bias.window_size
            shift = to_2tuple(shift_size, "shift_size", minimum=0)  # a side-1 window shifts (w // 2 = 0) not at all
            # As in Swin, a window that covers the whole grid is never shifted.
            self.shift_size = tuple(0 if w >= g else s for s, w, g in zip(shift, self.window_size, self.grid_size))
            if any(s >= w for s, w in zip(self.shift_size, self.window_size)):
                raise ValueError(f"shift_size {shift_size} must be smaller than window_size {self.window_size}.")
            if any(self.shift_size):
                mask = shifted_window_mask(self.grid_size, self.window_size, self.shift_size)
                self.register_buffer("attn_mask", mask, persistent=False)
        self._flex_warned = False

    def _bias(self) -> torch.Tensor | None:
        """Additive logits bias: (1, nh, N, N), or (nW, nh, n, n) with the shifted-window mask folded in."""
        if not hasattr(self, "relative_position_bias"):
            return None
        bias = self.relative_position_bias().unsqueeze(0)  # gathered once per forward, broadcast over batch
        if any(self.shift_size):
            bias = bias + self.attn_mask.unsqueeze(1)
        return bias

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T * scale + bias) v for q, k, v (B, nh, N, hd) and bias broadcastable to (B, nh, N, N)."""
        dropout_p = self.attn_drop if self.training else 0.0
        impl = self.attn_impl
        if impl == "auto":
            impl = "reference" if _reference_is_faster(q, bias) else "sdpa"
        if impl == "flex":
            needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
            reason = flex_unavailable_reason(q, needs_grad, dropout_p)
            if reason is None:
                return self._attend_flex(q, k, v, bias)
            if not self._flex_warned:
                warnings.warn(f"attn_impl='flex' falls back to SDPA: {reason}.", stacklevel=2)
                self._flex_warned = True
            impl = "sdpa"
        if bias is not None:
            bias = bias.to(q.dtype)
        if impl == "sdpa":
            if bias is not None and bias.shape[0] > 1:
                # per-window masks (nW, nh, n, n): windows folded into the head axis keep SDPA's inputs 4-D (its
                # fused kernels take no 5-D inputs) and the mask broadcast over the batch, never materialised
                nw = bias.shape[0]
                out = F.scaled_dot_product_attention(
                    *(t.reshape(-1, nw * t.shape[1], *t.shape[2:]) for t in (q, k, v)),
                    attn_mask=bias.reshape(1, -1, *bias.shape[2:]),
                    dropout_p=dropout_p,
                    scale=self.scale,
                )
                return out.view(q.shape)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=self.scale)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nh, N, N)
        if bias is not None:
            attn = (attn.unflatten(0, (-1, bias.shape[0])) + bias).flatten(0, 1)
        attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, p=dropout_p, training=self.training)
        return attn @ v

    def _attend_flex(self, q, k, v, bias):
        if bias is None:
            return _flex_attention(q, k, v, None, self.scale)
        nw = bias.shape[0]
        bias = bias.to(q.dtype)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b % nw, h, q_idx, kv_idx]

        return _flex_attention(q, k, v, score_mod, self.scale)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); with `num_queries=n` only the first n tokens attend (to all N) -> (B, n, C).

        The ViT uses n=1 in its last block when it pools the class token: the other tokens' outputs are never
        read there, so their queries, attention rows, projection and MLP are skipped (the same logits). This
        path applies `qkv.weight` and `qkv.bias` with `F.linear` (forward hooks on `qkv` do not run here; wrap
        or hook the ViT with `class_token_last_block=False` if you need them).
        """
        if self.local:
            if num_queries is not None:
                raise ValueError("num_queries is not supported with mode='local' windows.")
            if any(self.shift_size):
                x = _roll_tokens(x, self.grid_size, (-self.shift_size[0], -self.shift_size[1]))
            x = window_partition(x, self.grid_size, self.window_size)  # (B*nW, n, C)
        B, N, _ = x.shape
        bias = self._bias()
        if num_queries is None:
            qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        else:
            inner = self.num_heads * self.head_dim
            w_q, w_kv = self.qkv.weight.split([inner, 2 * inner])
            b_q, b_kv = self.qkv.bias.split([inner, 2 * inner]) if self.qkv.bias is not None else (None, None)
            q = F.linear(x[:, :num_queries], w_q, b_q).view(B, num_queries, self.num_heads, self.head_dim)
            q = q.transpose(1, 2)  # (B, nh, n, hd)
            kv = F.linear(x, w_kv, b_kv).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
            N = num_queries
            if bias is not None:
                bias = bias[..., :num_queries, :]
        x = self.attend(q, k, v, bias)
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))
        if self.local:
            x = window_reverse(x, self.grid_size, self.window_size)
            if any(self.shift_size):
                x = _roll_tokens(x, self.grid_size, self.shift_size)
        return x


def _roll_tokens(x: torch.Tensor, grid_size: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    B, N, C = x.shape
    return torch.roll(x.view(B, *grid_size, C), shifts=shift, dims=(1, 2)).view(B, N, C)
