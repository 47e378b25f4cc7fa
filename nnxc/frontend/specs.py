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


def random_inputs(structs, seed: int = 0, dims: dict | None = None):
    """Random arrays for ShapeDtypeStructs; symbolic dims take their size from ``dims``."""
    from ..ir.types import dim_text
    from ._jax_compat import eval_dim
    rng = np.random.default_rng(seed)
    env = dict(dims or {})

    def one(s):
        shape = []
        for d in s.shape:
            d = dim_text(d)
            shape.append(d if isinstance(d, int) else int(eval_dim(d, env)) if all(
                n in env for n in re.findall(r"[A-Za-z_]\w*", d)) else 2)
        dt = np.dtype(s.dtype) if not str(s.dtype).startswith("key") else None
        if dt is None:
            return jax.random.split(jax.random.key(seed), shape[0]) if shape else jax.random.key(seed)
        if dt == np.bool_:
            return rng.random(shape) < 0.5
        if np.issubdtype(dt, np.integer):
            return rng.integers(0, 8, size=shape).astype(dt)
        return rng.standard_normal(shape).astype(dt)

    return jax.tree_util.tree_map(one, structs)
