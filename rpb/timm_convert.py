"""timm's `VisionTransformerRelPos` (`vit_relpos_*`, `vit_srelpos_*`) as an `rpb.VisionTransformer`.

timm builds the bias of every block either from a table (`rel_pos_type='bias'`, Swin v1 / BEiT: the same rows as
ours) or with a small MLP over log-spaced offsets (`rel_pos_type='mlp'`, the default of its `vit_relpos_*` models,
Swin v2's idea). The MLP depends on the offset only, so evaluating it once on every offset of the window gives the
table that reproduces its bias exactly (with a class token timm pads the bias with zeros: three zero rows here).
LayerScale (`ls1`/`ls2`), the post-pool norm (`fc_norm`) and LayerNorm eps 1e-6 are options of our model.

    model = vision_transformer_from_timm(timm_model)            # a timm module: every setting read from it
    model = vision_transformer_from_timm(state_dict, img_size=224)  # a timm state dict: the rest inferred

Every key of timm's state dict is either converted or named in the one sentence of a `TimmConversionError` (a
ValueError) that refuses the conversion: never a silent partial load. What a state dict cannot tell: timm's
residual post-norm block (`*_rpn_*` models, `ResPostRelPosBlock`) has the same keys as its pre-norm block, so a
state dict is read as pre-norm (a module is checked); the pooling of a model with a class token is inferred as timm's
registered models set it (token without fc_norm, avg with it); LayerNorm eps is timm's 1e-6.

Torch only: timm itself is never imported here (a module is read through its attributes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .options import NUM_CLASS_TOKEN_ENTRIES, to_2tuple

__all__ = [
    "TIMM_NORM_EPS",
    "TimmConversionError",
    "convert_timm_relpos_state_dict",
    "is_timm_relpos_state_dict",
    "relpos_mlp_table",
    "timm_relpos_model_kwargs",
    "vision_transformer_from_timm",
]

TIMM_NORM_EPS = 1e-6  # timm's VisionTransformerRelPos: partial(nn.LayerNorm, eps=1e-6)
TIMM_LAYER_SCALE_INIT = 1e-6  # its init_values (any value: the gains are loaded)

# timm key -> ours, for the keys that only move ({i}: block index). Bias keys are handled apart.
_SAME = (
    r"cls_token",
    r"patch_embed\.proj\.(weight|bias)",
    r"blocks\.\d+\.norm[12]\.(weight|bias)",
    r"blocks\.\d+\.attn\.qkv\.(weight|bias)",
    r"blocks\.\d+\.attn\.proj\.(weight|bias)",
    r"blocks\.\d+\.ls[12]\.gamma",
    r"blocks\.\d+\.mlp\.fc[12]\.(weight|bias)",
    r"norm\.(weight|bias)",
    r"fc_norm\.(weight|bias)",
    r"head\.(weight|bias)",
)
_SAME_RE = re.compile("|".join(f"(?:{p})" for p in _SAME))
_BIAS_RE = re.compile(r"(?:blocks\.(\d+)\.attn\.rel_pos|shared_rel_pos)\.(.+)")
_TABLE = "relative_position_bias_table"
_MLP_KEYS = {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
# Keys of timm options our model does not have, and the option to turn off.
_REFUSED = {
    r"\.attn\.[qk]_norm\.": "qk_norm=True (normalised queries and keys)",
    r"^patch_embed\.norm\.": "a norm in the patch embedding",
    r"^reg_token": "register tokens",
    r"^pos_embed": "an absolute position embedding",
}


class TimmConversionError(ValueError):
    """A timm model or state dict this conversion cannot reproduce exactly; one sentence says what and why."""


def is_timm_relpos_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether `state_dict` is timm's VisionTransformerRelPos (its bias lives under `attn.rel_pos` or
    `shared_rel_pos`; ours under `attn.relative_position_bias`)."""
    return any(".attn.rel_pos." in k or k.startswith("shared_rel_pos.") for k in state_dict)


def _log_offsets(window_size: tuple[int, int], mode: str) -> torch.Tensor:
    """timm's `gen_relative_log_coords` (pretrained window (0, 0), as VisionTransformerRelPos builds it):
    (2Wh-1, 2Ww-1, 2) log-spaced (dy, dx), in float32 as timm computes them."""
    wh, ww = window_size
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32)
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(dy, dx, indexing="ij")).permute(1, 2, 0).contiguous()
    if mode == "swin":  # Swin v2: scaled to [-8, 8], log2, over log2(8)
        coords[:, :, 0] /= wh - 1
        coords[:, :, 1] /= ww - 1
        coords *= 8
        return torch.sign(coords) * torch.log2(1.0 + coords.abs()) / math.log2(8)
    return torch.sign(coords) * torch.log(1.0 + coords.abs())  # timm's "cr"


