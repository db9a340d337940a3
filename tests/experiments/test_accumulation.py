"""Gradient accumulation equals the bigger batch: B x K gives the weights of B*K without accumulation.

Short last windows (fewer micro-batches), short last batches (drop_last=False) and several processes included:
each optimizer step must apply the mean gradient over exactly the samples of its window. The references are
plain torch: one SGD step per window on the concatenated samples of that window.

Run as a script (`python -m torch.distributed.run --nproc_per_node 2 <this file> OUT`) this module is one rank of
`test_two_processes_with_uneven_last_windows_equal_the_single_process_big_batch`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from experiments.engine import train_epoch
from experiments.precision import make_accelerator

REPO = Path(__file__).resolve().parents[2]
LR = 0.5


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))  # non-linear: weights of a window matter


def _reference(x: torch.Tensor, y: torch.Tensor, windows: list) -> dict[str, torch.Tensor]:
    """One SGD step per window on the mean loss over all of the window's samples.

    A window is a slice, or a list of (slice, factor) whose mean losses are summed with those factors (the
    wrong weightings the tests tell apart)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for window in windows:
        parts = window if isinstance(window, list) else [(window, 1.0)]
        opt.zero_grad()
        sum(f * nn.functional.cross_entropy(model(x[sl]), y[sl]) for sl, f in parts).backward()
        opt.step()
    return model.state_dict()


def _windows(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _train_accelerated(x, y, batch_size: int, accum: int, **kwargs) -> tuple[dict[str, torch.Tensor], dict]:
    acc = make_accelerator("no", cpu=True, grad_accum_steps=accum)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    model, opt, loader = acc.prepare(model, opt, loader)
    out = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, acc.device, 1, accelerator=acc, **kwargs)
    return acc.unwrap_model(model).state_dict(), out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_short_last_window_equals_sgd_on_the_bigger_batches():
    # 6 samples, batch 2, K=2: micro-batches [0:2] [2:4] | [4:6]; the last step has one micro-batch of two.
    x, y = _data(6)
    weights, out = _train_accelerated(x, y, batch_size=2, accum=2)
    assert out["global_step"] == 2 and out["images"] == 6
    assert _max_diff(weights, _reference(x, y, [slice(0, 4), slice(4, 6)])) < 1e-6
    # the old behaviour (every micro-batch divided by K: the last gradient halved) is far off
    assert _max_diff(weights, _reference(x, y, [slice(0, 4), [(slice(4, 6), 0.5)]])) > 1e-3


@pytest.mark.parametrize(
    ("n", "batch_size", "accum"),
    [(7, 2, 2), (7, 2, 3), (5, 2, 4), (11, 3, 2)],
    ids=["windows-4-3", "windows-6-1", "one-short-window", "windows-6-5"],
)
def test_short_last_batch_equals_training_on_the_bigger_batch(n, batch_size, accum):
    # drop_last=False: the last micro-batch has fewer samples, e.g. 7 samples, batch 2, K=2 -> windows of 4 and 3
    x, y = _data(n)
    weights, out = _train_accelerated(x, y, batch_size=batch_size, accum=accum)
    assert out["global_step"] == math.ceil(math.ceil(n / batch_size) / accum)
    assert _max_diff(weights, _reference(x, y, _windows(n, batch_size * accum))) < 1e-6
    # the same as train_epoch itself with the bigger batch and no accumulation
    big, big_out = _train_accelerated(x, y, batch_size=batch_size * accum, accum=1)
    assert big_out["global_step"] == out["global_step"]
    assert _max_diff(weights, big) < 1e-6
    assert out["loss"] == pytest.approx(big_out["loss"], rel=1e-6)  # the same mean loss over the epoch


def test_without_accumulation_every_batch_is_one_step_bitwise_as_before():
    x, y = _data(7)
    reference = _reference(x, y, _windows(7, 2))
    weights, out = _train_accelerated(x, y, batch_size=2, accum=1)
    assert out["global_step"] == 4
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    # the guide's plain loop (no accelerator) too
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    plain = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 1)
    assert plain["global_step"] == 4 and plain["images"] == 7
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)


