"""Training on CUDA through the project's own `train()`: fp16 with Accelerate's gradient scaler (progress, and an
overflowed step skipped), `torch.compile` of the whole model, and a checkpoint written on the GPU read on a CPU.

Each run is the tiny digits config of tests/conftest.py (width 32, depth 2), a few epochs: seconds on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tests.gpu.helpers import GPU_MARKS

pytestmark = GPU_MARKS
REPO = Path(__file__).resolve().parents[2]
# 3 short epochs at a constant lr (the default warmup would spend them warming up): the loss falls on digits.
EPOCHS = ["trainer.epochs=3", "trainer.limit_train_batches=40", "trainer.limit_val_batches=4", "schedule=constant",
          "optim.lr=3e-3"]  # fmt: skip


def _epochs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _made_progress(run_dir: Path) -> None:
    records = _epochs(run_dir)
    losses = [r["train_loss"] for r in records]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], f"the train loss did not fall over {len(losses)} epochs: {losses}"


def test_fp16_with_the_grad_scaler_survives_an_overflowed_step(compose, monkeypatch, tmp_path):
    """An inf gradient in step 5 (as an fp16 overflow gives): the scaler skips that optimizer step and halves
    its scale (2**16 -> 2**15, or lower if a step overflowed by itself; its growth interval of 2000 steps is never
    reached here), the weights stay finite, and the run completes with a falling loss."""
    import experiments.train as train_module

    build = train_module.build_model
    backward_calls = {"n": 0}

    def with_one_overflow(cfg):
        model = build(cfg)

        def overflow_once(grad):
            backward_calls["n"] += 1
            return grad * math.inf if backward_calls["n"] == 5 else grad

        model.head.weight.register_hook(overflow_once)
        return model

    monkeypatch.setattr(train_module, "build_model", with_one_overflow)
    cfg = compose(["trainer.mixed_precision=fp16", *EPOCHS])
    result = train_module.train(cfg)
    run_dir = Path(cfg.run_dir)
    assert result["status"] == "completed", result["reason"]
    assert backward_calls["n"] >= 5
    scale = torch.load(run_dir / "checkpoints" / "last" / "scaler.pt", weights_only=True)["scale"]
    assert scale <= 2.0**15, f"scale {scale}: the overflowed step was not skipped (2**16 is never halved)"
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(t).all() for t in best["model"].values() if t.is_floating_point())
    _made_progress(run_dir)


def test_torch_compile_of_the_whole_model_trains(compose, tmp_path):
    from experiments.train import train

    cfg = compose(["trainer.compile=true", "trainer.mixed_precision=bf16", *EPOCHS])
    result = train(cfg)
    assert result["status"] == "completed", result["reason"]
    _made_progress(Path(cfg.run_dir))
    # The checkpoint holds the model's own names, not torch.compile's `_orig_mod.` wrapper prefix.
    best = torch.load(Path(cfg.run_dir) / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert not [k for k in best["model"] if "_orig_mod" in k]


def test_a_checkpoint_written_on_the_gpu_loads_on_a_cpu(compose, monkeypatch, tmp_path):
    """best.pt and the last checkpoint's model.safetensors from a CUDA run load in a process that sees no GPU,
    and the model there gives the GPU's logits (fp32, TF32 off on both sides)."""
    from experiments.checkpoint import load_best
    from experiments.config import build_model
    from experiments.train import train

    cfg = compose(["trainer.epochs=1", "trainer.limit_train_batches=4"])
    assert train(cfg)["status"] == "completed"
    run_dir = Path(cfg.run_dir)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    images = torch.randn(4, cfg.data.in_channels, cfg.data.img_size, cfg.data.img_size)
    model = build_model(cfg)
    model.load_state_dict(load_best(run_dir / "checkpoints" / "best.pt")["model"])
    with torch.no_grad():
        gpu_logits = model.cuda().eval()(images.cuda()).cpu()
    torch.save(images, tmp_path / "images.pt")

    script = textwrap.dedent(f"""
        import torch
        from omegaconf import OmegaConf
        from safetensors.torch import load_file
        from experiments.checkpoint import load_best
        from experiments.config import build_model
        assert not torch.cuda.is_available()
        best = load_best({str(run_dir / "checkpoints" / "best.pt")!r})
        assert all(t.device.type == "cpu" for t in best["model"].values())
        model = build_model(OmegaConf.create(best["config"]))
        model.load_state_dict(best["model"])
        last = load_file({str(run_dir / "checkpoints" / "last" / "model.safetensors")!r}, device="cpu")
        model.load_state_dict(last)  # the same epoch: the same weights
        with torch.no_grad():
            logits = model.eval()(torch.load({str(tmp_path / "images.pt")!r}))
        torch.save(logits, {str(tmp_path / "cpu_logits.pt")!r})
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cpu_logits = torch.load(tmp_path / "cpu_logits.pt")
    torch.testing.assert_close(cpu_logits, gpu_logits, rtol=1e-4, atol=1e-4)
