"""Static indexing traced with symbolic dims, read back as the slices JAX emits at concrete shapes.

With a symbolic dim anywhere in an array's shape, ``jnp`` cannot take its static-slice
path for basic indexing (``x[:, 1:4]``, ``x[:, ::2]``, ``x[:, 3]``, ``x[:, ::-1]``) and
emits a ``gather`` whose indices it computes from ``iota`` arithmetic instead. The values
are the same, but XLA fuses a gather differently from a slice, so the compiled program can
round differently (1 ulp) from the same model under ``jax.jit`` at concrete shapes, which
traces a ``slice``. This module recognises such gathers, whose indices are static, in
bounds and select a strided window, and gives the ``slice`` (and ``squeeze``) JAX itself
uses when the shapes are concrete; the frontend converts them in its place and drops the
index arithmetic nothing else reads.

Only gathers of operands with a symbolic dim are read this way: at concrete shapes JAX
already emits slices, and a gather the user wrote stays a gather.
"""
from __future__ import annotations

import numpy as np

from .. import _jax as jc

# pure integer index arithmetic that ``jnp`` indexing emits, evaluated here on constants
_INDEX_PRIMS = frozenset({"iota", "mul", "add", "sub", "neg", "rev", "broadcast_in_dim",
                          "convert_element_type", "concatenate", "reshape", "squeeze",
                          "expand_dims"})
_MAX_INDEX_ELEMENTS = 1 << 16


class SliceForm:
    """What a gather is: ``slice(start, limit, strides)``, then ``squeeze(squeeze_dims)``."""

    def __init__(self, start, limit, strides, squeeze_dims, slice_shape):
        self.start, self.limit, self.strides = start, limit, strides
        self.squeeze_dims, self.slice_shape = squeeze_dims, slice_shape


def same_dim(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - undecidable symbolic comparison
        return False


def _is_static_int(aval) -> bool:
    return (all(isinstance(d, (int, np.integer)) for d in aval.shape)
            and np.issubdtype(np.dtype(aval.dtype), np.integer)
            and int(np.prod(aval.shape, dtype=np.int64)) <= _MAX_INDEX_ELEMENTS)


def static_slices(jaxpr) -> tuple[dict, set]:
    """``({id(gather eqn): SliceForm}, {id(eqn) only feeding those gathers})`` for one jaxpr
    (not its sub-jaxprs: those are read when they are converted)."""
    if not any(e.primitive.name == "gather" for e in jaxpr.eqns):
        return {}, set()
    static: dict = {}  # var -> numpy value of index arithmetic on constants

    def value(a):
        if isinstance(a, jc.Literal):
            return np.asarray(a.val)
        return static.get(a)

    forms = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _INDEX_PRIMS and len(eqn.outvars) == 1 and _is_static_int(eqn.outvars[0].aval):
            ins = [value(a) for a in eqn.invars]
            if all(x is not None for x in ins):
                try:
                    static[eqn.outvars[0]] = np.asarray(eqn.primitive.bind(*ins, **eqn.params))
                except Exception:  # noqa: BLE001 - not evaluable here: leave it to the graph
                    pass
        elif name == "gather" and not isinstance(eqn.invars[1], jc.Literal):
            idx = static.get(eqn.invars[1])
            if idx is not None:
                form = _slice_form(eqn, idx)
                if form is not None:
                    forms[id(eqn)] = form
    if not forms:
        return {}, set()
    # the index arithmetic that only the rewritten gathers read is not converted
    uses: dict = {}
    for eqn in jaxpr.eqns:
        args = eqn.invars[:1] if id(eqn) in forms else eqn.invars
        for a in args:
            if not isinstance(a, jc.Literal):
                uses[a] = uses.get(a, 0) + 1
    for a in jaxpr.outvars:
        if not isinstance(a, jc.Literal):
            uses[a] = uses.get(a, 0) + 1
    dead: set = set()
    for eqn in reversed(jaxpr.eqns):
        out = eqn.outvars[0] if len(eqn.outvars) == 1 else None
        if out is not None and out in static and uses.get(out, 0) == 0:
            dead.add(id(eqn))
            for a in eqn.invars:
                if not isinstance(a, jc.Literal):
                    uses[a] -= 1
    return forms, dead


def _slice_form(eqn, idx: np.ndarray) -> SliceForm | None:
    p = eqn.params
    operand = eqn.invars[0].aval
    shape = tuple(operand.shape)
    if all(isinstance(d, (int, np.integer)) for d in shape):
        return None  # concrete shapes: JAX chose the gather itself
    mode = getattr(p.get("mode"), "name", str(p.get("mode")))
    if mode not in ("PROMISE_IN_BOUNDS", "CLIP") or p.get("fill_value") is not None:
        return None
    dn = p["dimension_numbers"]
    if tuple(dn.operand_batching_dims) or tuple(dn.start_indices_batching_dims):
        return None
    rank, sizes = len(shape), tuple(p["slice_sizes"])
    smap, collapsed, offset = tuple(dn.start_index_map), tuple(dn.collapsed_slice_dims), tuple(dn.offset_dims)
    out_rank = len(eqn.outvars[0].aval.shape)
    if idx.ndim == 0 or idx.shape[-1] != len(smap):
        return None
    for d in smap:
        if not isinstance(shape[d], (int, np.integer)) or not isinstance(sizes[d], (int, np.integer)):
            return None
    if any(sizes[a] != 1 for a in collapsed):
        return None
    start = [0] * rank
    limit = list(sizes)
    strides = [1] * rank
    if idx.ndim == 1:  # one window: a slice, the collapsed dims squeezed
        if offset != tuple(range(out_rank)):
            return None
        for d, s in zip(smap, idx.tolist()):
            if not 0 <= s <= shape[d] - sizes[d]:
                return None
            start[d], limit[d] = s, s + sizes[d]
        return SliceForm(tuple(start), tuple(limit), None, tuple(sorted(collapsed)), sizes)
    if idx.ndim != 2 or len(collapsed) != 1 or collapsed[0] not in smap:
        return None
    a = collapsed[0]  # a strided window along one axis, in place; windows along the others
    if offset != tuple(d for d in range(rank) if d != a):
        return None
    for j, d in enumerate(smap):
        if d == a:
            continue
        s = int(idx[0, j])
        if np.any(idx[:, j] != s) or not 0 <= s <= shape[d] - sizes[d]:
            return None
        start[d], limit[d] = s, s + sizes[d]
    col = idx[:, smap.index(a)].astype(np.int64)
    n = len(col)
    step = int(col[1] - col[0]) if n > 1 else 1
    if step < 1 or np.any(col != col[0] + step * np.arange(n)) or col[0] < 0 or col[-1] >= shape[a]:
        return None
    for d in range(rank):
        if d not in smap and not same_dim(sizes[d], shape[d]):
            return None
    start[a], limit[a], strides[a] = int(col[0]), int(col[-1]) + 1, step
    return SliceForm(tuple(start), tuple(limit), None if step == 1 else tuple(strides), (),
                     tuple(eqn.outvars[0].aval.shape))
