"""strip-jit-boundaries: a constant crossing a nested jit becomes the constant again.

    before:  %0: f32[] = jit_boundary(0.1:f32)          after:  %2 = mul(0.1:f32, %x)
             %2: f32[B,8] = mul(%0, %x)

The frontend keeps the boundary so that XLA compiles the program as jax.jit's HLO has it (a
call operand that nothing before XLA's call inlining folds): bit-exact. Passes that rewrite
formulas (fusions, folding float math) and the ONNX export want to see the constant, so the
``fast`` and ``inference`` presets start with this pass and ``export_onnx`` runs it.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .rewrite import Rebuild, fired


def strip_jit_boundaries(graph: Graph, vmap: dict | None = None) -> Graph:
    """``vmap``: a dict to fill with old value -> new value (for callers that name values)."""
    if not any(n.op == "jit_boundary" for n in graph.walk()):
        return graph

    def visit(old, new, rb):
        if new.op != "jit_boundary":
            return None
        fired("jit_boundary")
        return list(new.inputs)

    rb = Rebuild(graph, visit)
    out = rb.run()
    if vmap is not None:
        vmap.update((old, rb.get(old)) for old in rb.vmap)
    return out
