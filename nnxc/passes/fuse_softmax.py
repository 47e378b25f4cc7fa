"""fuse-softmax: ``exp(x - max) / sum(exp(x - max))`` over one axis becomes ``nnxc.softmax``.

    before:  %0 = reduce_max(%x) {axes=(1,)}     %1 = broadcast_in_dim(%0) ..  %2 = sub(%x, %1)
             %3 = exp(%2)    %4 = reduce_sum(%3) {axes=(1,)}    %5 = broadcast_in_dim(%4) ..
             %6 = div(%3, %5)
    after:   %6 = nnxc.softmax(%x) {axis=1}

With or without the max subtraction. The subtracted value must be constant along the axis
(softmax does not change when each row is shifted) and come from a ``reduce_max`` through
data movement, ``stop_gradient`` or ``max(-inf, .)`` (jax.nn.softmax under vmap takes the max
before a transpose); the fused op subtracts the row max itself.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph
from .idioms import keep, keepdims_ok
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
    if xv.type.dtype[0] != "f" and xv.type.dtype != "bf16":
        return f"{xv.type} is not floating point"
    why = keepdims_ok(m, xv, axes, ["denominator"])
    if why or "shift" not in m.values:
        return why
    s = m["shift"]
    if s.type.rank != xv.type.rank or s.type.shape[axes[0]] != 1:
        return f"the subtracted {s.type} is not constant along axis {axes[0]}"
    return None if _from_max(s) else "the subtracted value is not a row maximum"


def _from_max(v, depth: int = 8) -> bool:
    for _ in range(depth):
        node = v.producer
        if node is None:
            return False
        if node.op == "reduce_max":
            return True
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


SOFTMAX = Rule("softmax", PATTERN, lambda b, m: b.fused("nnxc.softmax", m["x"], axis=m.attrs["axes"][0]),
               _check)
RULES = [SOFTMAX]


def fuse_softmax(graph: Graph) -> Graph:
    return fuse(graph, RULES)
