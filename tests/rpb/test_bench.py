"""experiments.bench_model's --gpu flag on a machine without CUDA, and the order of its GPU variants."""

import pytest
import torch

from experiments import bench_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: --gpu would measure")
def test_gpu_flag_without_cuda_says_so_in_one_line(capsys, tmp_path):
    assert bench_model.main(["--gpu", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert out == "bench_model --gpu: no CUDA device is visible to torch; nothing to measure.\n"
    assert not (tmp_path / "b.json").exists()


def test_gpu_variants_put_the_comparison_first():
    order = bench_model.gpu_variants()
    # ViT-B/16 first: timm and ours on the path auto picks on CUDA, eager, before anything else
    assert order[:2] == [("vit_b16", "timm", "timm", False), ("vit_b16", "ours", "flex", False)]
    paths = {(key, impl, compiled) for key, name, impl, compiled in order if name == "ours"}
    assert paths == {(k, i, c) for k in ("vit_b16", "guide") for i in ("reference", "sdpa", "flex") for c in (0, 1)}
    assert len(order) == len(set(order)) == 16
