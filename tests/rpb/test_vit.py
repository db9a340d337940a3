"""The ViT: the guide's constructor and snippets, bad combinations, state_dict, param groups, checkpointing."""

import numpy as np
import pytest
import torch

from rpb import (
    Attention,
    RelativePositionBias,
    VisionTransformer,
    param_groups_weight_decay,
    resize_rel_pos_bias_in_state_dict,
)
from tests.rpb.helpers import tiny

GUIDE = dict(img_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=96, depth=2, num_heads=4)


def test_guide_model_creation_snippet():
    # the training guide's "Model Creation" call, at a smaller depth to stay fast
    model = VisionTransformer(
        img_size=224,
        patch_size=16,
        in_channels=3,
        num_classes=1000,
        embed_dim=96,
        depth=1,
        num_heads=12,
        use_relative_position=True,
        rpb_kwargs={"num_heads": 12, "window_size": (14, 14), "bias_type": "2d", "init_std": 0.02},
    )
    assert model.grid_size == (14, 14)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    bias = model.blocks[0].attn.relative_position_bias()
    assert bias.shape == (12, 197, 197)


def test_guide_check_bias_values_and_gradient_flow_snippets(capsys):
    model = VisionTransformer(**GUIDE, rpb_kwargs={"num_heads": 4, "window_size": (7, 7), "bias_type": "2d"})
    model(torch.randn(2, 1, 28, 28)).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        if "relative_position_bias" in name:
            print(f"{name}: mean={param.mean():.4f}, std={param.std():.4f}")
    for name, param in model.named_parameters():
        if param.grad is not None:
            print(f"{name}: grad_norm={param.grad.norm():.4f}")
    out = capsys.readouterr().out
    assert out.count("relative_position_bias_table: mean=") == 2
    assert "blocks.1.attn.relative_position_bias.relative_position_bias_table: grad_norm=" in out


def test_guide_visualize_bias_snippet(tmp_path):
    from rpb import visualize_relative_position_bias

    model = tiny()
    for i, block in enumerate(model.blocks):
        if hasattr(block.attn, "relative_position_bias"):
            bias = block.attn.relative_position_bias()
            visualize_relative_position_bias(bias, save_path=tmp_path / f"debug/bias_block_{i}.png")
    assert sorted(p.name for p in (tmp_path / "debug").iterdir()) == ["bias_block_0.png", "bias_block_1.png"]


