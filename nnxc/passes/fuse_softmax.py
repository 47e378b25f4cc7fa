"""fuse-softmax: ``exp(x - max) / sum(exp(x - max))`` over one axis becomes ``nnxc.softmax``.

    before:  %0 = reduce_max(%x) {axes=(1,)}     %1 = broadcast_in_dim(%0) ..  %2 = sub(%x, %1)
             %3 = exp(%2)    %4 = reduce_sum(%3) {axes=(1,)}    %5 = broadcast_in_dim(%4) ..
             %6 = div(%3, %5)
    after:   %6 = nnxc.softmax(%x) {axis=1}

Only the max-shifted form fires: the subtracted value must be the ``reduce_max`` of the same
``x`` over the same axis, reached through data movement, ``stop_gradient`` or ``max(-inf, .)``
(jax.nn.softmax under vmap takes the max before a transpose). ``exp(x) / sum(exp(x))`` and
shifts by anything else (the row min, the mean, a max over another axis) compute a different
function where ``exp`` overflows (NaN or inf, where the fused op is finite), so they stay.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph
from .idioms import keep, keepdims_ok, not_float
from .pattern import Bind, PatternBuilder, Rule, fuse
from .rewrite import splat

p = PatternBuilder()
x = p.var("x", const=False)
e = p.bind("e", p.exp(p.any(p.sub(x, p.var("shift")), x)))
PATTERN = p.div(e, keep(p, p.reduce_sum(e, axes=Bind("axes")), "denominator"))
_THROUGH = ("stop_gradient", "broadcast_in_dim", "reshape", "transpose", "max", "convert_element_type")


def _check(m):
    xv, axes = m["x"], m.attrs["axes"]
    if len(axes) != 1:
        return f"softmax over {len(axes)} axes (the fused op takes one)"
    if not_float(xv):
        return not_float(xv)
    why = keepdims_ok(m, xv, axes, ["denominator"])
    if why:
        return why
    if "shift" not in m.values:
        return "exp is not shifted by the row max (it would overflow where softmax does not)"
    s = m["shift"]
    if s.type.rank != xv.type.rank or s.type.shape[axes[0]] != 1:
        return f"the subtracted {s.type} is not constant along axis {axes[0]}"
    return None if _max_of(s, xv, axes[0]) else \
        f"the subtracted value is not the maximum of x over axis {axes[0]}"


def _max_of(v, x, axis: int, depth: int = 8) -> bool:
    """Whether ``v`` is ``max(x, axis)`` seen through data movement (the reduced axis kept)."""
    for _ in range(depth):
        node = v.producer
        if node is None:
            return False
        if node.op == "reduce_max":
            return tuple(node.attrs["axes"]) in _axes_of(node.inputs[0], x, axis)
        if node.op not in _THROUGH:
            return False
        if node.op == "max":  # max(-inf, m) is jnp.max's initial value
            consts = [u for u in node.inputs if u.is_const]
            rest = [u for u in node.inputs if not u.is_const]
            if len(consts) != 1 or splat(consts[0]) != -math.inf:
                return False
            v = rest[0]
        else:
            v = node.inputs[0]
    return False


def _axes_of(y, x, axis: int) -> list[tuple]:
    """The axes of ``y`` that hold ``x``'s ``axis`` when ``x`` is ``y`` or a transpose of it
    (seen through ``stop_gradient``); empty when ``x`` does not come from ``y`` that way."""
    p = x.producer
    if p is not None and p.op == "stop_gradient":
        return _axes_of(y, p.inputs[0], axis)
    if x is y:
        return [(axis,)]
    if p is not None and p.op == "transpose" and p.inputs[0] is y:
        return [(tuple(p.attrs["permutation"])[axis],)]
    return []


SOFTMAX = Rule("softmax", PATTERN, lambda b, m: b.fused("nnxc.softmax", m["x"], axis=m.attrs["axes"][0]),
               _check)
RULES = [SOFTMAX]


def fuse_softmax(graph: Graph) -> Graph:
    return fuse(graph, RULES)
