"""JAX primitive params <-> printable IR attributes, and dim expressions as JAX dims.

``encode_param`` turns a param of a jaxpr equation into an attribute the IR text prints
(ints, floats, strings, dtypes, tuples, enums, records, symbolic dims); ``decode_param``
turns it back for binding the primitive; ``eval_dim`` evaluates a dim expression with JAX
symbolic dims for unknown symbols. JAX's own param types come from ``nnxc._jax``.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from .. import _jax as jx
from .attrs import DType, EnumVal, Record, SymDim
from .types import dtype_name, parse_dim, to_dtype


class UnsupportedParam(TypeError):
    pass


def encode_param(v: Any) -> Any:
    """A JAX param as a printable IR attribute; raises UnsupportedParam otherwise."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, enum.Enum):
        return EnumVal(type(v).__name__, v.name)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if jx.is_dim_expr(v):
        return SymDim(str(v).replace(" ", ""))
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return DType(dtype_name(v))
    if isinstance(v, jx.Primitive):  # select_and_scatter_add's select_prim (ge: max pooling)
        if jx.primitive(v.name) is not v:
            raise UnsupportedParam(f"primitive {v.name!r} is not one of JAX's own")
        return Record("Primitive", (("name", v.name),))
    if type(v).__name__ == "PRNGImpl":  # a NamedTuple of functions: keep its name only
        return Record("PRNGImpl", (("name", v.name),))
    if hasattr(v, "_fields") and isinstance(v, tuple):
        return Record(type(v).__name__, tuple((f, encode_param(getattr(v, f))) for f in v._fields))
    if isinstance(v, (tuple, list)):
        return tuple(encode_param(x) for x in v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return Record(type(v).__name__, tuple((f.name, encode_param(getattr(v, f.name)))
                                              for f in dataclasses.fields(v)))
    if str(v).startswith("key<"):  # a PRNG key dtype
        return DType(str(v))
    if jx.is_single_device_sharding(v):  # the device is the one compiled on: not kept
        return Record("SingleDeviceSharding", ())
    try:
        spec = jx.sharding_spec(v)
    except ValueError as e:
        raise UnsupportedParam(str(e)) from None
    if spec is not None:  # traced under a mesh: the spec, the mesh is the one compiled under
        kind = "PartitionSpec" if jx.is_partition_spec(v) else "NamedSharding"
        return Record(kind, (("spec", spec),))
    raise UnsupportedParam(f"parameter of type {type(v).__name__} ({v!r:.60})")


def decode_param(v: Any, dims: dict | None = None) -> Any:
    """An IR attribute back to the JAX param; symbolic dims are evaluated in ``dims``."""
    if isinstance(v, DType):
        return to_dtype(v.name)
    if isinstance(v, SymDim):
        return eval_dim(v.expr, {} if dims is None else dims)  # not `or`: an empty env is shared
    if isinstance(v, EnumVal):
        cls = jx.enum_types().get(v.cls)
        if cls is None:
            raise UnsupportedParam(f"unknown enum {v.cls}")
        return cls[v.member]
    if isinstance(v, Record):
        if v.cls == "PRNGImpl":
            return jx.prng_impl(v.get("name"))
        if v.cls == "Primitive":
            prim = jx.primitive(v.get("name"))
            if prim is None:
                raise UnsupportedParam(f"unknown primitive {v.get('name')!r}")
            return prim
        if v.cls == "SingleDeviceSharding":
            return jx.single_device_sharding()
        if v.cls in ("NamedSharding", "PartitionSpec"):
            return jx.sharding_from_spec(v.cls, v.get("spec"))
        cls = jx.record_types().get(v.cls)
        if cls is None:
            raise UnsupportedParam(f"unknown record type {v.cls}")
        return cls(**{k: decode_param(x, dims) for k, x in v.fields})
    if isinstance(v, tuple):
        return tuple(decode_param(x, dims) for x in v)
    return v


def eval_dim(expr: str, env: dict) -> Any:
    """Evaluate a dim expression (``2*B+1``, ``floordiv(B,2)``) with symbols from ``env``.

    The one dimension-expression parser (``nnxc.ir.types.parse_dim``) does the parsing; unknown
    symbols evaluate to JAX symbolic dims, so the result can stay symbolic.
    """
    from .ops import JAX_DIM_OPS
    try:
        return parse_dim(expr).evaluate(env, JAX_DIM_OPS)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed expression from IR text
        raise ValueError(f"bad dim expression {expr!r}: {e}") from None