def test_without_relative_position_has_no_bias_attribute():
    model = tiny(use_relative_position=False)
    assert not any(hasattr(b.attn, "relative_position_bias") for b in model.blocks)
    assert model.pos_embed is None and tiny().pos_embed is None  # pos_embed="none" unless asked for
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize(
    "rpb_kwargs",
    [
        {"window_size": (2, 2)},  # clip
        {"window_size": 3, "bias_type": "1d"},
        {"bias_type": "1d"},
        {"window_size": (2, 2), "mode": "local", "shift_windows": True},
    ],
)
def test_variants_run_and_train(rpb_kwargs):
    cls = rpb_kwargs.get("mode") != "local"
    model = tiny(rpb_kwargs=rpb_kwargs, class_token=cls, global_pool="token" if cls else "avg", drop_path_rate=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    for _, module in model.named_modules():
        if isinstance(module, RelativePositionBias):
            assert module.relative_position_bias_table.grad.abs().sum() > 0


def test_shift_windows_alternate_blocks():
    model = tiny(
        depth=4,
        class_token=False,
        global_pool="avg",
        rpb_kwargs={"window_size": 2, "mode": "local", "shift_windows": True},
    )
    assert [b.attn.shift_size for b in model.blocks] == [(0, 0), (1, 1), (0, 0), (1, 1)]


def test_shifted_windows_with_a_side_of_one_build_with_swins_shifts():
    """A (4, 1) window shifts (2, 0) (w // 2 per side); on a grid as tall as the window, not at all (timm's rule)."""
    shifts = {}
    for img in (32, 16):  # tiny(): patch 4 -> 8x8 and 4x4 token grids
        model = tiny(depth=2, img_size=img, class_token=False, global_pool="avg",
                     rpb_kwargs={"window_size": (4, 1), "mode": "local", "shift_windows": True})  # fmt: skip
        shifts[img] = model.blocks[1].attn.shift_size
        assert model(torch.randn(2, 3, img, img)).shape == (2, 5)
    assert shifts == {32: (2, 0), 16: (0, 0)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rpb_kwargs={"window_size": (5, 5)}), r"window_size=\(5, 5\) is larger than the 4x4 token grid"),
        (
            dict(rpb_kwargs={"window_size": 3, "mode": "local"}, class_token=False, global_pool="avg"),
            "window_mode='local' needs window_size=3 to tile the 4x4 token grid",
        ),
        (dict(num_heads=5), "num_heads=5 does not divide embed_dim=32: choose one of 1, 2, 4, 8, 16"),
        (dict(rpb_kwargs={"num_heads": 2}), "rpb_kwargs num_heads=2 differs from num_heads=4"),
        (dict(img_size=18), "patch_size=4 does not divide img_size=18"),
        (dict(rpb_kwargs={"bias_type": "3d"}), "bias_type='3d' is not allowed: choose one of 2d, 1d"),
        (dict(rpb_kwargs={"mode": "window"}), "window_mode='window' is not allowed: choose one of clip, local"),
        (dict(attn_impl="fast"), "attn_impl='fast' is not allowed"),
        (dict(global_pool="max"), "global_pool='max' is not allowed: choose one of token, avg"),
        (dict(class_token=False), "global_pool='token' needs a class token"),
        (dict(rpb_kwargs={"window_size": 2, "mode": "local"}), "set class_token=False and global_pool='avg'"),
        (dict(rpb_kwargs={"shift_windows": True}), "shift_windows=True needs window_mode='local'"),
        (dict(rpb_kwargs={"windowsize": 2}), r"unknown rpb_kwargs key\(s\) \['windowsize'\]"),
        (dict(pos_embed="abs"), "pos_embed='abs' is not allowed: choose one of none, learned, sincos"),
        (dict(pos_embed="sincos", embed_dim=30, num_heads=3), "pos_embed='sincos' needs embed_dim=30 divisible by 4"),
        (
            dict(window_size=3, window_mode="local", use_relative_position=False, class_token=False, global_pool="avg"),
            "needs window_size=3 to tile the 4x4 token grid",
        ),
    ],
)
def test_bad_combinations_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_head_dim_decouples_width_from_heads():
    model = tiny(num_heads=5, head_dim=8)
    assert model.blocks[0].attn.qkv.out_features == 3 * 40
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_state_dict_round_trip_without_index():
    a, b = tiny(), tiny(rpb_kwargs={"init_std": 0.5})
    sd = a.state_dict()
    assert not any("relative_position_index" in k for k in sd)
    assert "blocks.0.attn.relative_position_bias.relative_position_bias_table" in sd
    b.load_state_dict(sd)
    a.eval(), b.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def test_checkpoint_from_another_window_size_loads_after_resize():
    small = tiny(img_size=8, rpb_kwargs={"window_size": 2, "init_std": 0.5})  # 2x2 grid, 3x3 offsets
    big = tiny(img_size=16)  # 4x4 grid, 7x7 offsets
    sd = small.state_dict()
    sd.pop("pos_embed", None)
    with pytest.raises(RuntimeError, match="size mismatch"):
        big.load_state_dict(sd)
    big.load_state_dict(resize_rel_pos_bias_in_state_dict(sd, big))
    old = small.blocks[0].attn.relative_position_bias.relative_position_bias_table
    new = big.blocks[0].attn.relative_position_bias.relative_position_bias_table
    assert new.shape == (7 * 7 + 3, 4)
    assert torch.equal(new[-3:], old[-3:])  # class-token entries carried over
    assert torch.allclose(new[24], old[4])  # zero offset stays the zero offset


def test_param_groups_weight_decay():
    model = tiny(depth=1)
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=("head.weight",))
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay == {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                     "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"}  # fmt: skip
    assert {"cls_token", "head.weight", "norm.weight", "blocks.0.attn.qkv.bias",
            "blocks.0.attn.relative_position_bias.relative_position_bias_table"} <= no_decay  # fmt: skip
    assert len(decay) + len(no_decay) == len(names)
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as is


def test_frozen_bias_is_left_out_of_param_groups_and_stays_fixed():
    model = tiny(rpb_kwargs={"learnable": False})
    table = model.blocks[0].attn.relative_position_bias.relative_position_bias_table
    before = table.clone()
    groups = param_groups_weight_decay(model, 0.05)
    assert all(p is not table for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    assert torch.equal(table, before)


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for enable in (False, True):
        model = tiny(grad_checkpointing=enable)
        model(x).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert not tiny().grad_checkpointing
    model = tiny()
    model.set_grad_checkpointing()
    assert model.grad_checkpointing


def test_scale_false_changes_logits():
    x = torch.randn(1, 3, 16, 16)
    a, b = tiny().eval(), tiny(scale=False).eval()
    assert b.blocks[0].attn.scale == 1.0 and a.blocks[0].attn.scale == 8**-0.5
    assert not torch.allclose(a(x), b(x))


def test_bf16_autocast_forward_backward():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))
    out.float().sum().backward()
    assert model.blocks[0].attn.relative_position_bias.relative_position_bias_table.grad is not None


@pytest.mark.slow
def test_compiles_in_one_graph_and_trains_like_eager():
    # aot_eager traces with dynamo and AOTAutograd (graph breaks would fail fullgraph) without codegen time
    x = torch.randn(2, 3, 16, 16)
    eager, compiled_model = tiny(depth=1, drop_rate=0.0), tiny(depth=1, drop_rate=0.0)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    eager(x).square().sum().backward()
    compiled(x).square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    model = tiny(depth=1).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model)(x), model(x), atol=1e-5)


