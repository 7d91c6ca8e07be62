"""Typed configuration helpers: build a dataclass config from a user mapping, with clear errors.

Every pluggable class (geometry, renderer, guidance, ...) declares a nested `Config` dataclass. The system
merges the user's YAML / command-line values into it, so an unknown or mistyped key is rejected before any
weights load, with a suggestion of the key that was probably meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from distill3d.errors import ConfigError

T = TypeVar("T")
__all__ = [
    "ConfigError",
    "build_config",
    "config_class",
    "import_target",
    "instantiate",
    "suggest",
    "target_class",
]


def suggest(key: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{_join(prefix, close[0])}'?"
    return "valid keys: " + ", ".join(sorted(candidates))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light type checking of one config value against its annotation (numbers, bools, strings, nesting)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping of settings, got {value!r}")
        return build_config(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
    elif origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"'{where}' must be one of {list(args)}, got {value!r}")
    return value


def build_config(cls: type[T], values: Mapping[str, Any] | DictConfig | None, where: str) -> T:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and wrong types with one line.

    Nested dataclass fields are built recursively; the dataclass's own checks (`__post_init__` or a
    `validate()` method) run too, and their ValueErrors become ConfigErrors naming the config section.
    """
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{_join(where, key)}': {suggest(key, sorted(fields), where)}")
        kwargs[key] = _coerce(value, hints.get(key, Any), _join(where, key))
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except (ValueError, TypeError) as e:
        message = str(e).splitlines()[0]
        raise ConfigError(message if not where or where in message else f"{where}: {message}") from None
    return obj


def import_target(path: str, where: str) -> type:
    """Import 'package.module.Class' (Hydra's `_target_` convention)."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"{where}._target_ '{path}' cannot be imported: give an importable class path"
        ) from None


def config_class(cls: type) -> type | None:
    """The typed config a class takes: its `Config` attribute, or its first constructor argument's dataclass."""
    explicit = getattr(cls, "Config", None)
    if explicit is not None:
        return explicit
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: treat as a plain-kwargs class
        return None
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if not params:
        return None
    hint = hints.get(params[0])
    for option in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(option) and isinstance(option, type):
            return option
    return None


def target_class(section: Mapping[str, Any] | DictConfig, where: str) -> tuple[type, dict[str, Any]]:
    """(the class named by `section._target_`, the section's other keys)."""
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    section = dict(section or {})
    if "_target_" not in section:
        raise ConfigError(f"{where} needs a '_target_' naming the class to build")
    return import_target(section.pop("_target_"), where), section


def check_section(section: Mapping[str, Any] | DictConfig, where: str) -> tuple[type, Any]:
    """Validate a `_target_` section without building it: (class, typed config or the plain kwargs)."""
    cls, values = target_class(section, where)
    config_cls = config_class(cls)
    if config_cls is not None:
        return cls, build_config(config_cls, values, where)
    accepted = inspect.signature(cls).parameters
    for key in values:
        if key not in accepted:
            raise ConfigError(
                f"unknown key '{where}.{key}': {suggest(key, [k for k in accepted if k != 'self'])}"
            )
    return cls, values


def instantiate(section: Mapping[str, Any] | DictConfig, where: str, *args: Any, **kwargs: Any) -> Any:
    """Build `section._target_` from its typed `Config` (or plain kwargs) and the given dependencies.

    Classes with a `from_config(cfg, *deps)` classmethod are built through it (denoisers, conditions: they load
    or encode); others as `cls(cfg, *deps)`. A ValueError from construction is bad input: it becomes a
    ConfigError naming the section.
    """
    cls, cfg = check_section(section, where)
    try:
        if not isinstance(cfg, dict):
            factory = getattr(cls, "from_config", None)
            return factory(cfg, *args, **kwargs) if callable(factory) else cls(cfg, *args, **kwargs)
        return cls(*args, **cfg, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
