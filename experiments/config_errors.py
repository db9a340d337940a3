"""`ConfigError` and the translation of Hydra / OmegaConf errors into one sentence that names the key."""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["ConfigError", "DataFileError", "SweepConfigError", "closest", "known_keys_sentence", "rephrase"]

# `compose_without(override_key)`: the config composed without the overrides of that key (None when it cannot be).
ComposeWithout = Callable[[str], "DictConfig | None"]


class ConfigError(ValueError):
    """A config the training cannot run: the message is one sentence naming the key and what is allowed."""


class DataFileError(ConfigError):
    """A data file or folder the training cannot read, in one sentence that names it and says what to do.

    It may be raised in a DataLoader worker (an image is checked when it is loaded). torch hands a worker's exception
    to the main process as `type(exc)(text)`, where text is "Caught DataFileError in DataLoader worker process N.
    Original Traceback (most recent call last): ... experiments.config_errors.DataFileError: <sentence>"
    (`torch._utils.ExceptionWrapper.reraise`, private: the public DataLoader offers no other way to get a worker's
    error back). The constructor takes the sentence back out of that text, so the user reads the sentence and not a
    worker's traceback; tests/experiments/test_bad_data.py pins the behaviour relied on.
    """

    def __init__(self, sentence: str):
        super().__init__(self._sentence(str(sentence)))

    @classmethod
    def _sentence(cls, text: str) -> str:
        if not (text.startswith(f"Caught {cls.__name__} ") and "\nOriginal Traceback" in text):
            return text
        heads = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
        for line in reversed(text.splitlines()):
            for head in heads:
                if line.startswith(head):
                    return line[len(head) :]
        return text


class SweepConfigError(ConfigError):
    """A mistake in the sweep (`sweep.*`, `ablation.*`) config, in one sentence that names the key to change."""


TYPE_WORDS = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "String": "a string",
}
MAX_KNOWN_KEYS = 12  # a list of more than 15 known keys is cut to 12 ("and N more") to keep the sentence readable
_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']*)'")


