"""What every GPU test module shares: its marks (`gpu`, skipped without CUDA) and a relative error."""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()

# `pytest -m gpu` selects these (.ci/gpu-check runs them on the GPU machine); CI collects and skips them.
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run .ci/gpu-check on a GPU)")]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, computed in float64."""
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-12))
