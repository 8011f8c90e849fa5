"""Validation of stage parameters: frozen dataclasses of JSON-basic values.

A parameter may itself be a frozen dataclass (a nested option such as ``retrieve``'s
``hubness``): it is given as a mapping in YAML and validated the same way, field by field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from cir.errors import ConfigError

_BASIC = (bool, int, float, str, type(None))


def build_params(cls: type, values: dict[str, Any], where: str) -> Any:
    """Construct the params dataclass ``cls`` from ``values``, checking names and types.

    Raises:
        ConfigError: naming the stage (``where``), the bad parameter and the valid ones.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(sorted(fields)) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ConfigError(
                f"{where}: parameter {name!r} must be {_describe(hints[name])}, "
                f"got {value!r} ({type(value).__name__})"
            )
    values = {
        name: _nested(value, hints[name], f"{where}, {name}") or _freeze(value, hints[name])
        for name, value in values.items()
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _nested(value: Any, hint: Any, where: str) -> Any:
    """A mapping given for a dataclass-typed parameter, built into that dataclass (else None)."""
    cls = _dataclass_of(hint)
    if cls is None or not isinstance(value, dict):
        return None
    return build_params(cls, value, where)


def _dataclass_of(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        found = [h for h in get_args(hint) if dataclasses.is_dataclass(h)]
        return found[0] if found else None
    return None


def params_to_dict(params: Any) -> dict[str, Any]:
    """The params as plain JSON-basic values (tuples become lists)."""
    return _plain(dataclasses.asdict(params))


def _freeze(value: Any, hint: Any) -> Any:
    """Lists given for tuple-typed params become tuples, so params stay immutable."""
    if isinstance(value, list) and _accepts_tuple(hint):
        return tuple(value)
    return value


def _accepts_tuple(hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is tuple:
        return True
    return origin in (Union, types.UnionType) and any(_accepts_tuple(h) for h in get_args(hint))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict | hint)
    if hint is Any:
        return _is_json(value)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin in (list, tuple):
        args = get_args(hint)
        inner = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_matches(v, inner) for v in value)
    if origin is dict:
        args = get_args(hint) or (str, Any)
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None) or hint is None:
        return value is None
    return isinstance(value, hint)


def _is_json(value: Any) -> bool:
    if isinstance(value, _BASIC):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is not None:
        return origin.__name__
    if dataclasses.is_dataclass(hint):
        names = ", ".join(f.name for f in dataclasses.fields(hint))
        return f"a mapping with keys among {names}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
