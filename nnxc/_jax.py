"""The one place that imports JAX internals; they change between releases.

- ``primitive(name)``: the JAX Primitive with that name.
- ``record_types`` / ``enum_types`` / ``prng_impl``: JAX's param types (``nnxc.ir.params``
  turns params into printable IR attributes and back with them).
- ``user_frame`` / ``scope_path``: provenance of a jaxpr equation.
- ``bind``: bind a primitive with decoded attributes.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import re
from typing import Any

import jax
import numpy as np
from jax._src import core


Jaxpr = core.Jaxpr
ClosedJaxpr = core.ClosedJaxpr
Literal = core.Literal
DropVar = core.DropVar
Primitive = core.Primitive

SCOPE_MARK = "nnxc:"  # named scopes the frontend pushes for module paths start with this

# Modules that define primitives jax.extend.core.primitives does not export (a graph parsed
# from text binds them by name before any trace has met them). Missing ones are skipped:
# the list is for this JAX range, and tests/test_jax_module.py checks it still finds them.
_PRIM_MODULES = (
    "jax._src.lax.lax", "jax._src.lax.slicing", "jax._src.lax.convolution",
    "jax._src.lax.windowed_reductions", "jax._src.lax.special", "jax._src.lax.ann",
    "jax._src.lax.linalg", "jax._src.lax.fft", "jax._src.lax.parallel", "jax._src.lax.other",
    "jax._src.lax.control_flow.loops", "jax._src.lax.control_flow.conditionals",
    "jax._src.lax.control_flow.solves", "jax._src.lax.control_flow.common",
    "jax._src.random.prng", "jax._src.ad_util", "jax._src.custom_derivatives", "jax._src.pjit",
    "jax._src.ad_checkpoint", "jax._src.dispatch", "jax._src.core",
    "jax._src.cudnn.fused_attention_stablehlo", "jax._src.nn.functions",
    "jax._src.numpy.lax_numpy", "jax._src.random", "jax._src.callback", "jax._src.debugging",
    "jax._src.export.shape_poly",  # dim_as_value
)


@functools.cache
def _primitives() -> dict[str, Primitive]:
    """Every primitive by name: the public ``jax.extend.core.primitives`` first."""
    from jax.extend.core import primitives as public
    table: dict[str, Primitive] = {}
    for mod in [public] + [m for m in map(_import, _PRIM_MODULES) if m is not None]:
        for value in vars(mod).values():
            if isinstance(value, Primitive):
                table.setdefault(value.name, value)
    return table


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def primitive(name: str) -> Primitive | None:
    return _primitives().get(name)


def register_primitive(p: Primitive) -> None:
    """Remember a primitive met while tracing (covers ones defined outside jax._src)."""
    _primitives().setdefault(p.name, p)


# -- JAX's param types (private modules) -------------------------------------------

def record_types() -> dict[str, type]:
    """JAX's NamedTuple param types by name (dimension numbers of conv, gather, scatter)."""
    from jax._src.lax import convolution, slicing
    from jax._src.lax import lax as lax_mod
    return {
        "ConvDimensionNumbers": convolution.ConvDimensionNumbers,
        "GatherDimensionNumbers": slicing.GatherDimensionNumbers,
        "ScatterDimensionNumbers": slicing.ScatterDimensionNumbers,
        "RaggedDotDimensionNumbers": lax_mod.RaggedDotDimensionNumbers,
    }


def sharding_spec(v) -> tuple | None:
    """The axes of a ``NamedSharding`` or ``PartitionSpec`` param (ops traced under a mesh
    carry their output's sharding) as a tuple of None / axis name / tuple of names; None for
    anything else. ``UNCONSTRAINED`` entries are not representable: ValueError."""
    if isinstance(v, jax.sharding.NamedSharding):
        v = v.spec
    elif not isinstance(v, jax.sharding.PartitionSpec):
        return None
    out = []
    for axis in tuple(v):
        if axis is None or isinstance(axis, str):
            out.append(axis)
        elif isinstance(axis, tuple) and all(isinstance(a, str) for a in axis):
            out.append(tuple(axis))
        else:
            raise ValueError(f"sharding entry {axis!r} in {v!r}")
    return tuple(out)


def is_single_device_sharding(v) -> bool:
    return isinstance(v, jax.sharding.SingleDeviceSharding)


def single_device_sharding():
    """A ``SingleDeviceSharding`` param back: the first device of the process (the IR keeps no
    device; an nnxc graph compiled without a mesh runs on one device)."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def placement_devices(target) -> int | None:
    """How many devices a ``device_put`` target places on: 1 for None (the default device), a
    ``jax.Device`` or a one-device sharding; the mesh size of a ``NamedSharding`` (also on an
    abstract mesh); None for anything else (a memory kind, a layout)."""
    if target is None or isinstance(target, jax.Device):
        return 1
    if isinstance(target, jax.sharding.NamedSharding):
        return int(target.mesh.size)
    if isinstance(target, jax.sharding.Sharding):
        try:
            return len(target.device_set)
        except Exception:  # noqa: BLE001 - a sharding without concrete devices
            return None
    return None


def is_partition_spec(v) -> bool:
    return isinstance(v, jax.sharding.PartitionSpec)


def sharding_from_spec(kind: str, spec: tuple):
    """The param back from ``sharding_spec``: a NamedSharding on the abstract mesh the graph is
    being lowered under (or a PartitionSpec). None, JAX's "no sharding given", when no mesh
    with those axes is set: the values do not depend on it, only the placement."""
    mesh = jax.sharding.get_abstract_mesh()
    names = {a for axis in spec if axis is not None for a in ((axis,) if isinstance(axis, str) else axis)}
    if mesh.empty or not names <= set(mesh.axis_names):
        return None
    p = jax.sharding.PartitionSpec(*spec)
    return jax.sharding.NamedSharding(mesh, p) if kind == "NamedSharding" else p


@functools.cache
def enum_types() -> dict[str, type]:
    """JAX's enum param types by name."""
    from jax._src.lax import lax, slicing
    out = {c.__name__: c for c in (slicing.GatherScatterMode, lax.Precision, lax.RoundingMethod,
                                   lax.DotAlgorithmPreset, lax.RandomAlgorithm)}
    for extra in ("AccuracyMode",):
        if hasattr(lax, extra):
            out[extra] = getattr(lax, extra)
    out[jax.lax.FftType.__name__] = jax.lax.FftType  # public: jnp.fft's fft_type
    return out


def prng_impl(name: str):
    """A PRNG implementation by name (threefry2x32, rbg, ...)."""
    from jax._src.random import prng
    return prng.prngs[name]


def is_dim_expr(v) -> bool:
    """Whether ``v`` is a JAX symbolic dimension expression."""
    return type(v).__name__ == "_DimExpr"


# -- binding ---------------------------------------------------------------------

# Params each primitive takes that the IR leaves out when they are None (an explicit table
# for this JAX range; tests/test_frontend_trust.py checks it against what tracing omits).
# Binding a node restores them, so a graph parsed from text in a new process runs.
OMITTED_BY_PRIMITIVE: dict[str, tuple[str, ...]] = {
    "broadcast_in_dim": ("sharding",), "convert_element_type": ("sharding",), "iota": ("sharding",),
    "reshape": ("dimensions", "sharding"), "reduce_sum": ("out_sharding",), "mul": ("out_dtype",),
    "conv_general_dilated": ("out_sharding", "precision", "preferred_element_type"),
    "dot_general": ("out_sharding", "precision", "preferred_element_type"),
    **{name: ("accuracy",) for name in ("cbrt", "cos", "exp", "exp2", "expm1", "log", "log1p",
                                        "logistic", "rsqrt", "sin", "sqrt", "tan", "tanh")},
}
_implicit: dict[str, dict[str, Any]] = {
    name: dict.fromkeys(params) for name, params in OMITTED_BY_PRIMITIVE.items()}


def _with_omitted(prim: Primitive, params: dict, call):
    """``call(params)`` with the params the IR leaves out (``OMITTED_BY_PRIMITIVE``) as None."""
    extra = _implicit.get(prim.name)
    return call({**extra, **params} if extra else params)


def bind(prim: Primitive, args, params: dict) -> list:
    """``prim.bind`` that restores params the IR leaves out (None-valued shardings etc.)."""
    out = _with_omitted(prim, params, lambda p: prim.bind(*args, **p))
    return list(out) if prim.multiple_results else [out]


def abstract_eval(prim: Primitive, avals, params: dict) -> list:
    """Output avals of a primitive (JAX's own shape rule)."""
    out, _ = _with_omitted(prim, params, lambda p: prim.abstract_eval(*avals, **p))
    return list(out) if prim.multiple_results else [out]


def shaped_array(shape, dtype):
    return core.ShapedArray(tuple(shape), dtype)


# -- provenance ------------------------------------------------------------------

_LIB_DIRS = tuple(
    p for p in (
        jax.__file__.rsplit("/", 1)[0] + "/",
        importlib.import_module("flax").__file__.rsplit("/", 1)[0] + "/",
        np.__file__.rsplit("/", 1)[0] + "/",
        __file__.rsplit("/", 1)[0] + "/",  # nnxc itself (this file is nnxc/_jax.py)
    )
)
_SKIP = re.compile(r"(site-packages/(optax|chex|ml_dtypes|jaxlib|einops)/)|^<frozen|^<string>")


def user_frame(source_info) -> str | None:
    """``file:line`` of the innermost frame outside JAX, Flax, NumPy and nnxc."""
    tb = source_info.traceback
    if tb is None:
        return None
    for fr in tb.frames:
        if _is_library(fr.file_name):
            continue
        return f"{_short_path(fr.file_name)}:{fr.line_num}"
    return None


@functools.cache
def _is_library(name: str) -> bool:
    return name.startswith(_LIB_DIRS) or _SKIP.search(name) is not None


@functools.cache
def _short_path(name: str) -> str:
    import os
    try:
        rel = os.path.relpath(name)
    except ValueError:
        return name
    return rel if not rel.startswith("..") else name


def scope_path(source_info) -> str | None:
    """The innermost module path pushed by the frontend, or None."""
    for scope in reversed(source_info.name_stack.stack):
        name = getattr(scope, "name", "")
        if name.startswith(SCOPE_MARK):
            return name[len(SCOPE_MARK):]
    return None


def named_scope(path: str):
    return jax.named_scope(SCOPE_MARK + path)


def dimension_as_value(d):
    """A dim (int or symbolic) as a JAX scalar value."""
    return core.dimension_as_value(d)
