"""One training epoch and one evaluation pass, with the training guide's signatures.

`train_epoch(model, train_loader, criterion, optimizer, device, epoch)` and
`evaluate(model, val_loader, criterion, device)` run as plain PyTorch loops, exactly as the guide calls them.
`experiments.train.train` calls the same functions with an `accelerator` (mixed precision, accumulation,
several processes), a scheduler, clipping and a per-step logging hook.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import re
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from experiments.data import set_epoch

__all__ = ["evaluate", "grad_norms_by_group", "module_group", "train_epoch", "unclipped_grad_norms_by_group"]

StepLogger = Callable[[int, dict[str, float]], None]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def module_group(param_name: str) -> str:
    """The module group a parameter's gradient norm is logged under (`grad_norm/<group>`).

    relative_position_bias (all bias tables), blocks.<i>, patch_embed, head, or the first name component. The
    wrappers' prefixes (`module.` of DDP, `_orig_mod.` of torch.compile) are dropped in whichever order they nest.
    """
    name = param_name
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    if "relative_position_bias" in name:
        return "relative_position_bias"
    m = re.match(r"(blocks\.\d+)\.", name)
    return m.group(1) if m else name.split(".")[0]


@torch.no_grad()
def grad_norms_by_group(model: nn.Module) -> dict[str, float]:
    """L2 norm of the current gradients per module group (one device sync for all groups)."""
    squares: dict[str, list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            squares.setdefault(module_group(name), []).append(param.grad.detach().float().pow(2).sum())
    if not squares:
        return {}
    norms = torch.stack([torch.stack(v).sum() for v in squares.values()]).sqrt().tolist()
    return dict(zip(squares, norms))


def unclipped_grad_norms_by_group(model: nn.Module, total_norm: float, max_norm: float) -> dict[str, float]:
    """`grad_norms_by_group` as it was before clipping to `max_norm` scaled the gradients by the total norm.

    {} when `total_norm` is inf/NaN (an fp16 step whose loss scale overflowed: the step is skipped and the clipped
    gradients say nothing).
    """
    if not math.isfinite(total_norm):
        return {}
    coef = min(1.0, max_norm / (total_norm + 1e-6))
    return {k: v / coef for k, v in grad_norms_by_group(model).items()}


def train_epoch(
    model: nn.Module,
    train_loader: Any,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    epoch: int,
    *,
    accelerator: Any = None,
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    max_batches: int | None = None,
    global_step: int = 0,
    log_every_n_steps: int = 0,
    log_step: StepLogger | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train for one epoch; returns {"loss", "accuracy", "global_step", "diverged", "grad_norms", "images"}.

    The pass over `train_loader` is that of `epoch` (`experiments.data.set_epoch`): its shuffle order and augmentation
    follow the run seed and `epoch`, the same on resume and on N processes.

    Without `accelerator` this is the guide's plain loop (tensors moved to `device`, one optimizer step per
    batch). With one, the loader and model are the prepared ones and an optimizer step takes a window of
    K = `accelerator.grad_accum_steps` micro-batches (`make_accelerator(grad_accum_steps=K)`); the loss is
    scaled for fp16, `scheduler` steps once per optimizer step.

    Accumulation equals the K-times bigger batch, the short last window of an epoch and a short last batch
    included: the window's micro-batches (images (b_i, C, H, W), targets (b_i,)) are fetched first, their
    samples counted and summed over all processes once per window (N = sum of b_i over every process), and
    micro-batch i's mean loss is weighted by b_i * world_size / N before its backward. Summed over the window
    and averaged over processes by DDP, the gradient is then the mean over the window's N samples, exactly as
    one step on their concatenation (so `criterion` must return the mean over the micro-batch). Dividing every
    micro-batch by K instead (Accelerate's `accumulate`/`backward`, Lightning's `accumulate_grad_batches`,
    Lightning-AI/pytorch-lightning#19987) under-weights a last window of fewer micro-batches or samples; the
    count-the-window fix is that of transformers' Trainer (`get_batch_samples` and `num_items_in_batch`,
    huggingface/transformers#34191). Gradients are all-reduced once per window: all but the window's last
    micro-batch run under `accelerator.no_sync`. Every process must run the same number of windows,
    ceil(batches / K) (Accelerate's `even_batches`, its default, gives every process the same number of
    batches); a process's last window may hold fewer micro-batches or samples than another's. The K
    micro-batches of a window are held in memory together.

    Loss and accuracy are summed on the device and reduced over processes once at the end (no host sync per
    step); every `log_every_n_steps` optimizer steps `log_step(global_step, {...})` gets train/loss (this
    process's window mean), train/lr, train/grad_norm and train/images_per_sec, and a non-finite loss is
    detected (on every process at once) and stops the epoch with "diverged": True before more steps corrupt
    the weights further.
    """
    model.train()
    set_epoch(train_loader, epoch)
    accum = _grad_accum_steps(accelerator)
    world = accelerator.num_processes if accelerator is not None else 1
    num_batches = len(train_loader) if max_batches is None else min(len(train_loader), max_batches)
    num_windows = math.ceil(num_batches / accum)  # optimizer steps; the last window may hold fewer batches
    max_norm = clip_grad_norm if clip_grad_norm is not None else math.inf
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    nonfinite = torch.zeros((), device=device)
    seen, seen_at_log, t_log = 0, 0, time.perf_counter()
    grad_norms: dict[str, float] = {}
    diverged = False
    optimizer.zero_grad(set_to_none=True)
    # islice: a limited epoch stops after its last batch without fetching (and augmenting) one more
    batches = iter(itertools.islice(train_loader, num_batches))
    for window_idx in range(num_windows):
        # The optimizer step's micro-batches, fetched before the first forward so that its samples are known.
        window = list(itertools.islice(batches, accum))
        if not window:  # a loader shorter than its len()
            break
        if accelerator is None:
            window = [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in window]
        n_local = sum(targets.shape[0] for _, targets in window)
        # N: the window's samples on all processes (one collective; a device tensor, no host sync)
        n_window = _sum_over_processes(torch.full((), float(n_local), device=device), accelerator)
        window_loss = torch.zeros((), device=device)
        for i, (images, targets) in enumerate(window):
            last_micro = i == len(window) - 1  # DDP all-reduces the accumulated gradients on this backward only
            no_sync = accelerator.no_sync(model) if accelerator is not None and not last_micro else None
            with no_sync or contextlib.nullcontext():
                logits = model(images)  # (b_i, num_classes)
                loss = criterion(logits, targets)  # mean over the b_i samples
                weighted = loss * (targets.shape[0] * world / n_window)  # b_i * world / N (see the docstring)
                if accelerator is not None:
                    accelerator.backward(weighted)  # fp16: scaled; never divided by K (make_accelerator)
                else:
                    weighted.backward()
            loss = loss.detach()
            window_loss += loss * targets.shape[0]
            loss_sum += loss * targets.shape[0]
            correct += (logits.detach().argmax(dim=-1) == targets).sum()
            nonfinite += (~torch.isfinite(loss)).float()
            seen += targets.shape[0]
            if progress is not None:
                progress.update(1)

        # One optimizer step per window.
        last = window_idx == num_windows - 1
        will_log = bool(log_every_n_steps) and (global_step + 1) % log_every_n_steps == 0
        # The total norm clips, and is logged; without clipping it is computed only when it is logged.
        if clip_grad_norm is not None or will_log or last:
            grad_norm = (
                accelerator.clip_grad_norm_(model.parameters(), max_norm)  # fp16: unscales first
                if accelerator is not None
                else torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            )
            if last:  # per-group norms of the epoch's last step, before clipping
                grad_norms = unclipped_grad_norms_by_group(model, float(grad_norm), max_norm)
        optimizer.step()  # fp16: skipped on inf/NaN gradients
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None and not getattr(optimizer, "step_was_skipped", False):
            scheduler.step()
        global_step += 1
        if log_every_n_steps and global_step % log_every_n_steps == 0:
            if _any_process(nonfinite, accelerator):
                diverged = True
                break
            now = time.perf_counter()
            step_metrics = {
                "train/loss": (window_loss / n_local).item(),
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/grad_norm": float(grad_norm),
                "train/images_per_sec": (seen - seen_at_log) * world / max(now - t_log, 1e-9),
            }
            seen_at_log, t_log = seen, now
            if log_step is not None:
                log_step(global_step, step_metrics)
            if progress is not None:
                progress.set_postfix(
                    loss=f"{step_metrics['train/loss']:.4f}", img_s=f"{step_metrics['train/images_per_sec']:.0f}"
                )

    diverged = diverged or _any_process(nonfinite, accelerator)
    totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=loss_sum.device)])
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    loss_total, correct_total, count = totals.tolist()
    return {
        "loss": loss_total / max(count, 1.0),
        "accuracy": correct_total / max(count, 1.0),
        "global_step": global_step,
        "diverged": diverged,
        "grad_norms": grad_norms,
        "images": int(count),
    }


