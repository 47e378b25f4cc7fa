"""strip-stop-gradient: at inference ``stop_gradient`` is the identity, so it goes.

    before:  %1: f32[B,1] = stop_gradient(%0)          after:  %2 = sub(%x, %0)
             %2: f32[B,8] = sub(%x, %1)

Only in the ``inference`` preset: a graph that is still differentiated needs it.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .rewrite import Rebuild, fired


def strip_stop_gradient(graph: Graph) -> Graph:
    if not any(n.op == "stop_gradient" for n in graph.walk()):
        return graph

    def visit(old, new, rb):
        if new.op != "stop_gradient":
            return None
        fired("stop_gradient")
        return list(new.inputs)

    return Rebuild(graph, visit).run()
