"""Every attention path agrees with the written-out reference on CUDA: outputs, input gradients, bias-table
gradients, in float32 and under bf16 autocast (the way training runs it: fp32 weights, bf16 matmuls).

The ground truth is the reference path in float64 on the same GPU with the same weights and inputs. Tolerances
(relative error, Frobenius norm):
- float32 (TF32 off): 1e-4 for every path and tensor (observed ~1e-6; the fused kernels reorder the sums);
- bf16 autocast: the path's error at most 3x the bf16 reference's own error plus 2e-3, and below 5e-2. bf16 keeps
  8 bits of mantissa (~4e-3 per rounding), so a path is held to the reference's accuracy, not to float64's.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from rpb import Attention, RelativePositionBias
from tests.gpu.helpers import GPU_MARKS, rel_err

pytestmark = GPU_MARKS

PATHS = ("reference", "sdpa", "flex", "auto")
CASES = {  # token grid 8x8 (N=64, +1 with the class token), width 64, 4 heads of 16
    "global": dict(window=(8, 8), class_token=True),
    "clip": dict(window=(3, 5), class_token=True),
    "local-shifted": dict(window=(4, 4), class_token=False, mode="local", shift=2),
}
# Each (shape, dtype) of the flex path costs a compilation (~10-30 s): it runs on the clipped and the windowed
# case; the global case is the clipped one with a window that covers the grid (the same code).
PARAMS = [(case, path) for case in CASES for path in PATHS if not (path == "flex" and case == "global")]
FP32_TOL = 1e-4
BF16_FACTOR, BF16_SLACK, BF16_CAP = 3.0, 2e-3, 5e-2


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def make(case: dict) -> tuple[Attention, torch.Tensor]:
    """The layer of `case` (fp32, on the GPU, a bias table of std 0.5) and a (4, N, 64) input."""
    torch.manual_seed(0)
    grid = (8, 8)
    if case.get("mode") == "local":  # Swin windows: the bias covers one window, the layer owns the windows
        rpb = RelativePositionBias(4, case["window"], init_std=0.5)
        windows = dict(grid_size=grid, window_size=case["window"], shift_size=case.get("shift", 0))
    else:
        rpb = RelativePositionBias(4, case["window"], class_token=case["class_token"], grid_size=grid, init_std=0.5)
        windows = {}
    attn = Attention(64, 4, rel_pos_bias=rpb, **windows).cuda()
    x = torch.randn(4, grid[0] * grid[1] + case["class_token"], 64, device="cuda")
    return attn, x


def run(attn: Attention, x: torch.Tensor, path: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(output, d loss/d x, d loss/d table) of `path`; float64 runs the whole layer in float64, bfloat16 runs
    fp32 weights under CUDA bf16 autocast. A flex fallback to SDPA is an error here: CUDA must run FlexAttention."""
    attn.attn_impl = path
    attn.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="attn_impl='flex' falls back")
        with autocast:
            out = attn(x)
        weights = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=torch.float64).view_as(out)
        (out.double() * weights).sum().backward()
    table = attn.relative_position_bias.relative_position_bias_table.grad
    return out.detach().float(), x.grad.float(), table.float()


@pytest.mark.parametrize(("case", "path"), PARAMS)
def test_path_matches_the_reference_in_float32(case, path):
    attn, x = make(CASES[case])
    want = run(attn.double(), x.double(), "reference", torch.float64)
    got = run(attn.float(), x, path, torch.float32)
    for name, g, w in zip(("output", "input grad", "table grad"), got, want):
        assert rel_err(g, w) < FP32_TOL, f"{path} {name}: relative error {rel_err(g, w):.2e} >= {FP32_TOL}"


@pytest.mark.parametrize(("case", "path"), PARAMS)
def test_path_matches_the_reference_under_bf16_autocast(case, path):
    attn, x = make(CASES[case])
    want = run(attn.double(), x.double(), "reference", torch.float64)
    attn.float()
    baseline = run(attn, x, "reference", torch.bfloat16)
    got = run(attn, x, path, torch.bfloat16)
    assert got[0].shape == want[0].shape
    for name, g, b, w in zip(("output", "input grad", "table grad"), got, baseline, want):
        err, ref_err = rel_err(g, w), rel_err(b, w)
        limit = min(BF16_FACTOR * ref_err + BF16_SLACK, BF16_CAP)
        assert err < limit, f"{path} {name}: relative error {err:.2e} >= {limit:.2e} (bf16 reference: {ref_err:.2e})"


def test_flex_runs_compiled_on_cuda_with_a_bias_gradient():
    """The flex path must not fall back on CUDA (run() turns the fallback warning into an error) and its bias
    table must get a gradient that is not all zeros."""
    attn, x = make(CASES["clip"])
    _, _, table_grad = run(attn, x, "flex", torch.float32)
    assert torch.isfinite(table_grad).all() and table_grad.abs().sum() > 0