def test_scheduler_logging_clipping_and_max_batches_count_optimizer_steps():
    x, y = _data(10)
    acc = make_accelerator("no", cpu=True, grad_accum_steps=2)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    model, opt, loader = acc.prepare(model, opt, loader)
    logged = []
    out = train_epoch(
        model, loader, nn.CrossEntropyLoss(), opt, acc.device, 1, accelerator=acc, scheduler=sched,
        clip_grad_norm=1e9, max_batches=4, global_step=10, log_every_n_steps=1,
        log_step=lambda step, m: logged.append((step, m)),
    )  # fmt: skip
    assert out["global_step"] == 12 and out["images"] == 8  # 4 of the 5 batches: 2 windows
    assert sched.last_epoch == 2  # once per optimizer step
    assert [s for s, _ in logged] == [11, 12]
    assert set(logged[0][1]) == {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec"}
    assert out["grad_norms"] and not out["diverged"]
    reference = _reference(x, y, [slice(0, 4), slice(4, 8)])
    assert _max_diff(acc.unwrap_model(model).state_dict(), reference) < 1e-6


def test_fp16_loss_scaling_is_not_divided_again():
    # GradScaler through accelerator.backward / clip_grad_norm_: the same weights as fp16 with the bigger batch
    x, y = _data(7)
    weights = {}
    for name, batch_size, accum in (("acc", 2, 2), ("big", 4, 1)):
        acc = make_accelerator("fp16", cpu=True, grad_accum_steps=accum)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
        model, opt, loader = acc.prepare(model, opt, loader)
        out = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, acc.device, 1, accelerator=acc, clip_grad_norm=1e9)
        assert out["global_step"] == 2
        weights[name] = acc.unwrap_model(model).state_dict()
    # fp16 rounding only: far below a halved last step (~1e-2 here)
    assert _max_diff(weights["acc"], weights["big"]) < 2e-3
    assert _max_diff(weights["acc"], _reference(x, y, _windows(7, 4))) < 5e-3


def test_an_accelerator_that_divides_by_its_own_accumulation_steps_is_refused():
    acc = make_accelerator("no", cpu=True, grad_accum_steps=2)
    assert acc.gradient_accumulation_steps == 1 and acc.grad_accum_steps == 2  # accelerate's own division is off
    acc.gradient_accumulation_steps = 2  # as Accelerator(gradient_accumulation_steps=2) would have it
    model = _model()
    with pytest.raises(ValueError, match="make_accelerator"):
        train_epoch(model, [], nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=LR), "cpu", 1,
                    accelerator=acc)  # fmt: skip
    make_accelerator("no", cpu=True)  # leave accelerate's global state clean for the next test


# --- two processes ----------------------------------------------------------------------------------------------
# Each rank has its own samples (per-rank batch 2, K=2, drop_last=False), uneven on purpose:
#   rank 0: 7 samples -> batches 2 2 | 2 1   (windows of 4 and 3 samples)
#   rank 1: 5 samples -> batches 2 2 | 1     (windows of 4 and 1 samples; its last window has one micro-batch)
# The global windows are 8 and 4 samples; the single-process reference steps on their concatenations.
RANK_SAMPLES = (7, 5)


def _rank_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data(sum(RANK_SAMPLES), seed=3)
    return [(x[:7], y[:7]), (x[7:], y[7:])]


def _rank_main(out_dir: Path) -> int:
    torch.set_num_threads(1)
    acc = make_accelerator("no", cpu=True, grad_accum_steps=2)
    assert acc.num_processes == 2, acc.state
    x, y = _rank_data()[acc.process_index]
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)  # DDP (gloo); the per-rank loaders stay as they are
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)
    out = train_epoch(model, loader, nn.CrossEntropyLoss(), opt, acc.device, 1, accelerator=acc)
    state = {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
    torch.save({"state": state, "out": out}, out_dir / f"rank{acc.process_index}.pt")
    return 0


@pytest.mark.multiprocess
def test_two_processes_with_uneven_last_windows_equal_the_single_process_big_batch(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).resolve()), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0["state"][k], rank1["state"][k]) for k in rank0["state"])  # DDP keeps them in step
    assert rank0["out"]["global_step"] == rank1["out"]["global_step"] == 2
    assert rank0["out"]["images"] == sum(RANK_SAMPLES)

    (x0, y0), (x1, y1) = _rank_data()
    x, y = torch.cat([x0[:4], x1[:4], x0[4:], x1[4:]]), torch.cat([y0[:4], y1[:4], y0[4:], y1[4:]])
    reference = _reference(x, y, [slice(0, 8), slice(8, 12)])
    assert _max_diff(rank0["state"], reference) < 1e-6
    # each rank's own window mean, averaged over the ranks by DDP (3 and 1 samples weighted alike), is far off
    per_rank = _reference(x, y, [slice(0, 8), [(slice(8, 11), 0.5), (slice(11, 12), 0.5)]])
    assert _max_diff(rank0["state"], per_rank) > 1e-3


if __name__ == "__main__":  # one rank of the two-process test; leaves through os._exit (shared/ENVIRONMENT.md)
    code = 1
    try:
        code = _rank_main(Path(sys.argv[1]))
    except BaseException:
        traceback.print_exc()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
