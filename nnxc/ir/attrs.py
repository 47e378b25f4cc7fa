"""Attribute values: printable literals only.

An attribute is None, a bool, int, float, str, a tuple of attributes, or one of the small
classes below. The frontend turns JAX params into these; the backends turn them back.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from .types import DTYPE_NAMES, is_plain_symbol


class DType(NamedTuple):
    """A dtype as an attribute (``new_dtype=f32``)."""
    name: str


class SymDim(NamedTuple):
    """A symbolic dim inside an attribute (``new_sizes=(B,8)``)."""
    expr: str


class EnumVal(NamedTuple):
    """An enum member (``mode=GatherScatterMode.FILL_OR_DROP``)."""
    cls: str
    member: str


class Record(NamedTuple):
    """A structured parameter (``ConvDimensionNumbers(lhs_spec=(0,3,1,2), ...)``)."""
    cls: str
    fields: tuple  # ((name, value), ...)

    def get(self, name: str, default=None):
        for k, v in self.fields:
            if k == name:
                return v
        return default


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = repr(float(x))
    return text


def format_attr(v: Any) -> str:
    """The text form of one attribute value."""
    if v is None:
        return "None"
    if v is True:
        return "True"
    if v is False:
        return "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, DType):
        return v.name
    if isinstance(v, SymDim):
        if is_plain_symbol(v.expr) and v.expr not in DTYPE_NAMES and v.expr not in ("None", "True", "False", "inf", "nan"):
            return v.expr
        return f"dim({v.expr})"
    if isinstance(v, EnumVal):
        return f"{v.cls}.{v.member}"
    if isinstance(v, Record):
        return f"{v.cls}(" + ", ".join(f"{k}={format_attr(x)}" for k, x in v.fields) + ")"
    if isinstance(v, tuple):
        if len(v) == 1:
            return f"({format_attr(v[0])},)"
        return "(" + ",".join(format_attr(x) for x in v) + ")"
    raise TypeError(f"not an attribute value: {v!r} ({type(v).__name__})")


def check_attr(v: Any) -> None:
    """Raise TypeError unless ``v`` is a printable attribute value."""
    format_attr(v)
