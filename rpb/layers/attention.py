"""Multi-head self-attention with a relative position bias, interchangeable kernels and Swin's windows.

As in Swin, windowing belongs to the attention layer: it knows the token grid, `window_size` and `shift_size`,
partitions the tokens into (shifted) windows and adds the shifted-window mask to the logits; the bias module
(`RelativePositionBias`) only expands its table through its index. Local attention works with or without a bias.

Paths (`attn_impl`): "reference" writes the softmax out (the ground truth the tests compare against), "sdpa" calls
F.scaled_dot_product_attention with the bias as an additive float mask, "flex" calls FlexAttention and gathers the
bias from the table inside its score_mod (no (nh, N, N) bias is materialised). "auto" picks one per call with
`select_attn_impl`, a pure function of the torch version, the device type and the call's options.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..options import ATTN_IMPL, ATTN_IMPLS, OptionError, check_choice, check_window, resolve_head_dim, to_2tuple
from ..options import window_shift as swin_window_shift
from .relative_position import RelativePositionBias

FLEX_SINCE = (2, 5)  # torch.nn.attention.flex_attention
FLEX_BIAS_GRAD_SINCE = (2, 6)  # CUDA gradients of tensors captured by a score_mod (pytorch/pytorch#137452)
SDPA_BIAS_GRAD_SINCE = (2, 1)  # the CUDA memory-efficient SDPA kernel returns the gradient of attn_mask
# head widths that are no power of 2 (the guide's 24): flex kernels since 2.7 (pytorch#133495), its decoding kernel
# (a short query, as the class-token-only last block) since 2.10 (pytorch#164931)
FLEX_ANY_HEAD_DIM_SINCE = (2, 10)


def _version(torch_version: str) -> tuple[int, int]:
    """'2.13.0+cpu' -> (2, 13)."""
    major, minor = torch_version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def select_attn_impl(
    torch_version: str,
    device_type: str,
    *,
    has_bias: bool,
    bias_requires_grad: bool = False,
    inputs_require_grad: bool = False,
    grad_enabled: bool = True,
    half_precision: bool = False,
    dropout: bool = False,
    head_dim: int | None = None,
) -> str:
    """The path `attn_impl="auto"` takes for one call: "flex", "sdpa" or "reference".

    CUDA: with a bias, FlexAttention with the bias gathered from the table inside score_mod, where this torch has
    FlexAttention (2.5) and, when a gradient is needed, the backward of tensors a score_mod captures (2.6), for a
    head width that is no power of 2 its kernels (2.10), and the call has no attention dropout (flex has none);
    otherwise SDPA, whose memory-efficient kernel carries the
    bias gradient (2.1); the reference where neither. Without a bias: SDPA (flash attention).
    CPU and other devices (measured with experiments.bench_model): the reference in training when the bias needs a
    gradient (SDPA's fused CPU kernel has none, its math fallback is slower than the written-out reference) or when
    half-precision inputs need one (the fused bf16 backward measured ~2x slower than the reference); else SDPA.

    Args:
        torch_version: `torch.__version__`, e.g. "2.13.0+cpu".
        device_type: "cuda", "cpu", ...
        has_bias: a bias (or a shifted-window mask) is added to the logits.
        bias_requires_grad: the bias carries a gradient (a learnable table in training).
        inputs_require_grad: q, k or v carries a gradient.
        grad_enabled: `torch.is_grad_enabled()`.
        half_precision: q is bf16 or fp16.
        dropout: attention dropout is applied in this call.
        head_dim: width per head (None: taken as a power of 2).
    """
    version = _version(torch_version)
    bias_grad = grad_enabled and has_bias and bias_requires_grad
    needs_grad = bias_grad or (grad_enabled and inputs_require_grad)
    if device_type == "cuda":
        flex_ok = version >= FLEX_SINCE and (not needs_grad or version >= FLEX_BIAS_GRAD_SINCE)
        flex_ok = flex_ok and (head_dim is None or _power_of_2(head_dim) or version >= FLEX_ANY_HEAD_DIM_SINCE)
        if has_bias and flex_ok and not dropout:
            return "flex"
        return "sdpa" if not bias_grad or version >= SDPA_BIAS_GRAD_SINCE else "reference"
    if bias_grad or (grad_enabled and inputs_require_grad and half_precision):
        return "reference"
    return "sdpa"


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
    version = _version(torch.__version__)
    if needs_grad and version < FLEX_BIAS_GRAD_SINCE:
        return f"torch {torch.__version__} has no gradient for the bias a score_mod gathers (2.6 has)"
    if not _power_of_2(q.shape[-1]) and q.device.type == "cuda" and version < FLEX_ANY_HEAD_DIM_SINCE:
        return f"torch {torch.__version__} has no flex kernel for a head width of {q.shape[-1]} (2.10 has)"
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


class Attention(nn.Module):
    """Multi-head self-attention, global or in (shifted) windows; the bias module lives at `.relative_position_bias`
    (absent without a bias).

    Args:
        dim: token width.
        num_heads: attention heads.
        head_dim: width per head (default dim // num_heads, which then must divide).
        qkv_bias: bias in the fused qkv projection.
        scale: multiply logits by head_dim**-0.5 (the guide's `scale: true`); False leaves them unscaled.
        attn_drop: dropout on attention probabilities (dropout_p in SDPA).
        proj_drop: dropout after the output projection.
        rel_pos_bias: the bias module: over the whole grid for global attention, over one window
            (`grid_size=None`) for local attention.
        attn_impl: "auto", "reference", "sdpa" or "flex" (see `select_attn_impl`).
        grid_size: the (Gh, Gw) token grid; needed for windows.
        window_size: (Wh, Ww) windows that tile the grid (Swin's W-MSA); None: global attention.
        shift_size: cyclic shift of the windows (Swin's SW-MSA), 0 along an axis the window covers.

    Raises:
        OptionError (a ValueError): an option that breaks a rule of `rpb.options`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        scale: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: RelativePositionBias | None = None,
        attn_impl: str = ATTN_IMPL,
        grid_size: tuple[int, int] | None = None,
        window_size: int | tuple[int, int] | None = None,
        shift_size: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.attn_impl = check_choice("attn_impl", attn_impl, ATTN_IMPLS)
        self.num_heads = num_heads
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        self.scale = self.head_dim**-0.5 if scale else 1.0
        self.attn_drop = attn_drop
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.grid_size = None if grid_size is None else to_2tuple(grid_size, "grid_size")
        self.window_size: tuple[int, int] | None = None
        self.shift_size = (0, 0)
        self.local = window_size is not None
        if self.local:
            if self.grid_size is None:
                raise OptionError("<window_size=> needs the token grid: pass <grid_size>.", "grid_size",
                                  window_size=window_size)  # fmt: skip
            self.window_size = check_window(
                window_size, self.grid_size, window_mode="local", use_relative_position=False
            )
            self.shift_size = swin_window_shift(self.window_size, self.grid_size, shift_size)
            if any(self.shift_size):
                mask = shifted_window_mask(self.grid_size, self.window_size, self.shift_size)
                self.register_buffer("attn_mask", mask, persistent=False)  # (nW, n, n)
        elif to_2tuple(shift_size, "shift_size", minimum=0) != (0, 0):
            raise OptionError("<shift_size=> shifts windows: set <window_size> (and <grid_size>) too.", "shift_size",
                              shift_size=shift_size)  # fmt: skip
        if rel_pos_bias is not None:
            if rel_pos_bias.num_heads != num_heads:
                raise OptionError(
                    f"the relative position bias has {rel_pos_bias.num_heads} heads but attention has <num_heads=>; "
                    "make rpb_kwargs num_heads equal num_heads.",
                    "num_heads",
                    num_heads=num_heads,
                )
            if self.local and rel_pos_bias.num_tokens != self.window_size[0] * self.window_size[1]:
                raise OptionError(
                    f"the relative position bias covers {rel_pos_bias.num_tokens} tokens but a "
                    f"{self.window_size[0]}x{self.window_size[1]} window has "
                    f"{self.window_size[0] * self.window_size[1]}: build it over one window (grid_size=None).",
                    "window_size",
                )
            self.relative_position_bias = rel_pos_bias
        self._flex_warned = False

    def _bias(self) -> torch.Tensor | None:
        """Additive logits bias: (1, nh, N, N); with shifted windows (nW, nh or 1, n, n), the mask added."""
        bias = self.relative_position_bias().unsqueeze(0) if hasattr(self, "relative_position_bias") else None
        if any(self.shift_size):
            mask = self.attn_mask.unsqueeze(1)  # (nW, 1, n, n)
            bias = mask if bias is None else bias + mask
        return bias

    def resolve_impl(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
        """The path this call takes: `attn_impl`, "auto" resolved by `select_attn_impl`, and "flex" falling back to
        SDPA (with one warning) where FlexAttention cannot run the call."""
        dropout_p = self.attn_drop if self.training else 0.0
        rpb = getattr(self, "relative_position_bias", None)
        bias_grad = rpb is not None and rpb.relative_position_bias_table.requires_grad
        impl = self.attn_impl
        if impl == "auto":
            impl = select_attn_impl(
                torch.__version__,
                q.device.type,
                has_bias=rpb is not None or any(self.shift_size),
                bias_requires_grad=bias_grad,
                inputs_require_grad=q.requires_grad,
                grad_enabled=torch.is_grad_enabled(),
                half_precision=q.dtype in (torch.bfloat16, torch.float16),
                dropout=dropout_p > 0,
                head_dim=self.head_dim,
            )
        if impl == "flex":
            needs_grad = torch.is_grad_enabled() and (bias_grad or any(t.requires_grad for t in (q, k, v)))
            reason = flex_unavailable_reason(q, needs_grad, dropout_p)
            if reason is None:
                return impl
            if not self._flex_warned:
                warnings.warn(f"attn_impl='flex' falls back to SDPA: {reason}.", stacklevel=3)
                self._flex_warned = True
            impl = "sdpa"
        return impl

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, impl: str = "reference"
    ) -> torch.Tensor:
        """softmax(q k^T * scale + bias) v on path "sdpa" or "reference", for q, k, v (B, nh, N, hd) and a bias
        broadcastable to (B, nh, N, N) (with windows: B = batch * nW and bias (nW, nh or 1, n, n))."""
        dropout_p = self.attn_drop if self.training else 0.0
        if bias is not None:
            bias = bias.to(q.dtype)
        if impl == "sdpa":
            if bias is not None and bias.shape[0] > 1:
                # per-window masks (nW, nh, n, n): windows folded into the head axis keep SDPA's inputs 4-D (its
                # fused kernels take no 5-D inputs) and the mask broadcast over the batch, never materialised
                nw = bias.shape[0]
                bias = bias.expand(nw, q.shape[1], *bias.shape[2:])
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

    def _attend_flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """FlexAttention; the bias is gathered inside score_mod: table[index[q_idx, kv_idx], h] (+ the window mask)."""
        rpb = getattr(self, "relative_position_bias", None)
        mask = self.attn_mask.to(q.dtype) if any(self.shift_size) else None
        if rpb is None and mask is None:
            return _flex_attention(q, k, v, None, self.scale)
        if rpb is None:
            nw = mask.shape[0]

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + mask[b % nw, q_idx, kv_idx]

            return _flex_attention(q, k, v, score_mod, self.scale)
        table, index = rpb.relative_position_bias_table.to(q.dtype), rpb.relative_position_index
        if mask is None:

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + table[index[q_idx, kv_idx], h]

            return _flex_attention(q, k, v, score_mod, self.scale)
        nw = mask.shape[0]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[index[q_idx, kv_idx], h] + mask[b % nw, q_idx, kv_idx]

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
                raise ValueError("num_queries is not supported with local windows.")
            if any(self.shift_size):
                x = _roll_tokens(x, self.grid_size, (-self.shift_size[0], -self.shift_size[1]))
            x = window_partition(x, self.grid_size, self.window_size)  # (B*nW, n, C)
        B, N, _ = x.shape
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
        impl = self.resolve_impl(q, k, v)
        if impl == "flex":
            x = self._attend_flex(q, k, v)
        else:
            bias = self._bias()  # gathered once per forward, broadcast over the batch
            if bias is not None and num_queries is not None:
                bias = bias[..., :num_queries, :]
            x = self.attend(q, k, v, bias, impl)
        N = q.shape[2]
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))
        if self.local:
            x = window_reverse(x, self.grid_size, self.window_size)
            if any(self.shift_size):
                x = _roll_tokens(x, self.grid_size, self.shift_size)
        return x

    def extra_repr(self) -> str:
        window = f", grid_size={self.grid_size}, window_size={self.window_size}, shift_size={self.shift_size}"
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, attn_impl={self.attn_impl!r}" + (
            window if self.local else ""
        )


def _roll_tokens(x: torch.Tensor, grid_size: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    B, N, C = x.shape
    return torch.roll(x.view(B, *grid_size, C), shifts=shift, dims=(1, 2)).view(B, N, C)
