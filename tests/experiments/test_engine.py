"""engine helpers: per-group gradient norms (names under DDP and torch.compile, clipping, fp16 overflow)."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.engine import grad_norms_by_group, module_group, unclipped_grad_norms_by_group


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_module_group_strips_the_ddp_and_compile_prefixes_in_any_order(prefix):
    assert module_group(f"{prefix}blocks.3.attn.qkv.weight") == "blocks.3"
    assert module_group(f"{prefix}blocks.0.attn.relative_position_bias.table") == "relative_position_bias"
    assert module_group(f"{prefix}patch_embed.proj.weight") == "patch_embed"
    assert module_group(f"{prefix}head.bias") == "head"
    assert module_group(f"{prefix}cls_token") == "cls_token"


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block.fc(x)
        return self.head(x)


def _with_grads(scale: float = 1.0) -> _Tiny:
    torch.manual_seed(0)
    model = _Tiny()
    (model(torch.randn(4, 3)).sum() * scale).backward()
    return model


def test_grad_norms_of_a_compiled_model_inside_ddp_keep_their_groups():
    model = _with_grads()
    wrapper = torch.nn.Module()  # names as DistributedDataParallel(torch.compile(model)) gives them
    wrapper.module = torch.compile(model)
    assert next(n for n, _ in wrapper.named_parameters()).startswith("module._orig_mod.")
    assert grad_norms_by_group(wrapper) == grad_norms_by_group(model)
    assert set(grad_norms_by_group(model)) == {"blocks.0", "blocks.1", "head"}


def test_unclipped_grad_norms_undo_the_clipping():
    model = _with_grads(scale=100.0)
    before = grad_norms_by_group(model)
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    assert total > 1.0 and grad_norms_by_group(model) != pytest.approx(before)
    assert unclipped_grad_norms_by_group(model, total, 1.0) == pytest.approx(before, rel=1e-4)
    assert unclipped_grad_norms_by_group(model, total, math.inf) == grad_norms_by_group(model)


@pytest.mark.parametrize("total", [math.inf, math.nan])
def test_unclipped_grad_norms_of_an_overflowed_fp16_step_are_empty(total):
    # fp16: an overflowed last step has an inf total norm; clipping's coefficient 0 used to divide by zero.
    model = _with_grads()
    assert unclipped_grad_norms_by_group(model, total, 1.0) == {}
