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

    Without `accelerator` this is the guide's plain loop (tensors moved to `device`). With one, the loader and
    model are the prepared ones: gradients accumulate over `accelerator.gradient_accumulation_steps`, the
    loss is scaled for fp16, `scheduler` steps once per optimizer step. Loss and accuracy are summed on the
    device and reduced over processes once at the end (no host sync per step); every `log_every_n_steps`
    optimizer steps `log_step(global_step, {...})` gets train/loss, train/lr, train/grad_norm and
    train/images_per_sec, and a non-finite loss is detected (on every process at once) and stops the epoch
    with "diverged": True before more steps corrupt the weights further.
    """
    model.train()
    num_batches = len(train_loader) if max_batches is None else min(len(train_loader), max_batches)
    max_norm = clip_grad_norm if clip_grad_norm is not None else math.inf
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    nonfinite = torch.zeros((), device=device)
    seen, seen_at_log, t_log = 0, 0, time.perf_counter()
    grad_norms: dict[str, float] = {}
    diverged = False
    optimizer.zero_grad(set_to_none=True)
    # islice: a limited epoch stops after its last batch without fetching (and augmenting) one more
    for batch_idx, (images, targets) in enumerate(itertools.islice(train_loader, num_batches)):
        if accelerator is None:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with accelerator.accumulate(model) if accelerator is not None else contextlib.nullcontext():
            logits = model(images)  # (B, num_classes)
            loss = criterion(logits, targets)
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
            sync = accelerator.sync_gradients if accelerator is not None else True
            last = batch_idx == num_batches - 1
            will_log = bool(log_every_n_steps) and (global_step + 1) % log_every_n_steps == 0
            # The total norm clips, and is logged; without clipping it is computed only when it is logged.
            if sync and (clip_grad_norm is not None or will_log or last):
                grad_norm = (
                    accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if accelerator is not None
                    else torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                )
                if last:  # per-group norms of the epoch's last step, before clipping
                    grad_norms = unclipped_grad_norms_by_group(model, float(grad_norm), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        loss = loss.detach()
        loss_sum += loss * targets.shape[0]
        correct += (logits.detach().argmax(dim=-1) == targets).sum()
        nonfinite += (~torch.isfinite(loss)).float()
        seen += targets.shape[0]
        if progress is not None:
            progress.update(1)
        if not sync:
            continue
        if scheduler is not None and not getattr(optimizer, "step_was_skipped", False):
            scheduler.step()
        global_step += 1
        if log_every_n_steps and global_step % log_every_n_steps == 0:
            if _any_process(nonfinite, accelerator):
                diverged = True
                break
            now = time.perf_counter()
            world = accelerator.num_processes if accelerator is not None else 1
            step_metrics = {
                "train/loss": loss.item(),
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
