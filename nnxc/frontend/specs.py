"""Input specs: ``"f32[B,784]"`` strings, ShapeDtypeStructs and arrays -> abstract args."""
from __future__ import annotations

import re

import jax
import numpy as np

from ..errors import SpecError
from ..ir.types import DTYPE_NAMES, DimError, canonical_dim, solvable_symbols, to_dtype

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
    spec_dims(text, dims)
    return dtype, dims


def _split_dims(dims: str) -> list[str]:
    """Top-level comma-separated parts (commas inside ``floordiv(B,2)`` stay)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(dims):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(dims[start:i])
            start = i + 1
    parts.append(dims[start:])
    return [p.strip() for p in parts]


def spec_dims(text: str, dims: str) -> tuple:
    """The dims of a spec's ``dims`` text as IR dims (ints and canonical DimExprs)."""
    if not dims.strip():
        return ()
    out = []
    for d in _split_dims(dims):
        if not d:
            raise SpecError(f"bad input spec {text!r}: empty dim")
        try:
            out.append(canonical_dim(int(d) if d.isdigit() else d))
        except DimError as e:
            raise SpecError(f"bad input spec {text!r}: bad dim {d!r}: {e.msg}") from None
        if isinstance(out[-1], int) and out[-1] < 0:
            raise SpecError(f"bad input spec {text!r}: negative dim {d!r}")
    return tuple(out)


def check_solvable(specs: dict[str, tuple]) -> None:
    """Refuse symbols that cannot be read off the argument shapes when the model is called:
    each must be some input's dim alone (``B``) or linear in it (``2*K``, ``K+1``, ``B*T``
    once ``B`` is known). ``specs`` maps a spec's text to its dims."""
    dims = [d for ds in specs.values() for d in ds]
    known = solvable_symbols(dims)
    for text, ds in specs.items():
        for d in ds:
            if isinstance(d, str) and not d.symbols <= known:
                missing = ", ".join(sorted(d.symbols - known))
                raise SpecError(f"bad input spec {text!r}: the size of {missing} cannot be read "
                                f"off the argument shapes ({d} is not linear in it); use the "
                                f"symbol alone (like K) or linearly (like 2*K or K+1) in some input")


def abstract_args(args) -> tuple:
    """Map every leaf of ``args`` to a ShapeDtypeStruct; spec strings share one symbolic scope."""
    scope = jax.export.SymbolicScope()
    seen: dict[str, tuple] = {}

    def one(x):
        if isinstance(x, str):
            dtype, dims = parse_spec(x)
            seen[x] = spec_dims(x, dims)
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

    out = jax.tree_util.tree_map(one, tuple(args))
    if any(isinstance(d, str) for ds in seen.values() for d in ds):
        for leaf in jax.tree_util.tree_leaves(out):  # symbolic ShapeDtypeStructs given as such
            ds = tuple(canonical_dim(str(d)) for d in leaf.shape if not isinstance(d, int))
            if ds:
                seen.setdefault(str(leaf), ds)
        check_solvable(seen)
    return out


def concrete_shape(shape, size: int = 2) -> tuple[int, ...]:
    """A concrete shape for a possibly symbolic one (symbolic dims become ``size``)."""
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except Exception:  # noqa: BLE001 - symbolic
            out.append(size)
    return tuple(out)
