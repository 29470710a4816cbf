"""Checking a config dataclass's values against their declared types and a table of ranges and
choices, before anything runs: one line naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

# key -> (low, high, low inclusive, high inclusive); None: unbounded on that side.
Range = tuple[float | None, float | None, bool, bool]


def at_least(low: float) -> Range:
    return (low, None, True, False)


def above(low: float) -> Range:
    return (low, None, False, False)


def unit(high_inclusive: bool = True) -> Range:  # [0, 1] or [0, 1)
    return (0.0, 1.0, True, high_inclusive)


def _describe(kind: type) -> str:
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"}.get(
        kind, kind.__name__
    )


def _ok_type(value: Any, kind: Any) -> bool:
    if kind is Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_ok_type(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_ok_type(v, item) for v in value)
    if origin is dict or kind is dict:
        return isinstance(value, dict)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    return isinstance(value, kind) if isinstance(kind, type) else True


def _kind_text(kind: Any) -> str:
    args = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_kind_text(k) for k in args) + " (or null)"
    if typing.get_origin(kind) in (list, tuple):
        return "a list"
    if kind is dict or typing.get_origin(kind) is dict:
        return "a mapping"
    return _describe(kind)


def check_fields(
    obj: Any,
    where: str,
    error: type[Exception],
    ranges: Mapping[str, Range] = {},
    choices: Mapping[str, tuple] = {},
) -> None:
    """Raise ``error`` for the first field of dataclass ``obj`` whose value is not of its
    declared type, outside its range, or not one of its choices."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{where}.{f.name}" if where else f.name
        kind = hints.get(f.name, Any)
        if not _ok_type(value, kind):
            raise error(f"{key} must be {_kind_text(kind)}, got {value!r}")
        if f.name in choices and value not in choices[f.name]:
            allowed = ", ".join(map(str, choices[f.name]))
            raise error(f"{key} must be one of {allowed}, got {value!r}")
        if f.name in ranges and value is not None and not isinstance(value, bool):
            low, high, low_in, high_in = ranges[f.name]
            bad = (low is not None and (value < low if low_in else value <= low)) or (
                high is not None and (value > high if high_in else value >= high)
            )
            if bad:
                lo = "-inf" if low is None else f"{low:g}"
                hi = "inf" if high is None else f"{high:g}"
                span = f"{'[' if low_in else '('}{lo}, {hi}{']' if high_in else ')'}"
                raise error(f"{key} must lie in {span}, got {value!r}")
