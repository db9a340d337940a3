"""Index functions, the bias module and table resizing."""

import pytest
import torch

from rpb import RelativePositionBias, gen_relative_position_index, resize_relative_position_bias_table
from rpb.layers.relative_position import gen_relative_position_index_1d


def test_index_2x2_window_by_hand():
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    assert gen_relative_position_index((2, 2)).tolist() == expected


def test_index_formula_on_rectangular_window():
    wh, ww = 3, 4
    index = gen_relative_position_index((wh, ww))
    coords = [(y, x) for y in range(wh) for x in range(ww)]
    for i, (qy, qx) in enumerate(coords):
        for j, (ky, kx) in enumerate(coords):
            assert index[i, j] == (qy - ky + wh - 1) * (2 * ww - 1) + (qx - kx + ww - 1)
    assert index.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def test_class_token_entries():
    index = gen_relative_position_index((2, 2), class_token=True)
    assert index.shape == (5, 5)
    assert index[0, 1:].tolist() == [9] * 4  # class to token
    assert index[1:, 0].tolist() == [10] * 4  # token to class
    assert index[0, 0] == 11  # class to class
    assert index[1:, 1:].tolist() == gen_relative_position_index((2, 2)).tolist()


def test_index_1d_by_hand():
    assert gen_relative_position_index_1d(3).tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]
    # clipped: a window of 2 on 4 positions keeps offsets in [-1, 1]
    assert gen_relative_position_index_1d(2, seq_len=4)[0].tolist() == [1, 0, 0, 0]
    assert gen_relative_position_index_1d(2, seq_len=4, class_token=True)[0].tolist() == [5, 3, 3, 3, 3]


def test_clip_mode_clamps_offsets_to_table_edge():
    index = gen_relative_position_index((2, 2), grid_size=(3, 3))
    assert index.shape == (9, 9)
    # query (0, 0) and key (2, 2): offset (-2, -2) clamps to (-1, -1), row 0 of the table
    assert index[0, 8] == 0
    assert index[8, 0] == 8  # offset (2, 2) clamps to (1, 1), the last offset row
    assert index.max() == 8


@pytest.mark.parametrize(
    ("kwargs", "rows", "n"),
    [
        (dict(window_size=(7, 7)), 169, 49),
        (dict(window_size=(3, 5)), 45, 15),
        (dict(window_size=(7, 7), class_token=True), 172, 50),
        (dict(window_size=7, bias_type="1d"), 13, 7),
        (dict(window_size=(2, 3), bias_type="1d", class_token=True), 14, 7),
        (dict(window_size=(3, 3), grid_size=(6, 6)), 25, 36),
        (dict(window_size=(3, 3), grid_size=(6, 6), mode="local"), 25, 9),
    ],
)
def test_table_and_bias_shapes(kwargs, rows, n):
    rpb = RelativePositionBias(num_heads=3, **kwargs)
    assert rpb.relative_position_bias_table.shape == (rows, 3)
    bias = rpb()
    assert bias.shape == (3, n, n)
    # every entry of the bias is a table entry looked up through the index
    index = rpb.relative_position_index
    assert torch.equal(bias, rpb.relative_position_bias_table[index].permute(2, 0, 1))


def test_init_std_zero_gives_zeros_and_std_is_used():
    assert RelativePositionBias(2, (4, 4), init_std=0.0)().abs().sum() == 0
    table = RelativePositionBias(4, (14, 14), init_std=0.02).relative_position_bias_table
    assert 0.015 < table.std() < 0.025 and table.abs().max() <= 0.04 + 1e-6  # truncated at 2 std


def test_index_is_non_persistent_and_state_dict_round_trips():
    a = RelativePositionBias(2, (3, 3), class_token=True)
    sd = a.state_dict()
    assert list(sd) == ["relative_position_bias_table"]
    b = RelativePositionBias(2, (3, 3), class_token=True)
    b.load_state_dict(sd)
    assert torch.equal(a(), b())


def test_gradient_reaches_table():
    rpb = RelativePositionBias(2, (3, 3), class_token=True)
    (rpb() * torch.randn(2, 10, 10)).sum().backward()
    grad = rpb.relative_position_bias_table.grad
    assert grad is not None and (grad.abs().sum(dim=1) > 0).all()  # every offset and class entry is used


def test_not_learnable_stays_fixed_after_optimizer_step():
    rpb = RelativePositionBias(2, (3, 3), learnable=False)
    other = torch.nn.Parameter(torch.ones(1))
    before = rpb.relative_position_bias_table.clone()
    opt = torch.optim.AdamW([*rpb.parameters(), other], lr=0.1, weight_decay=0.5)
    (rpb().sum() * other).sum().backward()
    opt.step()
    assert not rpb.relative_position_bias_table.requires_grad
    assert torch.equal(rpb.relative_position_bias_table, before)
    assert "relative_position_bias_table" in rpb.state_dict()


def _gathered(rpb: RelativePositionBias) -> torch.Tensor:
    n = rpb.num_tokens
    table = rpb.relative_position_bias_table.detach()
    return table[rpb.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)


