"""Helpers the fusion rules share: float-type checks, keepdims after a reduction, and
looking through layout ops (reshapes / broadcasts that only insert size-1 dims)."""
from __future__ import annotations

from ..ir.graph import Node, Value
from ..ir.types import is_float  # noqa: F401 - the rules' float check
from .pattern import Match, Pat, PatternBuilder


def not_float(v: Value) -> str | None:
    """None when ``v`` is floating point, else why a float-only rule does not apply."""
    return None if is_float(v.type.dtype) else f"{v.type} is not floating point"


def producer(v: Value, *ops: str) -> Node | None:
    """The node that computed ``v`` when its op is one of ``ops``, else None."""
    p = v.producer
    return p if p is not None and p.op in ops else None


def keep(p: PatternBuilder, x, name: str) -> Pat:
    """``x`` with size-1 dims put back where a reduction removed them (keepdims), or ``x``.

    Bound under ``name``; ``keepdims_ok`` checks where the ones went."""
    return p.bind(name, p.any(p.reshape(x), p.broadcast_in_dim(x), x))


def inserts_ones(node: Node) -> bool:
    """Whether a reshape / broadcast_in_dim only inserts size-1 dims (element order kept)."""
    (x,), out = node.inputs, node.outputs[0]
    if node.op == "reshape":
        return node.attrs.get("dimensions") is None and \
            [d for d in x.type.shape if d != 1] == [d for d in out.type.shape if d != 1]
    if node.op == "broadcast_in_dim":
        dims = tuple(node.attrs["broadcast_dimensions"])
        return list(dims) == sorted(dims) and all(
            out.type.shape[d] == x.type.shape[i] for i, d in enumerate(dims)) and all(
            out.type.shape[d] == 1 for d in range(out.type.rank) if d not in dims)
    return False


def unbroadcast(v: Value, shape) -> Value | None:
    """``v`` before reshapes / broadcasts that only inserted size-1 dims, if that has ``shape``."""
    for _ in range(4):
        if tuple(v.type.shape) == tuple(shape):
            return v
        p = v.producer
        if p is None or p.op not in ("reshape", "broadcast_in_dim") or not inserts_ones(p):
            return None
        v = p.inputs[0]
    return None


def keepdims_ok(m: Match, x: Value, axes: tuple, names) -> str | None:
    """None if every bound keepdims value has ``x``'s shape with ones at ``axes``."""
    want = tuple(1 if i in axes else d for i, d in enumerate(x.type.shape))
    for name in names:
        v = m.values.get(name)
        if v is None:
            continue
        if tuple(v.type.shape) != want:
            return f"a reduced value is broadcast back as {v.type}, not {list(want)}"
        p = v.producer
        if p is not None and p in m.nodes and p.op in ("reshape", "broadcast_in_dim") \
                and not inserts_ones(p):
            return f"the {p.op} that restores the reduced dims also moves data"
    return None
