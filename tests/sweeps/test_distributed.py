"""Two processes per trial (torchrun, gloo on CPU): rank 0 owns the study, the prune decision reaches both ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.storage import build_storage
from tests.sweeps.helpers import REPO, sweep_overrides

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

OVERRIDES = (
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.head_dim=null",
    "trainer.cpu=true",
    "trainer.epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "tracker=none",
    "sweep.n_trials=2",
    "sweep.metric=val_loss",
    "sweep.direction=minimize",
    "sweep.enqueue_defaults=false",
    "sweep.enqueue=[{optim.lr: 1.0e-6}, {optim.lr: 0.05}]",  # the second one is worse after epoch 1: pruned
    "sweep.pruner.n_startup_trials=1",
    "sweep.pruner.n_warmup_steps=0",
    "~sweep.space.optim.weight_decay",
    "~sweep.space.model",
    "sweep.space.optim.lr={type: float, low: 1.0e-6, high: 0.1, log: true}",
)


def test_two_ranks_follow_rank_0_and_prune_together(tmp_path, compose_sweep):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, "-m", "sweeps.cli", *sweep_overrides(tmp_path, *OVERRIDES, fake=False)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    cfg = compose_sweep(*OVERRIDES, fake=False)
    study = optuna.load_study(study_name="rpb-sweep", storage=build_storage(cfg.sweep, heartbeat=False))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in trials] == [2, 1]
    # Rank 0 prints one line per epoch: trial 1 stopped after its first. DDP needs both ranks in every step, so
    # an exit status of 0 without a hang means rank 1 trained the same epochs and stopped with rank 0.
    assert out.count("epoch 1/2") == 2 and out.count("epoch 2/2") == 1, out[-4000:]
    assert "Traceback" not in out
