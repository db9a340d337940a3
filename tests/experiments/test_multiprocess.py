"""The same training on 2 CPU processes (gloo, `accelerate launch`) equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.config import compose_config
from experiments.train import train

REPO = Path(__file__).resolve().parents[2]
# Comparable runs: no dropout (per-rank randomness), the shuffle order depends on the seed and epoch only
# (accelerate's seedable sampler), the augmentation on the seed, epoch and sample only (experiments.data.
# EpochSeededDataset: alike whichever rank or worker fetches it), the same global batch (16 = 2 x 8), and SGD:
# AdamW's normalised update would turn last-bit differences of near-zero gradients (allreduce sums in another order)
# into lr-sized steps. Validation is the full set, unevenly split, so gather_for_metrics must drop the padded samples.
COMMON = [
    "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.head_dim=null",
    "model.drop_rate=0", "model.attn_drop_rate=0", "data.augment=false", "optim=sgd", "optim.lr=0.05",
    "trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=2", "trainer.cpu=true",
    "trainer.progress_bar=false", "tracker=none",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# The random crop, drawn in persistent workers, too.
AUGMENTED = ["data.augment=true", "data.num_workers=2", "data.persistent_workers=true"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("data", [[], AUGMENTED], ids=["plain", "augmented-in-workers"])
def test_two_process_training_equals_one_process(tmp_path, data):
    two = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
        "--dynamo_backend", "no", str(REPO / "tests" / "experiments" / "mp_train.py"),
        *COMMON, *data, "data.batch_size=8", f"run_dir={two}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one = tmp_path / "one"
    single = train(compose_config([*COMMON, *data, "data.batch_size=16", f"run_dir={one}"]))
    assert single["status"] == "completed"

    rank0, rank1 = torch.load(two / "rank0.pt", weights_only=True), torch.load(two / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP keeps the ranks bitwise in step
    reference = load_file(one / "checkpoints" / "last" / "model.safetensors")
    for key, value in reference.items():
        assert torch.allclose(rank0[key], value, rtol=1e-4, atol=1e-5), key

    a, b = _records(one), _records(two)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["val_accuracy"] == pytest.approx(single["val_accuracy"])
