"""The model's options in one torch-free place: allowed values, defaults and the rules between them.

The layers, `rpb.vit.VisionTransformer` and the training config (`experiments.config`) all use these; none of
them spells an allowed value, a default or a rule again. A broken rule raises `OptionError` (a `ValueError`) whose
sentence is written once, as a template over option names, and rendered in the caller's vocabulary: constructor
arguments (`window_size=(5, 5)`, the default) or config keys (`model.rpb.window_size=[5, 5]`, see
`OptionError.render`).

Template fields: `<name>` is the option's name, `<name=>` its name and current value, `<name=LITERAL>` its name and
a suggested value (a Python literal: `<class_token=False>`).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Allowed values (the first is the default where there is one).
BIAS_TYPES = ("2d", "1d")  # offsets on the token grid | along the flattened sequence
MODES = ("clip", "local")  # global attention, offsets past the window share edge entries | Swin windows
ATTN_IMPLS = ("auto", "reference", "sdpa", "flex")
GLOBAL_POOLS = ("token", "avg")
POS_EMBEDS = ("none", "learned", "sincos")  # no absolute position | learned as in ViT | fixed 2d sin-cos as in MAE

# Defaults.
INIT_STD = 0.02  # truncated-normal std (cut at +-2 std) of linear weights, bias tables, learned position embeddings
CLS_TOKEN_INIT_STD = 1e-6  # as timm's VisionTransformer
BIAS_TYPE, MODE, ATTN_IMPL, GLOBAL_POOL, POS_EMBED = BIAS_TYPES[0], MODES[0], ATTN_IMPLS[0], GLOBAL_POOLS[0], "none"
NUM_CLASS_TOKEN_ENTRIES = 3  # BEiT's class-to-token, token-to-class, class-to-class rows of a bias table
# LayerNorm epsilon: torch's nn.LayerNorm default, which the guide's blocks use (it never sets one); timm's ViTs 1e-6.
NORM_EPS = 1e-5
LAYER_SCALE_INIT = None  # no LayerScale (timm's `init_values`: a learned per-channel gain on each residual branch)
FC_NORM = False  # the final norm before pooling (ViT); True: after pooling (timm's fc_norm, as MAE / BEiT)

# The training guide's `rpb_kwargs` and the VisionTransformer keyword argument each key sets.
RPB_KWARGS = {
    "num_heads": "num_heads",
    "window_size": "window_size",
    "bias_type": "bias_type",
    "init_std": "rpb_init_std",
    "learnable": "rpb_learnable",
    "mode": "window_mode",
    "shift_windows": "shift_windows",
}

Pair = tuple[int, int]
_FIELD = re.compile(r"<(\w+)(?:(=)([^<>]*))?>")


class OptionError(ValueError):
    """A model option that breaks a rule: one sentence, rendered for constructor arguments by default.

    Attributes:
        template: the sentence with `<name>`, `<name=>` and `<name=LITERAL>` fields.
        values: the current value of every option the sentence names with `<name=>`.
        option: the option to change first (the config layer names its key).
    """

    def __init__(self, template: str, option: str, **values: Any) -> None:
        self.template, self.option, self.values = template, option, values
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None, literal: Callable[[Any], str] = repr) -> str:
        """The sentence with option names from `names` (others as they are) and values written by `literal`."""
        names = names or {}

        def field(match: re.Match) -> str:
            key, eq, text = match.groups()
            name = names.get(key, key)
            if not eq:
                return name
            value = ast.literal_eval(text) if text else self.values[key]
            return f"{name}={literal(value)}"

        return _FIELD.sub(field, self.template)


def to_2tuple(x: int | str | Sequence[int], name: str = "window_size", minimum: int = 1) -> Pair:
    """An int, an "HxW" string ("7x7", or "7" for a square) or a pair as a (height, width) tuple of ints >= `minimum`
    (1: sizes; 0: shifts, as Swin's (3, 0)). The one spelling of a window in training, sweeps and ablations.

    Raises:
        OptionError: not an int, an "HxW" string or a pair, or a side below `minimum`.
    """
    if isinstance(x, str):
        x = x.strip().lower().split("x") if "x" in x.lower() else [x.strip(), x.strip()]
    try:
        if isinstance(x, bool):
            raise TypeError
        pair = (int(x), int(x)) if isinstance(x, int) else tuple(int(v) for v in x)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < minimum:
        what = "positive ints" if minimum == 1 else f"ints of at least {minimum}"
        raise OptionError(f"<{name}=> must be an int, an 'HxW' string or a pair of {what}.", name, **{name: x})
    return pair  # type: ignore[return-value]


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`.

    Raises:
        OptionError: naming `name` and the choices.
    """
    if value not in choices:
        raise OptionError(f"<{name}=> is not allowed: choose one of {', '.join(choices)}.", name, **{name: value})
    return value


def resolve_head_dim(embed_dim: int, num_heads: int, head_dim: int | None = None) -> int:
    """The width per head: `head_dim`, or embed_dim // num_heads when the heads divide the width.

    Raises:
        OptionError: a non-positive count, or heads that do not divide the width with no `head_dim`.
    """
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("head_dim", head_dim)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise OptionError(f"<{name}=> must be a positive int.", name, **{name: value})
    if head_dim is not None:
        return head_dim
    if embed_dim % num_heads:
        divisors = ", ".join(str(h) for h in range(1, min(embed_dim, 16) + 1) if embed_dim % h == 0)
        raise OptionError(
            f"<num_heads=> does not divide <embed_dim=>: choose one of {divisors} (or set <head_dim>).",
            "num_heads",
            num_heads=num_heads,
            embed_dim=embed_dim,
        )
    return embed_dim // num_heads


def check_pool(global_pool: str, class_token: bool) -> None:
    """Raises OptionError: an unknown pool, or class-token pooling without a class token."""
    check_choice("global_pool", global_pool, GLOBAL_POOLS)
    if global_pool == "token" and not class_token:
        raise OptionError(
            "<global_pool=> needs a class token: set <class_token=True> or <global_pool='avg'>.",
            "global_pool",
            global_pool=global_pool,
        )


def check_pos_embed(pos_embed: str, embed_dim: int) -> str:
    """Raises OptionError: an unknown kind, or 2d sin-cos on a width that is not a multiple of 4."""
    check_choice("pos_embed", pos_embed, POS_EMBEDS)
    if pos_embed == "sincos" and embed_dim % 4:
        raise OptionError(
            "<pos_embed=> needs <embed_dim=> divisible by 4 (sin and cos of y and x): use a multiple of 4 "
            "or <pos_embed='learned'>.",
            "pos_embed",
            pos_embed=pos_embed,
            embed_dim=embed_dim,
        )
    return pos_embed


def window_length(window_size: int | Sequence[int]) -> int:
    """A 1d window given as an int W, or as a (Wh, Ww) pair meaning Wh * Ww sequence positions."""
    if isinstance(window_size, int):
        return to_2tuple(window_size)[0]
    wh, ww = to_2tuple(window_size)
    return wh * ww


def num_relative_distances(
    window_size: int | Sequence[int], bias_type: str = BIAS_TYPE, class_token: bool = False
) -> int:
    """Rows of a bias table: (2Wh-1)(2Ww-1) for 2d, 2W-1 for 1d, plus 3 with a class token."""
    check_choice("bias_type", bias_type, BIAS_TYPES)
    if bias_type == "2d":
        wh, ww = to_2tuple(window_size)
        n = (2 * wh - 1) * (2 * ww - 1)
    else:
        n = 2 * window_length(window_size) - 1
    return n + (NUM_CLASS_TOKEN_ENTRIES if class_token else 0)


def check_init_std(init_std: float, name: str = "rpb_init_std") -> float:
    """Raises OptionError: a negative or non-finite std (0 gives zeros)."""
    if not math.isfinite(init_std) or init_std < 0:
        raise OptionError(f"<{name}=> must be a finite number >= 0 (0 gives zeros).", name, **{name: init_std})
    return float(init_std)


def check_norm_options(norm_eps: float = NORM_EPS, layer_scale_init: float | None = LAYER_SCALE_INIT) -> None:
    """Raises OptionError: a LayerNorm epsilon or a LayerScale initial gain that is not a finite number > 0."""
    for name, value in (("norm_eps", norm_eps), ("layer_scale_init", layer_scale_init)):
        if value is None and name == "layer_scale_init":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            off = " (None: no LayerScale)" if name == "layer_scale_init" else ""
            raise OptionError(f"<{name}=> must be a finite number > 0{off}.", name, **{name: value})


def check_window(
    window_size: int | Sequence[int] | None,
    grid_size: Pair,
    *,
    bias_type: str = BIAS_TYPE,
    window_mode: str = MODE,
    class_token: bool = False,
    shift_windows: bool = False,
    use_relative_position: bool = True,
) -> Pair | int:
    """The window of a model on a (Gh, Gw) token grid: (Wh, Ww), or W positions for a 1d bias.

    `window_size=None` means the whole grid (global attention with a full bias). The rules: a 2d window fits in the
    grid; a 1d window fits in the sequence; local windows are 2d, tile the grid and leave no place for a class
    token; shifted windows are local ones. Windows matter only to a bias or to local attention.

    Raises:
        OptionError: the first rule broken, naming the option to change.
    """
    check_choice("window_mode", window_mode, MODES)
    if shift_windows and window_mode != "local":
        raise OptionError("<shift_windows=True> needs <window_mode='local'>.", "shift_windows")
    if use_relative_position:
        check_choice("bias_type", bias_type, BIAS_TYPES)
    gh, gw = grid_size
    local = window_mode == "local"
    if local and use_relative_position and bias_type != "2d":
        raise OptionError(
            "<window_mode='local'> works on 2d windows: set <bias_type='2d'> or <window_mode='clip'>.", "window_mode"
        )
    if local and class_token:
        raise OptionError(
            "<window_mode='local'> has no place for a class token: set <class_token=False> and <global_pool='avg'>.",
            "window_mode",
        )
    if not use_relative_position and not local:
        return grid_size  # global attention without a bias: no window to check
    if window_size is None:
        return grid_size if local or bias_type == "2d" else gh * gw
    if use_relative_position and bias_type == "1d" and not local:
        length = window_length(window_size)
        if length > gh * gw:
            raise OptionError(
                f"<window_size=> spans {length} positions but the sequence has {gh * gw} tokens"
                + (f" ({gh}x{gw} grid)" if gh > 1 else "")
                + f": use a window of at most {gh * gw} positions.",
                "window_size",
                window_size=window_size,
            )
        return length
    window = to_2tuple(window_size)
    if window[0] > gh or window[1] > gw:
        raise OptionError(
            f"<window_size=> is larger than the {gh}x{gw} token grid: use a window of at most {gh}x{gw} "
            "(or a larger image / smaller patch).",
            "window_size",
            window_size=window_size,
        )
    if local and (gh % window[0] or gw % window[1]):
        raise OptionError(
            f"<window_mode='local'> needs <window_size=> to tile the {gh}x{gw} token grid: pick a window that "
            "divides it or use <window_mode='clip'>.",
            "window_size",
            window_size=window_size,
        )
    return window


def window_shift(window_size: Pair, grid_size: Pair, shift_size: int | Sequence[int]) -> Pair:
    """Swin's shift of one block: `shift_size` per axis, 0 along an axis the window already covers.

    Raises:
        OptionError: a negative shift, or a shift not smaller than the window.
    """
    shift = to_2tuple(shift_size, "shift_size", minimum=0)
    shift = tuple(0 if w >= g else s for s, w, g in zip(shift, window_size, grid_size))
    if any(s >= w for s, w in zip(shift, window_size)):
        raise OptionError(
            f"<shift_size=> must be smaller than the window {window_size[0]}x{window_size[1]}.",
            "shift_size",
            shift_size=shift_size,
        )
    return shift  # type: ignore[return-value]


def swin_shift(window_size: Pair) -> Pair:
    """The shift of every second block with shifted windows: half a window per axis (a side of 1: 0)."""
    return (window_size[0] // 2, window_size[1] // 2)


def rpb_kwargs_to_options(rpb_kwargs: Mapping[str, Any], num_heads: int) -> dict[str, Any]:
    """The guide's `rpb_kwargs` as VisionTransformer keyword arguments (`RPB_KWARGS`), `num_heads` left out.

    Raises:
        OptionError: an unknown key, or a `num_heads` that differs from the model's.
    """
    unknown = sorted(set(rpb_kwargs) - set(RPB_KWARGS))
    if unknown:
        raise OptionError(f"unknown rpb_kwargs key(s) {unknown}; allowed keys are {list(RPB_KWARGS)}.", "rpb_kwargs")
    if rpb_kwargs.get("num_heads", num_heads) != num_heads:
        raise OptionError(
            f"rpb_kwargs num_heads={rpb_kwargs['num_heads']} differs from <num_heads=>; make them equal.",
            "num_heads",
            num_heads=num_heads,
        )
    return {RPB_KWARGS[k]: v for k, v in rpb_kwargs.items() if k != "num_heads"}


def check_model_options(
    *,
    img_size: int | Sequence[int],
    patch_size: int,
    embed_dim: int,
    num_heads: int,
    head_dim: int | None = None,
    class_token: bool = True,
    global_pool: str = GLOBAL_POOL,
    attn_impl: str = ATTN_IMPL,
    pos_embed: str = POS_EMBED,
    use_relative_position: bool = True,
    window_size: int | Sequence[int] | None = None,
    window_mode: str = MODE,
    shift_windows: bool = False,
    bias_type: str = BIAS_TYPE,
    rpb_init_std: float = INIT_STD,
    norm_eps: float = NORM_EPS,
    layer_scale_init: float | None = LAYER_SCALE_INIT,
) -> dict[str, Any]:
    """Every rule of a VisionTransformer's options, in the order a reader would fix them.

    Returns:
        {"grid_size": (Gh, Gw), "head_dim": int, "window_size": (Wh, Ww) or W for a 1d bias}.

    Raises:
        OptionError: the first rule broken.
    """
    img = to_2tuple(img_size, "img_size")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise OptionError("<patch_size=> must be a positive int.", "patch_size", patch_size=patch_size)
    if img[0] % patch_size or img[1] % patch_size:
        raise OptionError(
            "<patch_size=> does not divide <img_size=>: choose a patch size that divides the image size.",
            "patch_size",
            patch_size=patch_size,
            img_size=img_size,
        )
    grid = (img[0] // patch_size, img[1] // patch_size)
    resolved_head_dim = resolve_head_dim(embed_dim, num_heads, head_dim)
    check_pool(global_pool, class_token)
    check_choice("attn_impl", attn_impl, ATTN_IMPLS)
    check_pos_embed(pos_embed, embed_dim)
    check_norm_options(norm_eps, layer_scale_init)
    if use_relative_position:
        check_init_std(rpb_init_std)
    window = check_window(
        window_size,
        grid,
        bias_type=bias_type,
        window_mode=window_mode,
        class_token=class_token,
        shift_windows=shift_windows,
        use_relative_position=use_relative_position,
    )
    return {"grid_size": grid, "head_dim": resolved_head_dim, "window_size": window}
