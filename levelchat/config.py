"""Typed configuration from a TOML file, the environment and flags, in that order of precedence.

A config is a frozen dataclass whose fields have defaults.  ``build`` merges layers, rejects
unknown keys and values of the wrong type with a ``ConfigError`` naming the key, then calls the
dataclass's own ``validate()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def from_env(cls: type[Any], prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``PREFIX_FIELD_NAME`` variables, as strings to be coerced; unknown ones are rejected."""
    env = os.environ if environ is None else environ
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :].lower()
        if name not in names:
            raise ConfigError(f"unknown environment setting {key}")
        out[name] = value
    return out


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value == "" and type(None) in args):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} is not a valid {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{name}: {value!r} is not a boolean")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name}: {value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not an integer") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: {value!r} is not a string")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a JSON list") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: {value!r} is not a list")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(name, item, v) for v in value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                # key=value or key:value (whichever comes first: keys hold neither)
                pairs = [re.split("[=:]", p, maxsplit=1) for p in value.split(",") if p]
                if not all(len(p) == 2 for p in pairs):
                    raise ConfigError(f"{name}: expected JSON or key=value,key=value") from None
                value = dict(pairs)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: {value!r} is not a table")
        kt, vt = typing.get_args(tp) or (str, str)
        return {_coerce(name, kt, k): _coerce(name, vt, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: {value!r} is not a table")
        try:
            return build(tp, value)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    raise ConfigError(f"{name}: unsupported type {tp}")  # pragma: no cover


def build(cls: type[T], *layers: Mapping[str, Any]) -> T:
    """Merge layers (later wins), type-check every value, reject unknown keys, validate."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"unknown setting {key!r}")
            merged[key] = _coerce(key, hints[key], value)
    obj = cls(**merged)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