def closest(word: str, options: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the closest option, or an empty string."""
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def known_keys_sentence(keys: Sequence[str]) -> str:
    """`; known keys there: a, b, c`, or an empty string; past MAX_KNOWN_KEYS + 3 keys the first MAX_KNOWN_KEYS and
    `and N more`."""
    keys = list(keys)
    if not keys:
        return ""
    if len(keys) <= MAX_KNOWN_KEYS + 3:  # never "and 1 more"
        return f"; known keys there: {', '.join(keys)}"
    shown = f"{', '.join(keys[:MAX_KNOWN_KEYS])} and {len(keys) - MAX_KNOWN_KEYS} more"
    return f"; known keys there: {shown}"


def _parent_path(full_key: str) -> str:
    """`a.b.c` -> `a.b`; `a` -> `` (the root)."""
    return full_key.rsplit(".", 1)[0] if "." in full_key else ""


def _is_null(node: Any) -> bool:
    """Whether `node` is a config node holding null (`sweep: null` in conf/train.yaml)."""
    return isinstance(node, Node) and node._is_none()


def _node_keys(node: Any, path: str) -> list[str] | None:
    """The keys of a config node ([] for a null one, None when `node` is no mapping); the root leaves out `hydra`."""
    if _is_null(node):
        return []
    if not isinstance(node, DictConfig) or node._is_missing():
        return None
    keys = [str(k) for k in node]
    return [k for k in keys if k != "hydra"] if not path else keys


def _node_at(cfg: Any, path: str) -> Any:
    """The node object at `path` ('' is `cfg`), null ones included (`OmegaConf.select` gives those as None)."""
    node: Any = cfg
    for part in path.split(".") if path else ():
        if not isinstance(node, DictConfig) or node._is_none() or part not in node:
            return None
        node = node._get_node(part)
    return node


def _schema_keys(path: str) -> tuple[list[str] | None, Any]:
    """The keys the schema (`experiments.schema.TrainConfig`) gives the node at `path` (None when it names none)."""
    from experiments.schema import TrainConfig

    node = _node_at(OmegaConf.structured(TrainConfig), path)
    return _node_keys(node, path), node


def _known_keys(exc: OmegaConfBaseException, path: str, override: str | None, compose_without: ComposeWithout | None):
    """The keys really at `path`, first found of: the node the error carries, the config composed without the bad
    override, the schema. Returns (keys, or None when unknown; the node they come from, or None)."""
    carried = getattr(exc, "parent_node", None)
    keys = _node_keys(carried, path)
    if keys:
        return keys, carried
    # An empty carried node may be one that Hydra's override put in place of a null node: look at the real one.
    if compose_without is not None and override:
        try:
            cfg = compose_without(override)
            if cfg is not None:
                node = _node_at(cfg, path)
                real = _node_keys(node, path)
                if real is not None:
                    return real, node
        except Exception:  # a fallback of the error handler must never raise
            pass
    if keys is not None:
        return keys, carried
    try:
        return _schema_keys(path)
    except Exception:
        return None, None


def _dotted_suggestion(name: str, node: Any, keys: Sequence[str]) -> str:
    """` (did you mean 'trainer.epochs'?)` for `trainer_epochs`: a `_` written where a `.` belongs, or ''."""
    if not isinstance(node, DictConfig):
        return ""
    for i, ch in enumerate(name):
        head, tail = name[:i], name[i + 1 :]
        if ch != "_" or head not in keys:
            continue
        child_keys = _node_keys(node._get_node(head), head) or []  # type: ignore[union-attr]
        if tail in child_keys:
            return f" (did you mean {head + '.' + tail!r}?)"
    return ""


def _unknown_key(
    exc: OmegaConfBaseException, full_key: str, override: str | None, compose_without: ComposeWithout | None
) -> str:
    """`Unknown config key 'sweep.smapler.name' (did you mean 'sampler'?); known keys there: ...`"""
    # The key as the user wrote it (Hydra names the override) when the error is about a part of it.
    shown = override if override and (override == full_key or override.startswith(full_key + ".")) else full_key
    name = str(getattr(exc, "key", None) or full_key.split(".")[-1])
    path = _parent_path(full_key)
    keys, node = _known_keys(exc, path, override, compose_without)
    if keys:
        hint = ""
        with contextlib.suppress(Exception):  # a better hint is optional
            hint = _dotted_suggestion(name, node, keys)
        return f"Unknown config key {shown!r}{hint or closest(name, keys)}{known_keys_sentence(keys)}."
    if keys is not None and path:  # the node exists and is empty
        if _is_null(node):
            return f"Unknown config key {shown!r}: {path!r} is null in this config, so it has no keys."
        return f"Unknown config key {shown!r}: {path!r} has no keys yet; add one with '+{shown}=...'."
    return f"Unknown config key {shown!r}: check its spelling (see conf/)."


def _from_omegaconf(
    exc: OmegaConfBaseException, override: str | None = None, compose_without: ComposeWithout | None = None
) -> str | None:
    key = getattr(exc, "full_key", None) or ""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, ConfigKeyError | ConfigAttributeError) and key:
        return _unknown_key(exc, key, override, compose_without)
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


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes, outermost first (cycles cut)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain and len(chain) < 20:
        chain.append(cause)
        cause = cause.__cause__
    return chain


def _override_key(chain: Sequence[BaseException]) -> str | None:
    """The key of the override Hydra could not apply (`Could not override 'sweep.smapler.name'`), if it says."""
    for e in chain:
        m = _COULD_NOT_OVERRIDE.search(str(e))
        if m:
            return m.group(1)
    return None


def _plain(exc: BaseException) -> ConfigError:
    """The last resort: one sentence naming the key when any part of the error names one."""
    try:
        chain = _chain(exc)
        key = _override_key(chain) or next(
            (getattr(e, "full_key", None) for e in chain if getattr(e, "full_key", None)), None
        )
        if key:
            return ConfigError(f"The config key {key!r} cannot be set: check its spelling and value (see conf/).")
        text = str(exc).strip()
        return ConfigError(text.splitlines()[0] if text else type(exc).__name__)
    except Exception:
        return ConfigError(f"The config cannot be composed ({type(exc).__name__}): check the overrides.")


def rephrase(exc: BaseException, conf_dir: Path, compose_without: ComposeWithout | None = None) -> ConfigError:
    """One-sentence `ConfigError` for a Hydra compose / OmegaConf merge error (the original is not chained).

    `compose_without(override_key)`, when given, composes the config without the override of that key: the keys
    really at the misspelt key's place when the error does not carry its node. Never raises.
    """
    if isinstance(exc, ConfigError):
        return exc
    try:
        return _rephrase(exc, conf_dir, compose_without)
    except Exception:  # the error handler must not crash: degrade to a plain sentence
        return _plain(exc)


def _rephrase(exc: BaseException, conf_dir: Path, compose_without: ComposeWithout | None) -> ConfigError:
    chain = _chain(exc)
    override = _override_key(chain)
    # The informative error is the innermost OmegaConf one (Hydra wraps it).
    for cause in chain:
        if isinstance(cause, OmegaConfBaseException):
            sentence = _from_omegaconf(cause, override, compose_without)
            if sentence:
                return ConfigError(sentence)
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
    m = re.search(r"Could not delete from config\. '([^']*)' does not exist", text)
    if m:  # ~key of a key that is not there
        return ConfigError(_unknown_key(OmegaConfBaseException(), m.group(1), m.group(1), compose_without))
    if override is not None:
        return ConfigError(f"Unknown config key {override!r}: check its spelling (see conf/).")
    return ConfigError(text.splitlines()[0] if text else type(exc).__name__)
