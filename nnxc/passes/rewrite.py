"""Rewriting graphs without touching them: copy a graph node by node, letting a pass replace
nodes on the way, plus use counts and small helpers about constants.

Every pass reads its input graph and, when it changes something, builds a new one with
``Rebuild``; the input is never modified, so ``optimize`` leaves the caller's graph alone and
a pass that changed nothing returns its argument (``pass(g) is g``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir.graph import Elided, Graph, Node, Region, Value, Variable
from ..ir.ops import infer
from ..ir.types import TensorType
from .report import fired  # noqa: F401 - passes import it from here

# visit(old_node, new_node, rebuild) -> None to keep new_node, or the values replacing its outputs
Visitor = Callable[[Node, Node, "Rebuild"], "list[Value] | None"]


class Rebuild:
    """Copies ``graph``: new Values and Nodes everywhere (constants are shared, they are immutable).

    ``subst`` maps old values to their replacements (old or new values); ``drop`` is a set of
    old nodes to leave out; ``visit`` sees each copied node (inputs already mapped) and may emit
    nodes with ``emit`` and return replacement values. ``changed`` tells whether it did.
    """

    def __init__(self, graph: Graph, visit: Visitor | None = None, subst: dict | None = None,
                 drop: set | None = None):
        self.graph = graph
        self.visit = visit
        self.subst = dict(subst or {})
        self.drop = drop or set()
        self.vmap: dict[Value, Value] = {}
        self.block: list[Node] = []  # the node list being filled (a region's, inside regions)
        self.prologue: list[Node] = []  # new nodes placed first in the graph (on constants only)
        self.changed = bool(self.subst or self.drop)

    def get(self, v: Value) -> Value:
        """The new graph's value for old value ``v``."""
        seen = 0
        while v in self.subst:
            v = self.subst[v]
            seen += 1
            if seen > 10_000:
                raise RuntimeError("substitution cycle")
        return self.vmap.get(v, v)

    def emit(self, op: str, inputs, attrs=None, types=None, path: str = "", loc=None) -> list[Value]:
        """Append a new node to the block being built; types default to the op's shape rule."""
        inputs = list(inputs)
        if types is None:
            types = infer(Node(op, inputs, [], attrs), [v.type for v in inputs], {})
        node = Node(op, inputs, types, attrs, (), path, loc)
        self.block.append(node)
        self.changed = True
        return node.outputs

    def run(self) -> Graph:
        g = self.graph
        new = Graph(g.name, out_tree=g.out_tree, in_tree=g.in_tree, meta=dict(g.meta))
        for v in g.inputs:
            new.inputs.append(self._fresh(v))
        for var in g.variables:
            new.variables.append(Variable(self._fresh(var.value), var.path, var.kind,
                                          dict(var.meta), var.data))
        new.nodes = self.prologue + self.nodes(g.nodes)
        new.outputs = [self.get(v) for v in g.outputs]
        new.updates = [(p, self.get(v)) for p, v in g.updates]
        new.consts = used_consts(new)
        return new

    def _fresh(self, v: Value) -> Value:
        nv = Value(v.type, v.name, v.data)
        self.vmap[v] = nv
        return nv

    def nodes(self, nodes: list[Node]) -> list[Node]:
        outer, self.block = self.block, []
        for node in nodes:
            if node in self.drop:
                continue
            new = self.copy(node)  # maps the node's (kept) outputs to the copy's
            repl = self.visit(node, new, self) if self.visit is not None else None
            if repl is None:
                self.block.append(new)
                continue
            self.changed = True
            for old, nv in zip(node.outputs, repl):
                self.vmap[old] = nv
        out, self.block = self.block, outer
        return out

    def copy(self, node: Node, keep_in=None, keep_out=None, attrs=None, regions=None) -> Node:
        """A copy of ``node`` with mapped inputs (optionally a subset of inputs and outputs)."""
        ins = [self.get(v) for v in node.inputs]
        outs = node.outputs
        if keep_in is not None:
            ins = [ins[i] for i in keep_in]
        if keep_out is not None:
            outs = [outs[i] for i in keep_out]
        if regions is None:
            regions = [self.region(r) for r in node.regions]
        new = Node(node.op, ins, [v.type for v in outs], dict(node.attrs if attrs is None else attrs),
                   regions, node.path, node.loc)
        for old, nv in zip(outs, new.outputs):
            nv.name = old.name
            self.vmap[old] = nv
        return new

    def region(self, r: Region, keep_args=None, keep_results=None) -> Region:
        args = r.args if keep_args is None else [r.args[i] for i in keep_args]
        new_args = [self._fresh(a) for a in args]
        nodes = self.nodes(r.nodes)
        results = r.results if keep_results is None else [r.results[i] for i in keep_results]
        return Region(new_args, nodes, [self.get(v) for v in results])


