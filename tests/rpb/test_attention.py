"""Attention paths agree with the written-out reference; windowed (local) attention matches a per-window loop."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from rpb import Attention, RelativePositionBias, select_attn_impl
from rpb.layers.attention import flex_unavailable_reason


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def make_attention(impl="reference", window=(3, 3), grid=(3, 3), class_token=True, mode="clip", shift=0, bias=True,
                   **kw):  # fmt: skip
    """Global attention over `grid` with a `window` bias ("clip"), or Swin windows of `window` ("local")."""
    torch.manual_seed(0)
    local = mode == "local"
    rpb = None
    if bias:
        rpb = RelativePositionBias(4, window, class_token=class_token, grid_size=None if local else grid, init_std=0.5)
    windows = dict(grid_size=grid, window_size=window, shift_size=shift) if local else {}
    return Attention(32, 4, rel_pos_bias=rpb, attn_impl=impl, **windows, **kw).double()


def num_tokens(case: dict) -> int:
    return case["grid"][0] * case["grid"][1] + case["class_token"]


def run(attn: Attention, x: torch.Tensor, impl: str):
    """Output and gradients (input, bias table) of `attn` on path `impl`."""
    attn.attn_impl = impl
    attn.zero_grad()
    x = x.clone().requires_grad_(True)
    out = attn(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, attn.relative_position_bias.relative_position_bias_table.grad.clone()


CASES = [
    dict(window=(3, 3), grid=(3, 3), class_token=True),  # global, full bias
    dict(window=(2, 3), grid=(4, 4), class_token=True),  # clip
    dict(window=(2, 2), grid=(4, 4), class_token=False, mode="local"),
    dict(window=(2, 2), grid=(4, 4), class_token=False, mode="local", shift=1),
    dict(window=(3, 3), grid=(3, 3), class_token=True, scale=False, head_dim=5),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_matches_reference_values_and_gradients(case, dtype):
    attn = make_attention(**case).to(dtype)
    x = torch.randn(3, num_tokens(case), 32, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for got, want in zip(run(attn, x, "sdpa"), run(attn, x, "reference")):
        assert rel_err(got, want) < tol


@pytest.mark.parametrize("case", CASES)
def test_flex_matches_reference(case):
    attn = make_attention(**case).float()
    x = torch.randn(2, num_tokens(case), 32)
    reason = flex_unavailable_reason(x, needs_grad=True, dropout_p=0.0)
    with torch.no_grad():
        attn.attn_impl = "reference"
        want = attn(x)
        attn.attn_impl = "flex"
        if flex_unavailable_reason(x, needs_grad=False, dropout_p=0.0) is not None:
            pytest.skip(flex_unavailable_reason(x, needs_grad=False, dropout_p=0.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex warns that it is unfused
            got = attn(x)
    assert rel_err(got, want) < 1e-5
    if reason is not None:
        pytest.skip(f"flex gradients not checked: {reason}")
    for got_t, want_t in zip(run(attn, x, "flex"), run(attn, x, "reference")):
        assert rel_err(got_t, want_t) < 1e-5


def test_flex_falls_back_with_a_reason_when_it_cannot_run():
    attn = make_attention(impl="flex").float()
    x = torch.randn(2, 10, 32, requires_grad=True)
    if flex_unavailable_reason(x, needs_grad=True, dropout_p=0.0) is None:
        pytest.skip("flex supports gradients on this device: nothing to fall back from")
    with pytest.warns(UserWarning, match="attn_impl='flex' falls back to SDPA: "):
        out = attn(x)
    out.sum().backward()
    assert attn.relative_position_bias.relative_position_bias_table.grad is not None


def per_window_reference(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Windowed attention written as loops over windows, with Swin's shifted-window rule spelt out:
    after rolling by -shift, two tokens of a window attend to each other iff they wrapped around alike."""
    (H, W), (wh, ww), (sy, sx) = attn.grid_size, attn.window_size, attn.shift_size
    B, N, C = x.shape
    grid = torch.roll(x.view(B, H, W, C), shifts=(-sy, -sx), dims=(1, 2))
    wrapped_y = torch.arange(H) >= H - sy if sy else torch.zeros(H, dtype=torch.bool)
    wrapped_x = torch.arange(W) >= W - sx if sx else torch.zeros(W, dtype=torch.bool)
    # (nh, n, n) for one window, or none
    bias = attn.relative_position_bias() if hasattr(attn, "relative_position_bias") else torch.zeros(())
    out = torch.zeros_like(grid)
    nh, hd = attn.num_heads, attn.head_dim
    for y0 in range(0, H, wh):
        for x0 in range(0, W, ww):
            tokens = grid[:, y0 : y0 + wh, x0 : x0 + ww].reshape(B, wh * ww, C)
            q, k, v = attn.qkv(tokens).view(B, -1, 3, nh, hd).permute(2, 0, 3, 1, 4)
            logits = (q @ k.transpose(-2, -1)) * attn.scale + bias
            wy = wrapped_y[y0 : y0 + wh, None].expand(wh, ww).reshape(-1)
            wx = wrapped_x[None, x0 : x0 + ww].expand(wh, ww).reshape(-1)
            allowed = (wy[:, None] == wy[None, :]) & (wx[:, None] == wx[None, :])
            logits = logits.masked_fill(~allowed, float("-inf"))
            o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, wh * ww, -1)
            out[:, y0 : y0 + wh, x0 : x0 + ww] = attn.proj(o).view(B, wh, ww, C)
    return torch.roll(out, shifts=(sy, sx), dims=(1, 2)).reshape(B, N, C)


