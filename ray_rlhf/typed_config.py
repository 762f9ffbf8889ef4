"""Typed-dataclass machinery behind `ray_rlhf.config`: build frozen dataclasses from nested
mappings with type checks, dotted overrides, and errors that name the dotted key.

Generic on purpose (no ray_rlhf sections here), so the rules are tested once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

import yaml

from ray_rlhf.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value is unknown, mistyped or inconsistent; the message names the key."""

    kind = "config error"
    hint = (
        "Fix the key in the config file or on the command line (section.key=value); "
        "`ray-rlhf config` prints every key with its default."
    )


def check(ok: bool, key: str, problem: str) -> None:
    """Raise `ConfigError("<key>: <problem>")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Scientific notation that YAML 1.1 leaves a string (`1e-5`, `3E4`)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type hint `tp`, converting YAML scalars where lossless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            check(type(None) in args, key, "must not be null")
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads `1e-5` (no dot) as a string
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        check(ok, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        check(ok, key, f"expected an integer, got {value!r}")
        return value
    if tp in (bool, str):
        check(isinstance(value, tp), key, f"expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, naming the dotted key of any problem."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {names}"
            raise ConfigError(f"{dotted}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from None
    except ValueError as exc:  # a section's own validation (e.g. ToyWorldConfig)
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), YAML-safe."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        check(isinstance(child, dict), dotted, f"'{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b.c=value`; the value is parsed as YAML (`0.1`, `true`, `[a, b]`, `null`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. ppo.kl.coef=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both_maps else value
    return out