def relpos_mlp_table(
    mlp: Mapping[str, torch.Tensor], window_size: int | tuple[int, int], class_token: bool = False
) -> torch.Tensor:
    """timm's `RelPosMlp` evaluated on every offset of `window_size`: a ((2Wh-1)(2Ww-1) [+3], num_heads) table in
    our row order (query minus key, row = (dy + Wh-1)(2Ww-1) + dx + Ww-1, timm's too).

    Args:
        mlp: the MLP's weights, keys `mlp.fc1.weight`, `mlp.fc1.bias`, `mlp.fc2.weight` and `mlp.fc2.bias` (timm's
            "cr" mode, identity output) or without `mlp.fc2.bias` (its "swin" mode: 16 * sigmoid of the output).
        window_size: the window the table covers (timm evaluates it on the token grid).
        class_token: add three zero rows (timm pads the bias of prefix tokens with zeros).
    """
    mode = "cr" if "mlp.fc2.bias" in mlp else "swin"
    w1 = mlp["mlp.fc1.weight"]
    offsets = _log_offsets(to_2tuple(window_size), mode).to(w1.dtype)
    hidden = F.relu(F.linear(offsets, w1, mlp["mlp.fc1.bias"]))
    table = F.linear(hidden, mlp["mlp.fc2.weight"], mlp.get("mlp.fc2.bias"))  # (2Wh-1, 2Ww-1, nh)
    if mode == "swin":
        table = 16 * torch.sigmoid(table)
    table = table.reshape(-1, table.shape[-1])
    if class_token:
        table = torch.cat([table, table.new_zeros(NUM_CLASS_TOKEN_ENTRIES, table.shape[-1])])
    return table


def _refuse_unknown(state_dict: Mapping[str, Any]) -> None:
    for key in state_dict:
        for pattern, what in _REFUSED.items():
            if re.search(pattern, key):
                raise TimmConversionError(
                    f"the timm model has {what} (key {key!r}), which rpb.VisionTransformer does not have: "
                    "it cannot be converted exactly."
                )
    unknown = [k for k in state_dict if not _SAME_RE.fullmatch(k) and not _BIAS_RE.fullmatch(k)]
    if unknown:
        raise TimmConversionError(
            f"{len(unknown)} key(s) of the timm state dict have no place in rpb.VisionTransformer "
            f"({', '.join(unknown[:4])}{', ...' if len(unknown) > 4 else ''}): not a VisionTransformerRelPos of a "
            "kind this conversion knows, so nothing was loaded."
        )


def _depth(state_dict: Mapping[str, Any]) -> int:
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def _biases(state_dict: Mapping[str, Any]) -> dict[int | None, dict[str, torch.Tensor]]:
    """{block index (None: shared by every block): {key below rel_pos: tensor}}, each a table or an MLP."""
    biases: dict[int | None, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if m := _BIAS_RE.fullmatch(key):
            biases.setdefault(None if m.group(1) is None else int(m.group(1)), {})[m.group(2)] = value
    for block, parts in biases.items():
        where = "shared_rel_pos" if block is None else f"blocks.{block}.attn.rel_pos"
        if set(parts) == {_TABLE}:
            continue
        needed = _MLP_KEYS - {"mlp.fc2.bias"}
        if not needed <= set(parts) or not set(parts) <= _MLP_KEYS:
            raise TimmConversionError(
                f"{where} holds {sorted(parts)}, neither a bias table ({_TABLE}) nor timm's RelPosMlp "
                f"({sorted(_MLP_KEYS)}): it cannot be converted."
            )
    return biases


def convert_timm_relpos_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    window_size: int | tuple[int, int] | None = None,
    class_token: bool | None = None,
) -> dict[str, torch.Tensor]:
    """timm's VisionTransformerRelPos state dict as ours (same tensors; each bias as a table per block).

    Args:
        state_dict: timm's `model.state_dict()`.
        window_size: the window of the tables made from an MLP bias (timm's token grid reproduces it exactly); not
            needed for bias tables, which keep their size (resize them with `resize_rel_pos_bias_in_state_dict`).
        class_token: whether the model has one (default: whether `cls_token` is in the state dict).

    Raises:
        TimmConversionError: a key that has no place in our model, or an MLP bias without `window_size`.
    """
    _refuse_unknown(state_dict)
    class_token = "cls_token" in state_dict if class_token is None else class_token
    biases = _biases(state_dict)
    depth = _depth(state_dict)
    out = {k: v for k, v in state_dict.items() if _SAME_RE.fullmatch(k)}
    shared = biases.pop(None, None)
    if shared is not None and biases:
        raise TimmConversionError("the timm state dict has both a shared bias and per-block biases: not a timm model.")
    for block in range(depth):
        parts = shared if shared is not None else biases.get(block)
        if parts is None:
            continue  # a block without a bias: the model is built without one (use_relative_position=False)
        if _TABLE in parts:
            table = parts[_TABLE].clone()
        else:
            if window_size is None:
                raise TimmConversionError(
                    "the timm model computes its bias with an MLP: give the window (the token grid, img_size // "
                    "patch_size) to evaluate it on."
                )
            table = relpos_mlp_table(parts, window_size, class_token)
        out[f"blocks.{block}.attn.relative_position_bias.{_TABLE}"] = table
    return out