@pytest.mark.parametrize("bias", [True, False])  # False: the no-RPB row of a local model
@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("impl", ["reference", "sdpa", "flex"])
def test_local_attention_matches_per_window_loop(shift, impl, bias):
    attn = make_attention(impl=impl, window=(4, 4), grid=(8, 8), class_token=False, mode="local", shift=shift,
                          bias=bias).float()  # fmt: skip
    x = torch.randn(2, 64, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is unfused
        assert rel_err(attn(x), per_window_reference(attn, x)) < 1e-5
    assert attn.shift_size == (shift, shift) and hasattr(attn, "relative_position_bias") is bias


def test_local_attention_without_a_bias_trains_and_stays_local():
    attn = make_attention(window=(2, 2), grid=(4, 4), class_token=False, mode="local", shift=1, bias=False)
    x = torch.randn(1, 16, 32, dtype=torch.float64, requires_grad=True)
    attn(x)[0, 5].sum().backward()
    # shifted by (1, 1): token (1, 1) shares its window with (1, 2), (2, 1), (2, 2) and nobody else
    assert (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist() == [5, 6, 9, 10]
    assert attn.qkv.weight.grad.abs().sum() > 0


FAKE = dict(has_bias=True, bias_requires_grad=True, inputs_require_grad=True, grad_enabled=True)


@pytest.mark.parametrize(
    ("version", "device", "options", "expected"),
    [
        # CUDA, a learnable bias in training: flex where its backward carries the bias gradient (2.6)
        ("2.11.0+cu130", "cuda", FAKE, "flex"),
        ("2.6.0", "cuda", FAKE, "flex"),
        ("2.5.1", "cuda", FAKE, "sdpa"),  # flex without the gradient of captured tensors: SDPA's kernel has it
        ("2.5.1", "cuda", {**FAKE, "grad_enabled": False}, "flex"),  # no gradient needed: flex's forward
        ("2.4.1", "cuda", FAKE, "sdpa"),  # no flex at all
        ("2.0.1", "cuda", FAKE, "reference"),  # neither: SDPA without the bias gradient
        ("2.11.0", "cuda", {**FAKE, "dropout": True}, "sdpa"),  # flex has no attention dropout
        ("2.11.0", "cuda", {**FAKE, "has_bias": False, "bias_requires_grad": False}, "sdpa"),  # flash attention
        ("2.9.1", "cuda", {**FAKE, "head_dim": 24}, "sdpa"),  # the guide's heads of 24: flex kernels since 2.10
        ("2.10.0", "cuda", {**FAKE, "head_dim": 24}, "flex"),
        ("2.9.1", "cuda", {**FAKE, "head_dim": 64}, "flex"),
        # CPU: today's measured rule
        ("2.13.0+cpu", "cpu", FAKE, "reference"),  # SDPA's fused CPU kernel has no mask gradient
        ("2.13.0+cpu", "cpu", {**FAKE, "grad_enabled": False}, "sdpa"),
        ("2.13.0+cpu", "cpu", {**FAKE, "bias_requires_grad": False}, "sdpa"),  # a frozen table
        ("2.13.0+cpu", "cpu", {**FAKE, "bias_requires_grad": False, "half_precision": True}, "reference"),
        ("2.13.0+cpu", "mps", {**FAKE, "grad_enabled": False}, "sdpa"),
    ],
)
def test_auto_picks_its_path_by_rule(version, device, options, expected):
    assert select_attn_impl(version, device, **options) == expected


def test_auto_takes_the_selected_path(monkeypatch):
    import rpb.layers.attention as attention

    attn = make_attention(impl="auto").float()
    picked = []
    monkeypatch.setattr(attention, "select_attn_impl", lambda *a, **k: picked.append((a, k)) or "reference")
    attn(torch.randn(2, 10, 32))
    (version, device), options = picked[0]
    assert (version, device) == (torch.__version__, "cpu")
    assert options == dict(has_bias=True, bias_requires_grad=True, inputs_require_grad=True, grad_enabled=True,
                           half_precision=False, dropout=False, head_dim=8)  # fmt: skip


def test_local_attention_is_local():
    attn = make_attention(window=(2, 2), grid=(4, 4), class_token=False, mode="local")
    x = torch.randn(1, 16, 32, dtype=torch.float64, requires_grad=True)
    attn(x)[0, 0].sum().backward()
    touched = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == [0, 1, 4, 5]  # token (0, 0) sees only its own 2x2 window


def test_shift_is_dropped_when_the_window_covers_the_grid():
    attn = make_attention(window=(4, 4), grid=(4, 4), class_token=False, mode="local", shift=2)
    assert attn.shift_size == (0, 0) and not hasattr(attn, "attn_mask")


@pytest.mark.parametrize("impl", ["reference", "sdpa", "flex"])
def test_attention_dropout_works_on_every_path(impl):
    attn = make_attention(impl=impl, attn_drop=0.5).float()
    x = torch.randn(2, 10, 32)
    attn.eval()
    with torch.no_grad():
        clean = attn(x)
    attn.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex falls back to SDPA for dropout, with a warning
        torch.manual_seed(1)
        a = attn(x)
        torch.manual_seed(1)
        b = attn(x)
        c = attn(x)
    assert torch.equal(a, b)  # dropout follows the RNG
    assert not torch.allclose(a, clean, atol=1e-4) and not torch.allclose(a, c, atol=1e-4)


def test_unknown_attn_impl_and_head_mismatch_raise():
    with pytest.raises(
        ValueError, match="attn_impl='xformers' is not allowed: choose one of auto, reference, sdpa, flex"
    ):
        Attention(32, 4, attn_impl="xformers")
    with pytest.raises(ValueError, match="num_heads=5 does not divide embed_dim=32: choose one of 1, 2, 4, 8, 16"):
        Attention(32, 5)
    with pytest.raises(ValueError, match="make rpb_kwargs num_heads equal num_heads"):
        Attention(32, 4, rel_pos_bias=RelativePositionBias(2, (3, 3)))
    with pytest.raises(ValueError, match=r"shift_size=1 shifts windows: set window_size \(and grid_size\) too"):
        Attention(32, 4, shift_size=1)
    with pytest.raises(ValueError, match=r"covers 17 tokens but a 2x2 window has 4: build it over one window"):
        Attention(32, 4, rel_pos_bias=RelativePositionBias(4, 2, class_token=True, grid_size=(4, 4)),
                  grid_size=(4, 4), window_size=2)  # fmt: skip
    with pytest.raises(ValueError, match=r"window_mode='local' needs window_size=3 to tile the 4x4 token grid"):
        Attention(32, 4, grid_size=(4, 4), window_size=3)


def test_auto_path_matches_reference_in_training_and_eval(monkeypatch):
    attn = make_attention(impl="auto").float()
    x = torch.randn(2, 10, 32)
    sdpa_calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
    auto = run(attn, x, "auto")
    # CPU training with a bias that needs a gradient takes the reference path (the fused kernel has no mask grad)
    assert sdpa_calls == []
    ref = run(attn, x, "reference")
    for got, want in zip(auto, ref):
        assert rel_err(got, want) < 1e-5
    with torch.no_grad():
        attn.attn_impl = "auto"
        assert rel_err(attn(x), ref[0]) < 1e-5
    assert sdpa_calls == [1]  # outside autograd: SDPA


@pytest.mark.parametrize(
    ("window", "grid", "shift", "expected_shift"),
    [
        ((7, 1), (14, 14), (3, 0), (3, 0)),  # a side of 1: w // 2 = 0 along it (Swin's shift for a 7x1 window)
        ((1, 7), (14, 14), (0, 3), (0, 3)),
        ((7, 1), (7, 7), (3, 0), (0, 0)),  # the window covers the whole height: no shift there (timm's rule)
        ((4, 2), (8, 8), (2, 1), (2, 1)),  # not square
    ],
)
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_shifted_windows_with_a_side_of_one_build_and_match_the_loop(window, grid, shift, expected_shift, impl):
    attn = make_attention(impl=impl, window=window, grid=grid, class_token=False, mode="local", shift=shift)
    assert attn.shift_size == expected_shift
    x = torch.randn(2, grid[0] * grid[1], 32, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(attn(x), per_window_reference(attn, x)) < 1e-10
