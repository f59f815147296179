"""Strict parsing of nested config data into frozen dataclasses, and back.

The schema of a config is its dataclasses: field types (``int``, ``bool``, ``str``, ``float``,
``Literal[...]`` enums, ``tuple[T, ...]``, ``dict[str, T]``, nested dataclasses, ``X | None``) are
read from the type hints and enforced. Unknown keys are rejected, booleans must be real booleans
(``"True"`` is not a boolean), and every error names the file, the key path, what was expected and
what was found. Cross-field consistency checks live in each dataclass's ``_check(path)`` method.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Acc:
...     bits: int = 32
...     overflow: Literal["saturate", "wrap", "error"] = "saturate"
>>> parse(Acc, {"bits": 16}, "acc")
Acc(bits=16, overflow='saturate')
>>> parse(Acc, {"bits": "16"}, "acc")
Traceback (most recent call last):
...
runtime.errors.TargetError: acc.bits: expected an integer, found '16' (str)
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import TargetError

_MISSING = dataclasses.MISSING


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse(cls: type, data: Any, path: str = "", error: type[Exception] = TargetError):
    """Build ``cls`` from plain data (dicts, lists, scalars), strictly."""
    return _parse_value(cls, data, path, error)


def _parse_dataclass(cls: type, data: Any, path: str, error: type[Exception]):
    if not isinstance(data, dict):
        raise error(f"{path or '<top>'}: expected a table of {cls.__name__} fields, found {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(
            f"{_join(path, unknown[0])}: unknown key; expected one of {sorted(fields)}"
            + (f" (other unknown keys: {unknown[1:]})" if len(unknown) > 1 else "")
        )
    kwargs = {}
    for name, field in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = _parse_value(hints[name], data[name], sub, error)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            raise error(f"{sub}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(path, error)
    return obj


def _parse_value(tp: Any, value: Any, path: str, error: type[Exception]):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path, error)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        non_none = [o for o in options if o is not type(None)]
        if len(non_none) == 1:
            return _parse_value(non_none[0], value, path, error)
        raise TypeError(f"unsupported union in schema: {tp}")  # schema bug, not user input
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise error(f"{path}: expected one of {list(allowed)}, found {_describe(value)}")
        return value
    if origin is tuple:
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            raise error(f"{path}: expected a list, found {_describe(value)}")
        return tuple(_parse_value(item, v, f"{path}[{i}]", error) for i, v in enumerate(value))
    if origin is dict:
        _, item = get_args(tp)
        if not isinstance(value, dict):
            raise error(f"{path}: expected a table, found {_describe(value)}")
        return {str(k): _parse_value(item, v, _join(path, str(k)), error) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{path}: expected a boolean (true/false), found {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{path}: expected an integer, found {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{path}: expected a number, found {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(f"{path}: expected a string, found {_describe(value)}")
        return value
    raise TypeError(f"unsupported type in schema: {tp}")  # schema bug, not user input


def unparse(obj: Any, *, drop_none: bool = True) -> Any:
    """The plain-data form of a parsed config (inverse of :func:`parse`)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            v = unparse(getattr(obj, f.name), drop_none=drop_none)
            if v is None and drop_none:
                continue
            out[f.name] = v
        return out
    if isinstance(obj, tuple):
        return [unparse(v, drop_none=drop_none) for v in obj]
    if isinstance(obj, dict):
        return {k: unparse(v, drop_none=drop_none) for k, v in obj.items()}
    return obj
