"""networkx view of a Graph, for analyses (reachability, generations, patterns) and drawing."""
from __future__ import annotations

import networkx as nx

from .graph import Graph


def to_networkx(graph: Graph) -> nx.DiGraph:
    """A DiGraph of the top-level nodes plus one node per input, variable and output.

    Node keys: ``("node", i)`` for the i-th top-level node (attributes op, path, loc,
    regions), ``("input", name)``, ``("var", path)`` (kind), ``("output", i)``; edges carry
    the value's type (``type``) and the consumer's operand index (``index``).
    """
    g = nx.DiGraph(name=graph.name)
    producer: dict[int, tuple] = {}
    for v in graph.inputs:
        key = ("input", v.name)
        g.add_node(key, kind="input", type=str(v.type))
        producer[id(v)] = key
    for var in graph.variables:
        key = ("var", var.path)
        g.add_node(key, kind=var.kind, type=str(var.value.type))
        producer[id(var.value)] = key
    for i, node in enumerate(graph.nodes):
        key = ("node", i)
        g.add_node(key, op=node.op, path=node.path, loc=node.loc, regions=len(node.regions),
                   label=node.op)
        for j, v in enumerate(node.inputs):
            src = producer.get(id(v))
            if src is not None:
                g.add_edge(src, key, type=str(v.type), index=j)
        for v in node.outputs:
            producer[id(v)] = key
    for i, v in enumerate(graph.outputs):
        key = ("output", i)
        g.add_node(key, kind="output", type=str(v.type))
        src = producer.get(id(v))
        if src is not None:
            g.add_edge(src, key, type=str(v.type), index=0)
    for path, v in graph.updates:
        key = ("update", path)
        g.add_node(key, kind="update", type=str(v.type))
        src = producer.get(id(v))
        if src is not None:
            g.add_edge(src, key, type=str(v.type), index=0)
    return g