def _grad_accum_steps(accelerator: Any) -> int:
    """K, the micro-batches per optimizer step: 1 without an accelerator, else what `make_accelerator` set.

    Accelerate's own accumulation must be off (gradient_accumulation_steps=1): its `backward` would divide every
    micro-batch by its K on top of our weights (and under `accumulate` its optimizer skips `step()` until K
    micro-batches went by).
    """
    if accelerator is None:
        return 1
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            f"train_epoch accumulates gradients itself; this Accelerator has gradient_accumulation_steps="
            f"{accelerator.gradient_accumulation_steps} (its backward would divide every loss by it): create it "
            "with experiments.precision.make_accelerator(grad_accum_steps=K)"
        )
    return int(getattr(accelerator, "grad_accum_steps", 1))


def _sum_over_processes(value: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """`value` summed over all processes (a collective: every process must call it at the same point)."""
    return accelerator.reduce(value, reduction="sum") if accelerator is not None else value


def _any_process(flag: torch.Tensor, accelerator: Any) -> bool:
    """True when `flag` is non-zero on any process (a collective: every process must call it at the same point)."""
    if accelerator is not None:
        flag = accelerator.reduce(flag.clone(), reduction="sum")
    return bool(flag.item() > 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val_loader: Any,
    criterion: nn.Module,
    device: torch.device | str,
    *,
    accelerator: Any = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over `val_loader`: {"loss", "accuracy"}.

    With an `accelerator`, per-sample losses and hits are gathered from all processes (`gather_for_metrics`
    drops the samples padded into the last batch), so the numbers are those of the whole validation set.
    `criterion` is used per sample (a copy with reduction="none").
    """
    model.eval()
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    losses, hits = [], []
    for images, targets in itertools.islice(val_loader, max_batches):  # no batch fetched beyond max_batches
        if accelerator is None:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)  # (B, num_classes)
        loss = per_sample(logits.float(), targets)  # (B,)
        hit = logits.argmax(dim=-1) == targets  # (B,)
        if accelerator is not None:
            loss, hit = accelerator.gather_for_metrics((loss, hit))
        losses.append(loss)
        hits.append(hit)
    if not losses:
        return {"loss": math.nan, "accuracy": 0.0}
    return {"loss": torch.cat(losses).mean().item(), "accuracy": torch.cat(hits).float().mean().item()}
