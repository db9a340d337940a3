"""`ConfigError` and the translation of Hydra / OmegaConf errors into one sentence that names the key."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["ConfigError", "closest", "rephrase"]


class ConfigError(ValueError):
    """A config the training cannot run: the message is one sentence naming the key and what is allowed."""


TYPE_WORDS = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "String": "a string",
}


def closest(word: str, options: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the closest option, or an empty string."""
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _schema_fields(full_key: str) -> list[str]:
    """Field names of the schema node that holds `full_key` (empty when unknown)."""
    from experiments.schema import TrainConfig

    node: type = TrainConfig
    for part in full_key.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        default = fields[part].default_factory() if part in fields else None  # type: ignore[misc]
        if not dataclasses.is_dataclass(default):
            return []
        node = type(default)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _from_omegaconf(exc: OmegaConfBaseException) -> str | None:
    key = getattr(exc, "full_key", None) or ""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, ConfigKeyError | ConfigAttributeError) and key:
        name = key.split(".")[-1]
        fields = _schema_fields(key)
        known = f"; known keys there: {', '.join(fields)}" if fields else ""
        return f"Unknown config key {key!r}{closest(name, fields)}{known}."
    if isinstance(exc, ValidationError) and key:
        key = re.sub(r"\[\d+\]$", "", key)
        m = re.match(r"Value '(.*)' of type '.*' could not be converted to (\w+)", first_line)
        if m:
            return f"{key} must be {TYPE_WORDS.get(m.group(2), m.group(2))}, got {m.group(1)!r}."
        m = re.match(r"Value '(.*)' is not a valid bool", first_line)
        if m:
            return f"{key} must be true or false, got {m.group(1)!r}."
        m = re.match(r"Invalid value assigned: (\w+) is not a ListConfig", first_line)
        if m:
            return f"{key} must be a list (e.g. [7, 7]), got a value of type {m.group(1)}."
        m = re.match(r"Cannot assign (\w+) to Dict", first_line)
        return f"{key} has the wrong type: {first_line}."
    if key:
        return f"{key}: {first_line}."
    return None


def rephrase(exc: BaseException, conf_dir: Path) -> ConfigError:
    """One-sentence `ConfigError` for a Hydra compose / OmegaConf merge error (the original is not chained)."""
    if isinstance(exc, ConfigError):
        return exc
    # The informative error is the innermost OmegaConf one (Hydra wraps it).
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException):
            sentence = _from_omegaconf(cause)
            if sentence:
                return ConfigError(sentence)
        cause = cause.__cause__
    text = str(exc)
    m = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        return ConfigError(
            f"{group}={option} is not a config in conf/{group}{closest(option, options)}: "
            f"choose one of {', '.join(options)}."
        )
    m = re.search(r"Error parsing override '(.*)'", text)
    if m:
        return ConfigError(f"The override {m.group(1)!r} cannot be parsed: write it as key=value (e.g. model.depth=2).")
    m = re.search(r"Could not override '(.*)'", text)
    if m:
        return ConfigError(f"Unknown config key {m.group(1)!r}: check its spelling (see conf/).")
    return ConfigError(text.splitlines()[0] if text else type(exc).__name__)
