"""Bias offset maps, matrices, statistics and heatmap figures."""

import numpy as np
import pytest
import torch

from rpb import bias_matrices, bias_offset_maps, bias_statistics, favoured_offsets
from rpb.inspect import relative_position_biases
from tests.rpb.helpers import tiny


def test_offset_map_places_each_offset_at_dy_dx():
    model = tiny(rpb_kwargs={"window_size": (2, 3)})
    module = model.blocks[1].attn.relative_position_bias
    with torch.no_grad():
        module.relative_position_bias_table.zero_()
        # offset (dy, dx) = (1, -2): row (1 + 1) * 5 + (-2 + 2) = 10
        module.relative_position_bias_table[10, 3] = 7.0
    maps = bias_offset_maps(model)
    assert sorted(maps) == [0, 1] and maps[1].shape == (4, 3, 5)
    assert maps[1][3, 2, 0] == 7.0 and maps[1].abs().sum() == 7.0
    assert favoured_offsets(maps[1], k=1)[3] == [(1, -2, 7.0)]


def test_offset_map_1d_and_matrices():
    model = tiny(rpb_kwargs={"bias_type": "1d", "window_size": 5})
    assert bias_offset_maps(model)[0].shape == (4, 1, 9)
    mats = bias_matrices(model)
    assert mats[0].shape == (4, 17, 17) and not mats[0].requires_grad
    assert torch.equal(mats[1], model.blocks[1].attn.relative_position_bias().detach())


def test_favoured_offsets_orders_by_bias():
    offset_map = torch.zeros(2, 3, 3)
    offset_map[0, 1, 1], offset_map[0, 0, 2], offset_map[0, 2, 0] = 3.0, 2.0, 1.0
    top = favoured_offsets(offset_map, k=3)
    assert top[0] == [(0, 0, 3.0), (-1, 1, 2.0), (1, -1, 1.0)]
    assert len(top[1]) == 3


def test_bias_statistics_keys_and_values():
    model = tiny()
    stats = bias_statistics(model)
    assert len(stats) == 2 * 4 * 4
    maps = bias_offset_maps(model)
    assert stats["block_1/head_2/max"] == pytest.approx(float(maps[1][2].max()))
    assert stats["block_0/head_0/std"] == pytest.approx(float(maps[0][0].std()))
    assert relative_position_biases(tiny(use_relative_position=False)) == []


def test_heatmap_png_is_written_and_not_blank(tmp_path):
    from PIL import Image

    from rpb.plot import save_bias_heatmaps

    paths = save_bias_heatmaps(tiny(rpb_kwargs={"init_std": 0.5}), tmp_path / "bias")
    assert [p.name for p in paths] == ["block_00.png", "block_01.png"]
    pixels = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10
    # the panels use a diverging colormap: both red-ish and blue-ish pixels are present
    assert ((pixels[..., 0] - pixels[..., 2]) > 60).any() and ((pixels[..., 2] - pixels[..., 0]) > 60).any()


def test_render_bias_heatmaps_returns_rgb_uint8():
    from rpb.plot import render_bias_heatmaps

    images = render_bias_heatmaps(tiny())
    assert sorted(images) == [0, 1]
    img = images[0]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 5


def test_plot_figure_has_one_panel_per_head_centred_colormap_and_offset_axes():
    from rpb.plot import plot_bias_offset_map

    offset_map = torch.randn(4, 5, 7) + 2.0  # all-positive-ish values still centre the colormap on zero
    fig = plot_bias_offset_map(offset_map, block=3, window_size=(3, 4))
    panels = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(panels) == 4
    clim = panels[0].images[0].get_clim()
    assert clim[0] == pytest.approx(-clim[1])
    assert "dx" in panels[-1].get_xlabel() and "dy" in panels[0].get_ylabel()
    assert panels[0].get_xlim() == (-3.5, 3.5) and panels[0].get_ylim() == (2.5, -2.5)
    assert fig._suptitle.get_text() == "block 3 · relative position bias, window 3x4"


def test_visualize_relative_position_bias_accepts_matrix_and_offset_map(tmp_path):
    from rpb.plot import visualize_relative_position_bias

    fig = visualize_relative_position_bias(torch.randn(2, 10, 10), tmp_path / "m.png")
    assert fig.axes[0].get_xlabel() == "key token" or fig.axes[1].get_xlabel() == "key token"
    fig = visualize_relative_position_bias(torch.randn(2, 5, 5), tmp_path / "o.png", kind="offset")
    assert "dx" in fig.axes[0].get_xlabel()
    assert (tmp_path / "m.png").stat().st_size > 0 and (tmp_path / "o.png").stat().st_size > 0
    with pytest.raises(ValueError, match="bias must have shape"):
        visualize_relative_position_bias(torch.randn(10))


def test_rpb_import_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, rpb; rpb.VisionTransformer(img_size=8, patch_size=4, depth=1, embed_dim=8, num_heads=2); print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_render_shows_each_blocks_own_bias():
    from rpb.plot import render_bias_heatmaps

    model = tiny(depth=3, rpb_kwargs={"init_std": 0.5})
    first = render_bias_heatmaps(model)
    assert not np.array_equal(first[0], first[1])  # different data and title
    with torch.no_grad():
        model.blocks[2].attn.relative_position_bias.relative_position_bias_table.mul_(-1)
    second = render_bias_heatmaps(model)
    assert np.array_equal(second[0], first[0]) and not np.array_equal(second[2], first[2])
