"""prune: drop the updates of the variables an NNX Filter selects (and the variables a call
creates, such as sown intermediates), then everything that only fed them.

    before:  %1: u32[] = add(%rngs.count, 1:u32)       after:  return %0
             update %rngs.count = %1
             return %0

``optimize(graph, prune=nnx.RngCount)`` runs it with that filter; the registered ``prune``
pass drops every update (an inference graph is a pure function of its inputs).
"""
from __future__ import annotations

from ..ir.graph import Graph
from .dce import eliminate_dead_code
from .filters import matches
from .rewrite import Rebuild, fired


def prune(graph: Graph, filter=...) -> Graph:
    updated = {p for p, _ in graph.updates}
    chosen = {v.path for v in matches(graph, filter) if v.path in updated}
    if not chosen:
        return graph
    new = Rebuild(graph).run()
    new.updates = [(p, v) for p, v in new.updates if p not in chosen]
    new.variables = [v for v in new.variables if not (v.meta.get("new") and v.path in chosen)]
    fired("pruned", len(chosen))
    return eliminate_dead_code(new)
