"""timm's VisionTransformerRelPos converts to ours with the same logits: table and MLP biases, LayerScale, fc_norm,
class token, a shared bias; what cannot be converted exactly is refused in one sentence."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")
from timm.models.vision_transformer_relpos import VisionTransformerRelPos  # noqa: E402

from rpb import OptionError, VisionTransformer  # noqa: E402
from rpb.timm_convert import (  # noqa: E402
    TimmConversionError,
    convert_timm_relpos_state_dict,
    is_timm_relpos_state_dict,
    vision_transformer_from_timm,
)

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=7)
VARIANTS = {
    "table": dict(rel_pos_type="bias", init_values=None),
    "table_layer_scale": dict(rel_pos_type="bias"),
    "table_class_token": dict(rel_pos_type="bias", class_token=True, global_pool="token"),
    "mlp_fc_norm": dict(qkv_bias=False, fc_norm=True),  # vit_relpos_{small,medium,base}_patch16_224
    "mlp_class_token": dict(qkv_bias=False, class_token=True, global_pool="token", rel_pos_dim=16),  # *_cls_224
    "mlp_clsgap": dict(qkv_bias=False, class_token=True, fc_norm=True),  # vit_relpos_base_patch16_clsgap_224
    "mlp_swin": dict(rel_pos_type="mlp_swin"),
    "shared_mlp": dict(qkv_bias=False, shared_rel_pos=True, rel_pos_dim=32),  # vit_srelpos_*
}


def timm_model(dtype=torch.float64, **kw) -> torch.nn.Module:
    """A small timm model with every weight moved off its init (LayerScale 1e-6 alone would hide the blocks)."""
    torch.manual_seed(0)
    model = VisionTransformerRelPos(**{**SMALL, **kw}).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_logits_equal_timms(variant):
    theirs = timm_model(**VARIANTS[variant])
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    from_module = vision_transformer_from_timm(theirs)
    from_state_dict = vision_transformer_from_timm(theirs.state_dict(), img_size=32)  # pooling inferred
    with torch.no_grad():
        expected = theirs(x)
        assert expected.std() > 0.1
        torch.testing.assert_close(from_module(x), expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(from_state_dict(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["table_class_token", "mlp_fc_norm"])
def test_float32_logits_within_1e_5(variant):
    theirs = timm_model(torch.float32, **VARIANTS[variant])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (vision_transformer_from_timm(theirs)(x) - theirs(x)).abs().max().item()
    assert diff < 1e-5


def test_a_registered_vit_relpos_model_converts():
    theirs = timm.create_model("vit_relpos_small_patch16_224", pretrained=False, img_size=64, depth=2,
                               embed_dim=48, num_heads=3, num_classes=5).double().eval()  # fmt: skip
    assert is_timm_relpos_state_dict(theirs.state_dict())
    ours = vision_transformer_from_timm(theirs)
    assert isinstance(ours.fc_norm, torch.nn.LayerNorm) and ours.blocks[0].ls1.gamma.shape == (48,)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


def test_an_mlp_bias_evaluates_at_another_grid_as_timms_set_input_size():
    theirs = timm_model(**VARIANTS["mlp_fc_norm"])
    ours = vision_transformer_from_timm(theirs.state_dict(), img_size=48)
    theirs.set_input_size((48, 48))
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


def test_the_residual_post_norm_blocks_are_refused():
    from timm.models.vision_transformer_relpos import ResPostRelPosBlock

    theirs = VisionTransformerRelPos(**SMALL, block_fn=ResPostRelPosBlock)
    with pytest.raises(TimmConversionError, match=r"ResPostRelPosBlock .*post-norm"):
        vision_transformer_from_timm(theirs)


def test_qk_norm_is_refused_naming_the_option():
    theirs = VisionTransformerRelPos(**SMALL, qk_norm=True)
    with pytest.raises(TimmConversionError, match=r"qk_norm=True .*key 'blocks\.0\.attn\.q_norm\.weight'"):
        vision_transformer_from_timm(theirs)


def test_an_unknown_key_refuses_the_whole_conversion():
    state = dict(timm_model(**VARIANTS["mlp_fc_norm"]).state_dict())
    state["blocks.1.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(TimmConversionError, match=r"1 key\(s\) .*blocks\.1\.attn\.extra\.weight.*nothing was loaded"):
        convert_timm_relpos_state_dict(state, (4, 4))


def test_an_mlp_bias_needs_the_grid():
    state = timm_model(**VARIANTS["mlp_fc_norm"]).state_dict()
    with pytest.raises(TimmConversionError, match="MLP: give img_size"):
        vision_transformer_from_timm(state)
    with pytest.raises(TimmConversionError, match="MLP: give the window"):
        convert_timm_relpos_state_dict(state)


def test_layer_scale_fc_norm_and_eps_are_model_options():
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=1, num_heads=4,
                              fc_norm=True, norm_eps=1e-6, layer_scale_init=0.1)  # fmt: skip
    keys = set(model.state_dict())
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "fc_norm.weight"} <= keys and "norm.weight" not in keys
    assert model.blocks[0].norm1.eps == 1e-6 and torch.all(model.blocks[0].ls2.gamma == 0.1)
    default = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=1, num_heads=4)
    assert default.norm.eps == 1e-5 and not any(".ls" in k or "fc_norm" in k for k in default.state_dict())
    for bad in (dict(norm_eps=0.0), dict(layer_scale_init=-1.0)):
        with pytest.raises(OptionError, match=f"{next(iter(bad))}=.* must be a finite number > 0"):
            VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4, **bad)