def timm_relpos_model_kwargs(
    state_dict: Mapping[str, torch.Tensor],
    img_size: int | tuple[int, int] | None = None,
    global_pool: str | None = None,
) -> dict[str, Any]:
    """The `rpb.VisionTransformer` keyword arguments of the model a timm VisionTransformerRelPos state dict came
    from (see the module docstring for what a state dict cannot tell).

    Args:
        img_size: the image size; None: the grid of the bias tables times the patch size (tables only).
        global_pool: "token" or "avg"; None: as timm's registered models (token with a class token and no fc_norm).
    """
    _refuse_unknown(state_dict)
    proj = state_dict["patch_embed.proj.weight"]  # (C, in_channels, ph, pw)
    embed_dim, in_channels, ph, pw = proj.shape
    if ph != pw:
        raise TimmConversionError(f"the timm model has {ph}x{pw} patches: rpb.VisionTransformer takes square ones.")
    biases = _biases(state_dict)
    parts = next(iter(biases.values()), None)
    if parts is None:
        raise TimmConversionError("the timm state dict has no relative position bias: not a VisionTransformerRelPos.")
    class_token = "cls_token" in state_dict
    if _TABLE in parts:
        num_heads = parts[_TABLE].shape[1]
        if img_size is None:
            rows = parts[_TABLE].shape[0] - (NUM_CLASS_TOKEN_ENTRIES if class_token else 0)
            side = (math.isqrt(rows) + 1) // 2
            if (2 * side - 1) ** 2 != rows:
                raise TimmConversionError("the bias table is not square: give img_size.")
            img_size = side * ph
    else:
        num_heads = parts["mlp.fc2.weight"].shape[0]
        if img_size is None:
            raise TimmConversionError("the timm model computes its bias with an MLP: give img_size.")
    fc_norm = "fc_norm.weight" in state_dict
    if global_pool is None:
        global_pool = "token" if class_token and not fc_norm else "avg"
    head = state_dict.get("head.weight")
    return {
        "img_size": img_size,
        "patch_size": ph,
        "in_channels": in_channels,
        "num_classes": 0 if head is None else head.shape[0],
        "embed_dim": embed_dim,
        "depth": _depth(state_dict),
        "num_heads": num_heads,
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "class_token": class_token,
        "global_pool": global_pool,
        "fc_norm": fc_norm,
        "norm_eps": TIMM_NORM_EPS,
        "layer_scale_init": TIMM_LAYER_SCALE_INIT if "blocks.0.ls1.gamma" in state_dict else None,
        "use_relative_position": True,
        "pos_embed": "none",
    }


def _module_settings(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A timm VisionTransformerRelPos module's state dict and what only the module knows (img_size, pooling)."""
    blocks = list(getattr(model, "blocks", []))
    post_norm = [type(b).__name__ for b in blocks if not hasattr(b, "ls1")]
    if post_norm:
        raise TimmConversionError(
            f"the timm model's blocks are {post_norm[0]} (residual post-norm, the *_rpn_* models): "
            "rpb.VisionTransformer's blocks are pre-norm, so it cannot be converted exactly."
        )
    pool = getattr(model, "global_pool", "avg")
    if pool not in ("avg", "token"):
        raise TimmConversionError(
            f"the timm model pools with global_pool={pool!r}: convert one that uses avg or token."
        )
    return model.state_dict(), {"img_size": tuple(model.patch_embed.img_size), "global_pool": pool}


def vision_transformer_from_timm(
    source: torch.nn.Module | Mapping[str, torch.Tensor],
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
):
    """An `rpb.VisionTransformer` with the weights of a timm VisionTransformerRelPos, in eval mode.

    Args:
        source: the timm model, or its state dict.
        img_size: the image size (a state dict with an MLP bias needs it; a module knows its own).
        overrides: more VisionTransformer keyword arguments (e.g. `attn_impl="reference"`, `global_pool`).
    """
    from .vit import VisionTransformer

    settings: dict[str, Any] = {}
    if isinstance(source, torch.nn.Module):
        source, settings = _module_settings(source)
    if img_size is not None:
        settings["img_size"] = img_size
    pool = overrides.pop("global_pool", settings.pop("global_pool", None))
    kwargs = timm_relpos_model_kwargs(source, settings.pop("img_size", None), pool) | overrides
    model = VisionTransformer(**kwargs).to(source["patch_embed.proj.weight"].dtype)
    state = convert_timm_relpos_state_dict(source, model.grid_size, kwargs["class_token"])
    model.load_state_dict(state, strict=True)
    return model.eval()
