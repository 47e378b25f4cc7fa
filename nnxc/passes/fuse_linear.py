"""fuse-linear: ``dot_general`` plus a bias becomes ``nnxc.linear`` (ONNX Gemm / MatMul+Add).

    before:  %0: f32[B,8] = dot_general(%x, %w) {dimension_numbers=(((1,),(0,)),((),()))}
             %1: f32[1,8] = reshape(%b) {new_sizes=(1,8)}
             %2: f32[B,8] = add(%0, %1)
    after:   %2: f32[B,8] = nnxc.linear(%x, %w, %b) {dimension_numbers=(((1,),(0,)),((),()))}

The dot must contract trailing dims of ``x`` with leading dims of ``w`` (no batch dims), as
nnx.Linear, nnx.LinearGeneral and Dense layers do; the bias may only vary along the
result's feature (``w``'s free) dims.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .idioms import unbroadcast
from .pattern import PatternBuilder, Rule, fuse
from .rewrite import reshaped

p = PatternBuilder()
PATTERN = p.add(p.bind("y", p.dot_general(p.var("x"), p.var("w"))), p.var("bias"))


def _features(m) -> tuple:
    w = m["w"].type
    (_, rc), _ = m["y"].producer.attrs["dimension_numbers"]
    return tuple(w.shape[len(rc):])


def _check(m) -> str | None:
    (lc, rc), (lb, rb) = m["y"].producer.attrs["dimension_numbers"]
    x, y, b = m["x"].type, m["y"].type, m["bias"].type
    if lb or rb:
        return "the dot has batch dims (a batched matmul, not a layer)"
    if tuple(lc) != tuple(range(x.rank - len(lc), x.rank)) or tuple(rc) != tuple(range(len(rc))):
        return f"the dot contracts x dims {tuple(lc)} with w dims {tuple(rc)}, not trailing with leading"
    if b.dtype != y.dtype or b.rank > y.rank:
        return f"bias {b} does not match the result {y}"
    feats = _features(m)
    aligned = (1,) * (y.rank - b.rank) + tuple(b.shape)
    nf = len(feats)
    if any(d != 1 for d in aligned[:y.rank - nf]) or tuple(aligned[y.rank - nf:]) != feats:
        return f"bias {b} does not follow the feature dims {list(feats)} of the result {y}"
    return None


def _rewrite(b, m):
    feats, bias = _features(m), m["bias"]
    bias = unbroadcast(bias, feats) or reshaped(b, bias, feats)
    return b.fused("nnxc.linear", m["x"], m["w"], bias, **m["y"].producer.attrs)


LINEAR = Rule("linear", PATTERN, _rewrite, _check)
RULES = [LINEAR]


def fuse_linear(graph: Graph) -> Graph:
    return fuse(graph, RULES)
