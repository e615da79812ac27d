"""Typed, frozen dataclass trees from plain dicts (YAML/JSON): the machinery under :mod:`xmdpt.core.config`.

:func:`from_plain` builds a dataclass from a mapping, recursing into dataclass-typed fields, checking
each value against its annotation (``bool``, ``int``, ``float``, ``str``, ``Optional``/unions,
fixed and variadic tuples) and refusing unknown keys; every error is a :class:`ConfigError` whose
message starts with the dotted key (``train.lr: expected float, got str 'fast'``).
:func:`parse_fields` / :func:`parse_value` are that checker with the error left to the caller: the
stage manifests (:mod:`xmdpt.core.contracts`) parse with them too and raise their own errors.
:func:`to_plain` is the inverse; :func:`section_hash` a stable short hash of such values.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import json
import types
import typing
from typing import Any, Callable, NoReturn, Optional, Union

__all__ = ["ConfigError", "check", "field_hints", "from_plain", "parse_fields", "parse_value", "section_hash", "to_plain"]

Fail = Callable[[str, str], NoReturn]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def to_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    return v


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved field annotations (cached)."""
    return typing.get_type_hints(cls)


def parse_value(value: Any, hint: Any, where: str, fail: Fail, *, int_to_float: bool = True) -> Any:
    """``value`` checked against the annotation ``hint`` and returned (lists become tuples).

    Understands ``Any``, ``bool``/``int``/``float``/``str`` (and other plain classes by
    ``isinstance``), ``Optional`` and unions (the first member that accepts the value), fixed and
    variadic tuples, ``dict``/``Mapping`` and nested dataclasses (:func:`parse_fields`). A bad value
    calls ``fail(where, reason)``, which must raise (a ``ValueError`` subclass); ``where`` is the
    dotted key. ``int_to_float`` stores an int given for a ``float`` as a float.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            fail(where, f"null is not allowed; expected {_type_name(hint)}")
        first: Optional[ValueError] = None
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(value, a, where, fail, int_to_float=int_to_float)
            except ValueError as e:
                first = first or e
        raise first  # type: ignore[misc]
    if dataclasses.is_dataclass(hint):
        return parse_fields(hint, value, where, fail, int_to_float=int_to_float)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail(where, f"expected a list, got {type(value).__name__} {value!r:.60}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            fail(where, f"expected {len(args)} values, got {len(value)}")
        return tuple(parse_value(v, a, f"{where}[{i}]", fail, int_to_float=int_to_float)
                     for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping, typing.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            fail(where, f"expected a mapping, got {type(value).__name__}")
        val_hint = args[1] if args else Any
        return {str(k): parse_value(v, val_hint, f"{where}.{k}", fail, int_to_float=int_to_float)
                for k, v in value.items()}
    if value is None:
        fail(where, f"null is not allowed; expected {_type_name(hint)}")
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and int_to_float:
            value = float(value)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:
        raise TypeError(f"{where}: unsupported annotation {hint!r}")
    if not ok:
        fail(where, f"expected {_type_name(hint)}, got {type(value).__name__} {value!r:.60}")
    return value


def parse_fields(cls: type, data: Any, where: str, fail: Fail, *, int_to_float: bool = True) -> Any:
    """The dataclass ``cls`` from the mapping ``data``: each key checked by :func:`parse_value`; an
    unknown key, or a missing one whose field has no default, is ``fail``-ed under ``where.key``."""
    if not isinstance(data, collections.abc.Mapping):
        fail(where, f"expected a mapping, got {type(data).__name__}")
    prefix = f"{where}." if where else ""
    hints = field_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        fail(f"{prefix}{unknown[0]}", f"unknown key; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(f"{prefix}{name}", "missing")
            continue
        kwargs[name] = parse_value(data[name], hints[name], f"{prefix}{name}", fail, int_to_float=int_to_float)
    return cls(**kwargs)


def _config_fail(where: str, reason: str) -> NoReturn:
    raise ConfigError(f"{where or 'config'}: {reason}")


def from_plain(cls: type, d: Any, prefix: str) -> Any:
    """The config dataclass ``cls`` from the mapping ``d``; errors are :class:`ConfigError` named
    ``{prefix}key`` (``prefix`` ends with a dot, or is empty at the top)."""
    return parse_fields(cls, d, prefix.rstrip("."), _config_fail)


def section_hash(*parts: Any) -> str:
    """Stable short hash of config sections / manifests (for content-addressed prefixes)."""

    def norm(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return to_plain(dataclasses.asdict(x))
        return to_plain(x)

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
