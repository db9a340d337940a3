"""Heatmaps of relative position biases (matplotlib, Agg canvas: headless, no pyplot state).

One panel per head on a diverging colormap centred on zero (symmetric limits shared by the heads of a block),
offsets (dx, dy) on the axes. Figures are never registered with pyplot (nothing to close, nothing leaks).
Training draws its per-epoch tracker images with numpy (`experiments.tracking.bias_heatmap_images`); these
labelled figures are written at the end of a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from .inspect import offset_map, relative_position_biases

CMAP = "RdBu_r"


def _panel_grid(num_heads: int, max_cols: int = 6) -> tuple[int, int]:
    cols = min(num_heads, max_cols)
    return math.ceil(num_heads / cols), cols


def _heads_figure(
    maps: np.ndarray, extent: list[float] | None, xlabel: str, ylabel: str, title: str, panel_in: float, dpi: int
) -> Figure:
    """One imshow panel per head of `maps` (nh, H, W), one shared colorbar centred on zero."""
    nh = maps.shape[0]
    rows, cols = _panel_grid(nh)
    aspect_hw = maps.shape[1] / maps.shape[2]
    fig = Figure(figsize=(panel_in * cols + 0.9, panel_in * max(aspect_hw, 0.3) * rows + 1.1), dpi=dpi)
    FigureCanvasAgg(fig)
    limit = float(np.abs(maps).max()) or 1e-8  # symmetric limits: white is exactly zero bias
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(
        left=0.6 / fig.get_figwidth(),
        right=0.88,
        bottom=0.45 / fig.get_figheight(),
        top=1 - 0.55 / fig.get_figheight(),
        wspace=0.15,
        hspace=0.35,
    )
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= nh:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            maps[h],
            cmap=CMAP,
            vmin=-limit,
            vmax=limit,
            extent=extent,
            interpolation="nearest",
            aspect="auto" if maps.shape[1] == 1 else "equal",
        )
        ax.set_title(f"head {h}", fontsize=8, y=1.0, pad=3)  # a fixed y skips matplotlib's costly auto-placement
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        if maps.shape[1] == 1:  # 1d offsets: a single row, no dy axis
            ax.set_yticks([])
        if h % cols == 0:
            ax.set_ylabel(ylabel, fontsize=7)
        if h // cols == rows - 1:
            ax.set_xlabel(xlabel, fontsize=7)
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.2, 0.015, 0.6))).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_bias_offset_map(
    offset_map: torch.Tensor | np.ndarray,
    *,
    block: int | None = None,
    window_size: tuple[int, int] | int | None = None,
    panel_in: float = 1.8,
    dpi: int = 100,
) -> Figure:
    """Figure of an offset map (nh, 2Wh-1, 2Ww-1) (1d: (nh, 1, 2W-1)); axes are the offsets dx and dy."""
    maps = torch.as_tensor(offset_map).detach().float().cpu().numpy()
    if maps.ndim == 2:
        maps = maps[None]
    _, rows, cols = maps.shape
    ry, rx = (rows - 1) // 2, (cols - 1) // 2
    extent = [-rx - 0.5, rx + 0.5, ry + 0.5, -ry - 0.5]  # pixel centres land on integer offsets
    if window_size is None:
        window_size = (ry + 1, rx + 1) if rows > 1 else rx + 1
    title = _offset_title(block, window_size)
    ylabel = "dy (query − key)" if rows > 1 else ""
    return _heads_figure(maps, extent, "dx (query − key)", ylabel, title, panel_in, dpi)


def _offset_title(block: int | None, window_size: tuple[int, int] | int) -> str:
    window = "x".join(str(w) for w in window_size) if isinstance(window_size, tuple) else str(window_size)
    return ("" if block is None else f"block {block} · ") + f"relative position bias, window {window}"


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a figure drawn on its Agg canvas."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_bias_heatmaps(model: nn.Module, dpi: int = 60) -> dict[int, np.ndarray]:
    """block -> (H, W, 3) uint8 image of `plot_bias_offset_map` with all heads of that block's bias."""
    return {
        i: figure_to_rgb(plot_bias_offset_map(offset_map(m), block=i, window_size=m.window_size, dpi=dpi))
        for i, m in relative_position_biases(model)
    }


def save_bias_heatmaps(model: nn.Module, out_dir: str | Path, dpi: int = 100) -> list[Path]:
    """Write out_dir/block_{i:02d}.png for every block with a bias; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in relative_position_biases(model):
        fig = plot_bias_offset_map(offset_map(m), block=i, window_size=m.window_size, dpi=dpi)
        path = out / f"block_{i:02d}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def visualize_relative_position_bias(
    bias: torch.Tensor | np.ndarray, save_path: str | Path | None = None, kind: str = "auto", dpi: int = 100
) -> Figure:
    """The training guide's helper: heatmaps of `bias`, saved to `save_path` (parent folders created) if given.

    Args:
        bias: (nh, N, N) as returned by `block.attn.relative_position_bias()`, or an offset map.
        kind: "matrix" (query/key token axes), "offset" (dx/dy axes), or "auto": a square (nh, N, N) is a
            matrix, anything else an offset map. Pass kind="offset" for the square map of a square window.
    """
    if kind not in ("auto", "matrix", "offset"):
        raise ValueError(f"kind must be 'auto', 'matrix' or 'offset', got {kind!r}.")
    arr = torch.as_tensor(bias).detach().float().cpu()
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"bias must have shape (num_heads, N, N) or (num_heads, H, W), got {tuple(arr.shape)}.")
    if kind == "offset" or (kind == "auto" and arr.shape[1] != arr.shape[2]):
        fig = plot_bias_offset_map(arr, dpi=dpi)
    else:
        n = arr.shape[-1]
        fig = _heads_figure(
            arr.numpy(), None, "key token", "query token", f"relative position bias ({n}x{n})", 1.8, dpi
        )
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig
