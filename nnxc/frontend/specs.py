"""Input specs: ``"f32[B,784]"`` strings, ShapeDtypeStructs and arrays -> abstract args."""
from __future__ import annotations

import re

import jax
import numpy as np

from ..errors import SpecError
from ..ir.types import DTYPE_NAMES, to_dtype

_SPEC = re.compile(r"\s*([a-z][a-z0-9]*|key<[a-z]+>)\s*\[([^\]]*)\]\s*")


def parse_spec(text: str) -> tuple[str, str]:
    """Split ``"f32[B,784]"`` into (dtype name, dims text); SpecError when malformed."""
    m = _SPEC.fullmatch(text)
    if not m:
        raise SpecError(f"bad input spec {text!r}: expected dtype[dims], e.g. f32[B,784]")
    dtype, dims = m.group(1), m.group(2)
    if dtype not in DTYPE_NAMES:
        raise SpecError(f"bad input spec {text!r}: unknown dtype {dtype!r} "
                        f"(one of {', '.join(sorted(d for d in DTYPE_NAMES if '<' not in d))})")
    for d in (x.strip() for x in dims.split(",") if x.strip()):
        if not re.fullmatch(r"\d+|[A-Za-z_][A-Za-z0-9_]*|[A-Za-z0-9_+*\- ()]+", d):
            raise SpecError(f"bad input spec {text!r}: bad dim {d!r}")
    return dtype, dims


def abstract_args(args) -> tuple:
    """Map every leaf of ``args`` to a ShapeDtypeStruct; spec strings share one symbolic scope."""
    scope = jax.export.SymbolicScope()

    def one(x):
        if isinstance(x, str):
            dtype, dims = parse_spec(x)
            try:
                shape = jax.export.symbolic_shape(dims, scope=scope) if dims.strip() else ()
            except Exception as e:  # noqa: BLE001 - jax raises several types here
                raise SpecError(f"bad input spec {x!r}: {e}") from None
            return jax.ShapeDtypeStruct(shape, to_dtype(dtype))
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        if isinstance(x, (int, float, bool, np.generic)):
            a = np.asarray(x)
            return jax.ShapeDtypeStruct(a.shape, a.dtype)
        raise SpecError(f"example argument of type {type(x).__name__} is not an array, "
                        "ShapeDtypeStruct or spec string like 'f32[B,784]'")

    return jax.tree_util.tree_map(one, tuple(args))


def concrete_shape(shape, size: int = 2) -> tuple[int, ...]:
    """A concrete shape for a possibly symbolic one (symbolic dims become ``size``)."""
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except Exception:  # noqa: BLE001 - symbolic
            out.append(size)
    return tuple(out)