def test_guide_weight_decay_snippet_keeps_bias_tables_out_of_decay():
    model = tiny()
    param_groups = [
        {
            "params": [p for n, p in model.named_parameters() if "bias" not in n and "norm" not in n],
            "weight_decay": 0.05,
        },
        {"params": [p for n, p in model.named_parameters() if "bias" in n or "norm" in n], "weight_decay": 0.0},
    ]
    table = model.blocks[0].attn.relative_position_bias.relative_position_bias_table
    assert any(p is table for p in param_groups[1]["params"])
    torch.optim.AdamW(param_groups, lr=1e-3)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"attn_impl": "sdpa"},
        {"attn_impl": "reference", "rpb_kwargs": {"window_size": 2}},
        {"rpb_kwargs": {"bias_type": "1d"}},
        {"use_relative_position": False},
        {"grad_checkpointing": True, "qkv_bias": False},
    ],
)
def test_class_token_last_block_equals_the_full_last_block(kw):
    # forward() computes only the class token's row in the last block; the logits and every gradient must equal
    # those of running the last block on all tokens (forward_features + forward_head, and the flag switched off).
    # float64, so that the check is on the maths and not on float32 summation order
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pruned = tiny(**kw).double()
    full = tiny(**kw, class_token_last_block=False).double()
    assert pruned.class_token_last_block and not full.class_token_last_block
    logits = pruned(x)
    torch.testing.assert_close(logits, pruned.forward_head(pruned.forward_features(x)), rtol=1e-10, atol=1e-12)
    reference = full(x)
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(logits)
    (logits * weights).sum().backward()
    (reference * weights).sum().backward()
    for (name, a), b in zip(pruned.named_parameters(), full.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-10 * b.grad.abs().max(), name


def test_class_token_last_block_skips_the_patch_tokens():
    seen = []
    for kw in ({}, {"class_token_last_block": False}, {"global_pool": "avg"}):
        model = tiny(depth=1, **kw)
        model.blocks[0].mlp.register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape)))
        model(torch.randn(2, 3, 16, 16))
    model.forward_features(torch.randn(2, 3, 16, 16))
    # class-token pooling: 1 token; switched off, average pooling and forward_features: all 17 tokens
    assert seen == [(2, 1, 32), (2, 17, 32), (2, 17, 32), (2, 17, 32)]


def _mae_sincos(embed_dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed (models/pos_embed.py) as written there, with its class-token row of zeros."""

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # here w goes first
    emb = np.concatenate([one_d(embed_dim // 2, g[0]), one_d(embed_dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


def test_sincos_pos_embed_is_maes_and_fixed():
    model = tiny(pos_embed="sincos")
    want = torch.from_numpy(_mae_sincos(32, 4)).float()[None]
    torch.testing.assert_close(model.pos_embed, want, rtol=0, atol=1e-6)
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" not in model.state_dict()
    assert "pos_embed" not in model.no_weight_decay()
    learned = tiny(pos_embed="learned")
    assert isinstance(learned.pos_embed, torch.nn.Parameter) and learned.pos_embed.shape == (1, 17, 32)
    assert "pos_embed" in learned.no_weight_decay() and 0.01 < learned.pos_embed.std() < 0.03  # INIT_STD


@pytest.mark.parametrize("pos_embed", ["none", "learned", "sincos"])
@pytest.mark.parametrize("use_relative_position", [True, False])
def test_every_position_setting_trains(pos_embed, use_relative_position):
    """none / absolute / relative / both (Swin's Table 4 rows): a few AdamW steps fit a fixed batch."""
    model = tiny(pos_embed=pos_embed, use_relative_position=use_relative_position, drop_rate=0.0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    if pos_embed == "learned":
        assert model.pos_embed.grad.abs().sum() > 0


def test_typed_arguments_and_rpb_kwargs_build_the_same_model():
    kw = dict(class_token=False, global_pool="avg", depth=2)
    guide = tiny(rpb_kwargs={"window_size": 2, "mode": "local", "shift_windows": True, "init_std": 0.1}, **kw)
    typed = tiny(window_size=2, window_mode="local", shift_windows=True, rpb_init_std=0.1, **kw)
    assert [b.attn.shift_size for b in typed.blocks] == [(0, 0), (1, 1)]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(guide(x), typed(x))
    with pytest.raises(TypeError):
        Attention(32, 4, None)  # layers take keyword arguments after (dim, num_heads)


def test_local_windows_without_a_bias():
    """The no-RPB row of a local model: Swin windows (and shifts) stay, the bias tables go."""
    model = tiny(use_relative_position=False, window_size=2, window_mode="local", shift_windows=True,
                 class_token=False, global_pool="avg", depth=1)  # fmt: skip
    attn = model.blocks[0].attn
    assert attn.window_size == (2, 2) and not hasattr(attn, "relative_position_bias")
    assert not any("relative_position" in n for n in model.state_dict())
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    tokens = model.forward_features(x)  # (1, 16, 32): token 0 is patch (0, 0)
    (tokens[0, 0] * torch.randn(32)).sum().backward()  # a weighted sum: a normalised token sums to 0
    touched = (x.grad[0].abs().sum(0) > 0).nonzero()  # pixels that reach patch (0, 0): its 2x2 window of patches
    assert touched.max(0).values.tolist() == [7, 7] and touched.min(0).values.tolist() == [0, 0]
