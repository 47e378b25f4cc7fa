"""cleanup: simplify, fold-constants, cse and dce, repeated until a round changes nothing.

``cleanup-all`` is the same with ``fold-all-constants`` (float math folded too; not bit-exact).

One pass can expose work for another (cse makes ``select_n(p, a, a)``, simplify leaves dead
nodes); pipelines end with this so that running them again changes nothing. At most
``ROUNDS`` rounds, each linear in the graph's size.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .fold_constants import fold_all_constants, fold_constants
from .simplify import simplify

ROUNDS = 4
STEPS = (simplify, fold_constants, eliminate_common_subexpressions, eliminate_dead_code)
STEPS_ALL = (simplify, fold_all_constants, eliminate_common_subexpressions, eliminate_dead_code)


def cleanup(graph: Graph) -> Graph:
    return _until_fixed(graph, STEPS)


def cleanup_all(graph: Graph) -> Graph:
    return _until_fixed(graph, STEPS_ALL)


def _until_fixed(graph: Graph, steps) -> Graph:
    for _ in range(ROUNDS):
        start = graph
        for step in steps:
            graph = step(graph)
        if graph is start:
            break
    return graph