def _step(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    (m() ** 2).sum().backward()
    opt.step()


def _ema(m):  # a momentum-teacher update written into the table's storage through .data
    src = torch.randn_like(m.relative_position_bias_table)
    m.relative_position_bias_table.data.mul_(0.5).add_(src, alpha=0.5)


ROUTES = {
    "optimizer step": _step,
    "load_state_dict": lambda m: m.load_state_dict(
        {"relative_position_bias_table": torch.randn_like(m.relative_position_bias_table)}
    ),
    "in place under no_grad": lambda m: torch.no_grad()(lambda: m.relative_position_bias_table.add_(1.0))(),
    "write through .data": lambda m: m.relative_position_bias_table.data.add_(1.0),
    "EMA into .data": _ema,
    "vector_to_parameters": lambda m: torch.nn.utils.vector_to_parameters(
        torch.randn(m.relative_position_bias_table.numel()), m.parameters()
    ),
    "dtype move": lambda m: m.double(),
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("train", [True, False])
def test_the_bias_follows_every_change_of_the_table(route, train):
    """Whatever changes the table, the next forward (train or eval, with or without autograd) uses it."""
    rpb = RelativePositionBias(2, (3, 3), grid_size=(3, 3)).train(train)
    with torch.no_grad():
        before = rpb().clone()
    ROUTES[route](rpb)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            bias = rpb()
        assert torch.equal(bias.detach(), _gathered(rpb)), route
        assert not torch.equal(bias.detach().to(before.dtype), before) or route == "dtype move", route
    with torch.inference_mode():
        assert torch.equal(rpb(), _gathered(rpb))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window_size=(3, 3), bias_type="3d"), "bias_type='3d' is not allowed: choose one of 2d, 1d"),
        (dict(window_size=(4, 4), grid_size=(3, 3)), r"window_size=\(4, 4\) is larger than the 3x3 token grid: use a"),
        (dict(window_size=(2, 2), grid_size=50), "needs a square token grid but the sequence has 50 tokens"),
        (
            dict(window_size=9, bias_type="1d", grid_size=4),
            "window_size=9 spans 9 positions but the sequence has 4 tok",
        ),
        (dict(window_size=2, init_std=-1.0), r"init_std=-1.0 must be a finite number >= 0"),
        (dict(window_size=(0, 2)), r"window_size=\(0, 2\) must be an int, an 'HxW' string or a pair of positive ints"),
        # `mode` is kept for callers that predate windows in the attention layer: its rules still hold
        (dict(window_size=(3, 3), mode="global"), "mode='global' is not allowed: choose one of clip, local"),
        (dict(window_size=(2, 2), grid_size=(5, 5), mode="local"), r"needs window_size=\(2, 2\) to tile the 5x5"),
    ],
)
def test_bad_combinations_raise_one_clear_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelativePositionBias(num_heads=2, **kwargs)


def test_resize_same_size_is_identity():
    table = torch.randn(13 * 13 + 3, 4)
    assert torch.equal(resize_relative_position_bias_table(table, (7, 7), (7, 7), num_extra=3), table)


@pytest.mark.parametrize(("old", "new"), [((7, 7), (13, 13)), ((4, 4), (7, 7)), ((3, 5), (5, 9))])
def test_resize_up_then_down_round_trips(old, new):
    # a smooth table (bias varying slowly with the offset) survives up- and down-sampling
    dy, dx = torch.meshgrid(torch.linspace(-1, 1, 2 * old[0] - 1), torch.linspace(-1, 1, 2 * old[1] - 1), indexing="ij")
    offsets = torch.stack([torch.sin(dy + h) * torch.cos(2 * dx) for h in range(3)], dim=-1).reshape(-1, 3)
    table = torch.cat([offsets, torch.randn(3, 3)])
    up = resize_relative_position_bias_table(table, old, new, num_extra=3)
    assert up.shape == ((2 * new[0] - 1) * (2 * new[1] - 1) + 3, 3)
    assert torch.equal(up[-3:], table[-3:])  # class-token entries carried over
    down = resize_relative_position_bias_table(up, new, old, num_extra=3)
    assert torch.allclose(down, table, atol=1e-4)


def test_resize_1d_keeps_centre_and_edges():
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # linear in the offset
    up = resize_relative_position_bias_table(table, 4, 7, bias_type="1d")
    assert up.shape == (13, 2)
    # align_corners stretches the offset axis (Swin's convention): old offset k lands on new offset 2k (window
    # 4 -> 7: 7 rows -> 13), so the old values sit on every second new row; the rows between are interpolated
    assert torch.allclose(up[::2, 0], table[:, 0], atol=1e-5)
    assert (up[1:, 0] > up[:-1, 0]).all()


def test_resize_refuses_a_wrong_old_window():
    with pytest.raises(ValueError, match="pass the window size the table was trained with"):
        resize_relative_position_bias_table(torch.randn(50, 2), (7, 7), (5, 5))
