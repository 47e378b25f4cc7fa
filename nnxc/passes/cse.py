"""cse: a node that repeats an earlier one (same op, inputs, attributes, types) reuses its results.

    before:  %0 = exp(%x)    %1 = exp(%x)    %2 = add(%0, %1)
    after:   %0 = exp(%x)                    %2 = add(%0, %0)

Equal constants count as the same input (small ones by content). Nodes with regions are
left alone, and a node inside a region is only matched against the same region's nodes
(a region cannot use values from outside it).

Two copies that one node reads together are kept apart: merging them would hand that node
the same value twice, ``select_n(%p, %b, %b)``, which XLA's simplifier rewrites before its
own CSE would have merged the copies, and the changed fusion rounds differently (fuzz seed
31561: a ``reduce_prod`` feeding a layer norm moved by 1 ulp). XLA merges such copies itself.
"""
from __future__ import annotations

from ..ir.attrs import format_attr
from ..ir.graph import Graph, Value, content_hash
from .rewrite import Rebuild, const_data, fired

SMALL = 1024  # constants up to this many elements are compared by content


def _key(v: Value):
    if not v.is_const:
        return id(v)
    data = const_data(v)
    if data is None or data.size > SMALL:
        return id(v)
    return ("const", str(v.type), content_hash(data))


def _readers(graph: Graph) -> dict[int, set[int]]:
    """id(node) -> ids of the nodes that read one of its results."""
    readers: dict[int, set[int]] = {}
    for node in graph.walk():
        for v in node.inputs:
            if v.producer is not None:
                readers.setdefault(id(v.producer), set()).add(id(node))
    return readers


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    table: dict = {}
    blocks: dict = {}  # id -> block, kept alive so that no two blocks share an id in this pass
    readers = _readers(graph)

    def visit(old, new, rb):
        if new.regions or not new.outputs:
            return None
        blocks.setdefault(id(rb.block), rb.block)
        key = (id(rb.block), new.op, tuple(_key(v) for v in new.inputs),
               tuple((k, format_attr(a)) for k, a in new.attrs.items()),
               tuple(v.type for v in new.outputs))
        hit = table.get(key)
        if hit is None:
            table[key] = (new.outputs, old)
            return None
        outputs, first = hit
        if readers.get(id(first), set()) & readers.get(id(old), set()):
            return None  # a node reads both copies
        fired("cse")
        return outputs

    rb = Rebuild(graph, visit)
    new = rb.run()
    return new if rb.changed else graph