def used_consts(graph: Graph) -> list[Value]:
    """The graph's non-inline constants in order of first use (what ``graph.consts`` lists)."""
    seen: dict[Value, None] = {}

    def see(vs):
        for v in vs:
            if v.is_const and not is_inline(v) and v not in seen:
                seen[v] = None

    for node in graph.walk():
        see(node.inputs)
        for r in node.regions:
            see(r.results)
    see(graph.outputs)
    see(v for _, v in graph.updates)
    return list(seen)


def is_inline(v: Value) -> bool:
    return v.is_const and v.type.rank == 0 and not isinstance(v.data, Elided)


def use_counts(graph: Graph) -> dict[Value, int]:
    """How often each value is used: node inputs, region results, outputs and updates."""
    counts: dict[Value, int] = {}
    for node in graph.walk():
        for v in node.inputs:
            counts[v] = counts.get(v, 0) + 1
        for r in node.regions:
            for v in r.results:
                counts[v] = counts.get(v, 0) + 1
    for v in list(graph.outputs) + [v for _, v in graph.updates]:
        counts[v] = counts.get(v, 0) + 1
    return counts


# -- constants ------------------------------------------------------------------

def const(x, dtype: str | None = None) -> Value:
    """A new constant Value holding ``x`` (an array or scalar), typed like it."""
    from ..ir.types import to_dtype
    arr = np.asarray(x, dtype=to_dtype(dtype) if dtype else None)
    return Value(TensorType.of(arr), data=arr)


def origin_name(inputs) -> str | None:
    """``<path>.folded`` after the largest constant input that was a variable (frozen
    constants are named by their path), for a constant computed from them; backends name
    the weight after it (ONNX initializers)."""
    named = [v for v in inputs if v.name and v.is_const]
    if not named:
        return None
    name = max(named, key=lambda v: v.type.size() if v.type.is_static else 0).name
    return name if name.endswith(".folded") else f"{name}.folded"


def const_data(v: Value):
    """The array of a constant value with data (None for non-constants and elided ones)."""
    if not v.is_const or isinstance(v.data, Elided):
        return None
    try:
        return np.asarray(v.data)
    except TypeError:  # a PRNG key array
        return None


def splat(v: Value, node_ops=("broadcast_in_dim", "reshape", "convert_element_type")) -> float | None:
    """The one number every element of ``v`` equals, looking through broadcasts of a scalar."""
    for _ in range(8):
        data = const_data(v)
        if data is not None:
            if data.size == 0 or data.dtype.kind not in "biuf":
                return None
            flat = data.reshape(-1)
            first = flat[0]
            if data.size > 1 and (flat[-1] != first or not (flat == first).all()):
                return None
            return float(first)
        p = v.producer
        if p is None or p.op not in node_ops or not p.inputs:
            return None
        if p.op == "convert_element_type" and v.type.dtype[0] in "biu" \
                and p.inputs[0].type.dtype[0] not in "biu":
            return None  # float -> int conversions change the number
        v = p.inputs[0]
    return None


def reshaped(b, v: Value, shape: tuple) -> Value:
    """``v`` reshaped (a new constant when ``v`` is one, else a reshape node emitted by ``b``)."""
    from ..ir.attrs import SymDim
    data = const_data(v)
    if data is not None and all(isinstance(d, int) for d in shape):
        out = const(data.reshape(shape))
        out.name = v.name  # the same weight in another shape
        return out
    return b.reshape(v, new_sizes=tuple(SymDim(d) if isinstance(d, str) else d for d in shape))
