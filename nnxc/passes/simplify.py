"""simplify: algebraic identities, one rule per op in ``SIMPLIFY_RULES``.

    before:  %0: f32[B,8] = mul(%x, 1.0:f32)            after:  %2: f32[8,B] = transpose(%x)
             %1: f32[B,8] = reshape(%0) {new_sizes=(B,8)}               {permutation=(1,0)}
             %2: f32[8,B] = transpose(%1) {permutation=(1,0)}

``x*1``, ``x/1``, ``x+0``, ``x-0`` (zeros of either sign, as XLA's own simplifier
drops them: the model's jax.jit gives ``-0.0 + 0.0 = -0.0`` too), ``max(x,-inf)``, ``min(x,inf)``, same-dtype converts,
same-shape reshapes and broadcasts, identity transposes, ``copy``, reductions over no axes,
``select_n`` with equal cases or a constant predicate; chains of reshapes, transposes and
broadcasts become one node. An identity only applies when it changes neither shape nor dtype.
Rules see inputs already simplified, so chains collapse in one sweep.
"""
from __future__ import annotations

import math
from typing import Callable

from .._registry import registrar
from ..ir.graph import Graph, Node, Value
from .rewrite import Rebuild, fired, splat

Rule = Callable[[Node, Rebuild], "list[Value] | None"]
SIMPLIFY_RULES: dict[str, Rule] = {}


rule = registrar(SIMPLIFY_RULES)


def simplify(graph: Graph) -> Graph:
    def visit(old, new, rb):
        fn = SIMPLIFY_RULES.get(new.op)
        out = fn(new, rb) if fn is not None else None
        if out is not None:
            fired(new.op)
        return out

    rb = Rebuild(graph, visit)
    new = rb.run()
    return new if rb.changed else graph


def _same(node: Node, x: Value):
    """``[x]`` if ``x`` can stand for the node's result (same type), else None."""
    return [x] if x.type == node.outputs[0].type else None


def _producer(v: Value, op: str) -> Node | None:
    p = v.producer
    return p if p is not None and p.op == op else None


def _emit(node: Node, rb: Rebuild, x: Value, attrs: dict) -> list[Value]:
    return rb.emit(node.op, [x], attrs, [node.outputs[0].type], node.path, node.loc)


# -- arithmetic identities ---------------------------------------------------------

def _unit(node: Node, unit: float, commutative: bool = True):
    a, b = node.inputs
    for keep, other in ((a, b), (b, a)) if commutative else ((a, b),):
        if splat(other) == unit and keep.type == node.outputs[0].type:
            return [keep]
    return None



@rule("mul")
def _mul(node, rb):
    return _unit(node, 1.0)


@rule("add")
def _add(node, rb):
    return _unit(node, 0.0)


@rule("sub")
def _sub(node, rb):
    return _unit(node, 0.0, commutative=False)


@rule("div")
def _div(node, rb):
    return _unit(node, 1.0, commutative=False)


@rule("max")
def _max(node, rb):
    return _unit(node, -math.inf)


@rule("min")
def _min(node, rb):
    return _unit(node, math.inf)


@rule("select_n")
def _select(node, rb):
    pred, *cases = node.inputs
    if all(c is cases[0] for c in cases):
        return _same(node, cases[0])
    which = splat(pred)
    return None if which is None else _same(node, cases[int(which)])


# -- data movement -------------------------------------------------------------------

@rule("convert_element_type")
def _convert(node, rb):
    return _same(node, node.inputs[0])


@rule("copy")
def _copy(node, rb):
    return _same(node, node.inputs[0])


@rule("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or")
def _reduce(node, rb):
    return _same(node, node.inputs[0]) if tuple(node.attrs.get("axes", ())) == () else None


@rule("reshape")
def _reshape(node, rb):
    (x,) = node.inputs
    if node.attrs.get("dimensions") is not None:
        return None
    same = _same(node, x)
    if same is not None:
        return same
    inner = _producer(x, "reshape")
    if inner is not None and inner.attrs.get("dimensions") is None:
        return _same(node, inner.inputs[0]) or _emit(node, rb, inner.inputs[0], node.attrs)
    return None


@rule("transpose")
def _transpose(node, rb):
    (x,) = node.inputs
    perm = tuple(node.attrs["permutation"])
    if perm == tuple(range(len(perm))):
        return _same(node, x)
    inner = _producer(x, "transpose")
    if inner is not None:
        first = tuple(inner.attrs["permutation"])
        composed = tuple(first[j] for j in perm)
        if composed == tuple(range(len(composed))):
            return _same(node, inner.inputs[0])
        return _emit(node, rb, inner.inputs[0], dict(node.attrs, permutation=composed))
    return None


@rule("broadcast_in_dim")
def _broadcast(node, rb):
    (x,) = node.inputs
    if node.attrs.get("sharding") is not None:
        return None
    dims = tuple(node.attrs["broadcast_dimensions"])
    if dims == tuple(range(x.type.rank)):
        same = _same(node, x)
        if same is not None:
            return same
    inner = _producer(x, "broadcast_in_dim")
    if inner is not None and inner.attrs.get("sharding") is None:
        composed = tuple(dims[d] for d in inner.attrs["broadcast_dimensions"])
        src = inner.inputs[0]
        if composed == tuple(range(src.type.rank)) and src.type == node.outputs[0].type:
            return [src]
        return _emit(node, rb, src, dict(node.attrs, broadcast_dimensions=composed))
    return None


@rule("squeeze")
def _squeeze(node, rb):
    return _same(node, node.inputs[0]) if tuple(node.attrs.get("dimensions", ())) == () else None
