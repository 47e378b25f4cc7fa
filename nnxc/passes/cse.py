"""cse: a node that repeats an earlier one (same op, inputs, attributes, types) reuses its results.

    before:  %0 = exp(%x)    %1 = exp(%x)    %2 = add(%0, %1)
    after:   %0 = exp(%x)                    %2 = add(%0, %0)

Equal constants count as the same input (small ones by content). Nodes with regions are
left alone, and a node inside a region is only matched against the same region's nodes
(a region cannot use values from outside it).
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


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    table: dict = {}
    blocks: dict = {}  # id -> block, kept alive so that no two blocks share an id in this pass

    def visit(old, new, rb):
        if new.regions or not new.outputs:
            return None
        blocks.setdefault(id(rb.block), rb.block)
        key = (id(rb.block), new.op, tuple(_key(v) for v in new.inputs),
               tuple((k, format_attr(a)) for k, a in new.attrs.items()),
               tuple(v.type for v in new.outputs))
        hit = table.get(key)
        if hit is None:
            table[key] = new.outputs
            return None
        fired("cse")
        return hit

    rb = Rebuild(graph, visit)
    new = rb.run()
    return new if rb.changed else graph
