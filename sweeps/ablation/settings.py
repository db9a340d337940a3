"""What an ablation compares: the factors of its grid, a setting (one cell without its seed) and its names.

A setting is named three ways: by its key, as a user types it (``ablation.baseline``, ``rpb-report --baseline``:
none, abs, 2d-7x7-local), by its label, as tables, plots and W&B's ``setting`` key show it ("rpb 2d 7x7"), and by
the params of its trials (`trial_setting`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rpb import options as model_options

BIAS_TYPES = (*model_options.BIAS_TYPES, "none")  # none: model.rpb.enabled=false
MODES = model_options.MODES
POS_EMBEDS = model_options.POS_EMBEDS
# The config paths of the grid's factors: the params of an ablation trial.
WINDOW, BIAS, MODE, ENABLED, POS, SEED = (
    "model.rpb.window_size",
    "model.rpb.bias_type",
    "model.rpb.mode",
    "model.rpb.enabled",
    "model.pos_embed",
    "seed",
)
DEFAULT_BASELINE = "none"  # no position information: what a setting is compared with unless ablation.baseline says


def setting_label(pos_embed: str, rpb_enabled: bool, bias_type: str, window: str, mode: str) -> str:
    """A plain name for one position setting: "none", "abs (learned)", "rpb 2d 7x7", "abs (sincos)+rpb 2d 7x7 local"."""
    parts = [] if pos_embed == "none" else [f"abs ({pos_embed})"]
    if rpb_enabled:
        parts.append(f"rpb {bias_type} {window}" + (f" {mode}" if mode != "clip" else ""))
    elif mode != "clip":
        parts.append(f"{mode} {window}")  # windows without a bias
    return "+".join(parts) or "none"


@dataclass(frozen=True)
class Setting:
    """One cell of the ablation grid without its seed; ordered by bias type, mode, window area, position embedding.

    Runs without a bias are one setting whatever window and mode their config names (`window_size` None).

    Attributes:
        bias_type: "2d" | "1d" | "none".
        mode: "clip" | "local".
        window_size: (Wh, Ww), None without a bias table.
        pos_embed: the run's ``model.pos_embed`` ("none", "learned", "sincos"; `rpb.options.POS_EMBEDS`), None
            for a run whose config predates that key.
    """

    bias_type: str
    mode: str
    window_size: tuple[int, int] | None
    pos_embed: str | None = None

    def _order(self) -> tuple:
        h, w = self.window_size or (0, 0)
        return (self.bias_type, self.mode, h * w, h, self.pos_embed or "")

    def __lt__(self, other: Setting) -> bool:
        return self._order() < other._order()

    @property
    def absolute(self) -> bool:
        """Whether the model adds an absolute position embedding."""
        return self.pos_embed not in (None, "none")

    @property
    def window_label(self) -> str:
        return "none" if self.window_size is None else f"{self.window_size[0]}x{self.window_size[1]}"

    @property
    def key(self) -> str:
        """How a user names it (``ablation.baseline``, ``rpb-report --baseline``): none, abs, abs-sincos, 2d-7x7,
        2d-7x7-local, 2d-7x7+abs (abs: a learned absolute embedding)."""
        pos = "abs" if self.pos_embed == "learned" else f"abs-{self.pos_embed}"
        if self.window_size is None:
            return pos if self.absolute else "none"
        mode = "" if self.mode == "clip" else f"-{self.mode}"
        return f"{self.bias_type}-{self.window_label}{mode}" + (f"+{pos}" if self.absolute else "")

    @property
    def label(self) -> str:
        """How tables and plots name it, as W&B's ``setting`` key does (`setting_label`): "none",
        "abs (learned)", "rpb 2d 7x7", "abs (sincos)+rpb 2d 7x7 local"."""
        enabled = self.window_size is not None
        return setting_label(self.pos_embed or "none", enabled, self.bias_type, self.window_label, self.mode)


NO_BIAS = Setting(bias_type="none", mode="clip", window_size=None)


def setting_of(rpb: Mapping[str, Any], pos_embed: Any = None) -> Setting:
    """The setting of a run from its ``model.rpb`` values (enabled, bias_type, mode, window_size: an int, a pair or
    "HxW") and its ``model.pos_embed`` (None when the config has none)."""
    pos = None if pos_embed is None else str(pos_embed).lower()
    if not rpb.get("enabled", True) or rpb.get("bias_type") == "none":
        return Setting("none", "clip", None, pos)
    window = rpb.get("window_size", (0, 0))
    if isinstance(window, str):
        window = [int(v) for v in window.lower().split("x")]
    window = (int(window), int(window)) if isinstance(window, int) else (int(window[0]), int(window[-1]))
    return Setting(str(rpb.get("bias_type", "2d")), str(rpb.get("mode", "clip")), window, pos)


def trial_setting(params: Mapping[str, Any]) -> Setting:
    """The setting of one ablation cell from its params (the factors `sweeps.ablation.grid` searches)."""
    rpb = {"window_size": params.get(WINDOW), "bias_type": params.get(BIAS, "2d"), "mode": params.get(MODE, "clip")}
    rpb["enabled"] = params.get(ENABLED, True)
    return setting_of(rpb, params.get(POS))


def find_setting(name: str, settings: Sequence[Setting]) -> Setting:
    """The setting a user named by its key or label (case and spaces ignored; "none" also names the no-position
    setting of a study whose runs do not name their position embedding).

    Raises:
        KeyError: one sentence listing the settings' keys.
    """
    want = " ".join(str(name).lower().split())
    for s in settings:
        if want in (s.key.lower(), s.label.lower()):
            return s
    raise KeyError(
        f"the baseline {name!r} names no setting of this ablation; choose one of: "
        + ", ".join(s.key for s in sorted(settings))
        + " (bias type none must be in ablation.bias_types for the default baseline)"
    )

