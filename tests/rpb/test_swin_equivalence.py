"""Our pre-norm block with local windows equals timm's SwinTransformerBlock in float64, values and gradients, for
every window shape the options accept: square or not, shifted or not, a side of 1, a side equal to the grid."""

import os

import pytest
import torch

from rpb import RelativePositionBias
from rpb.options import swin_shift
from rpb.vit import Block

os.environ.setdefault("HF_HUB_OFFLINE", "1")
swin = pytest.importorskip("timm.models.swin_transformer")

DIM, HEADS = 16, 2
CASES = [  # (grid, window): every case runs unshifted and with Swin's shift (window // 2 per side)
    ((4, 4), (2, 2)),  # square
    ((4, 6), (2, 3)),  # not square, on a grid that is not square either
    ((6, 6), (3, 1)),  # a side of 1: no shift along it
    ((4, 4), (4, 2)),  # a side equal to the grid: no shift along it (timm's rule)
    ((4, 4), (4, 4)),  # one window covers the grid: never shifted
]


def _pair(grid, window, shifted):
    """Our Block and timm's SwinTransformerBlock with the same weights, in float64."""
    torch.manual_seed(0)
    shift = swin_shift(window) if shifted else (0, 0)
    theirs = swin.SwinTransformerBlock(DIM, grid, num_heads=HEADS, window_size=window, shift_size=shift).double()
    bias = RelativePositionBias(HEADS, window, init_std=0.5)  # over one window
    ours = Block(DIM, HEADS, rel_pos_bias=bias, grid_size=grid, window_size=window, shift_size=shift).double()
    with torch.no_grad():
        theirs.attn.relative_position_bias_table.normal_(std=0.5)
        for p in theirs.parameters():  # non-trivial norms and biases, so that every parameter matters
            p.add_(0.1 * torch.randn_like(p))
    state = {k.replace("attn.relative_position_bias_table", "attn.relative_position_bias.relative_position_bias_table"): v
             for k, v in theirs.state_dict().items()}  # fmt: skip
    ours.load_state_dict(state)
    return ours, theirs


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(("grid", "window"), CASES)
def test_block_equals_timm_swin_block(grid, window, shifted, impl):
    ours, theirs = _pair(grid, window, shifted)
    ours.attn.attn_impl = impl
    assert ours.attn.shift_size == tuple(theirs.shift_size) and ours.attn.window_size == tuple(theirs.window_size)
    x = torch.randn(2, *grid, DIM, dtype=torch.float64)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours = ours(x_ours.flatten(1, 2))
    out_theirs = theirs(x_theirs).flatten(1, 2)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out_ours)
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-12, atol=1e-12)
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = grads[name.replace("attn.relative_position_bias.", "attn.")].grad
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12, msg=name)
