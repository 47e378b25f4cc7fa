"""fold-batchnorm: a per-channel affine map after a conv or linear layer with constant
weights (a frozen BatchNorm) is folded into the layer's weights and bias.

    before:  %0 = conv_general_dilated(%x, %c0) ..   %1 = add(%0, %c1)   (conv bias)
             %2 = sub(%1, %c2)   %3 = mul(%2, %c3)   %4 = add(%3, %c4)   (BatchNorm, frozen)
    after:   %0 = conv_general_dilated(%x, %c5) ..   %4 = add(%0, %c6)

Works on what freeze + fold-constants leave of a BatchNorm: ``sub``/``add`` of a constant and
``mul`` by a constant, each varying only along the layer's output channels, with every
intermediate used once. New weights are ``W * s`` along the output channels, new biases
``(b - mean) * s + beta``: results change by rounding only.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node, Value
from .rewrite import Rebuild, const, const_data, fired, origin_name, use_counts

LAYERS = ("dot_general", "conv_general_dilated")


def fold_batchnorm(graph: Graph) -> Graph:
    uses = use_counts(graph)
    single: set[Value] = set()  # new values used exactly once

    def visit(old: Node, new: Node, rb: Rebuild):
        out = _fold(new, rb, single)
        if out is None:
            single.update(n for o, n in zip(old.outputs, new.outputs) if uses.get(o, 0) == 1)
            return None
        if uses.get(old.outputs[0], 0) == 1:
            single.add(out)
        fired("affine")
        return [out]

    rb = Rebuild(graph, visit)
    new = rb.run()
    return new if rb.changed else graph


def _fold(node: Node, rb: Rebuild, single: set) -> Value | None:
    if node.op not in ("add", "sub", "mul") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    y, c = (a, b) if node.op == "sub" or const_data(b) is not None else (b, a)
    if const_data(c) is None or y not in single or y.producer is None:
        return None
    layer, bias = y.producer, None
    if layer.op == "add" and len(layer.inputs) == 2:
        lhs, rhs = layer.inputs
        layer, bias = (lhs.producer, rhs) if const_data(rhs) is not None else (rhs.producer, lhs)
        if layer is None or layer.outputs[0] not in single or const_data(bias) is None:
            return None
    elif node.op == "add":
        return None  # layer + c is already a layer with a bias
    if layer.op not in LAYERS or const_data(layer.inputs[1]) is None:
        return None
    out_t, w = layer.outputs[0].type, const_data(layer.inputs[1])
    dims = _channels(layer)
    if dims is None or w.dtype.name != _np_name(out_t.dtype) or c.type.dtype != out_t.dtype:
        return None
    cvec = _per_channel(const_data(c), out_t, dims[0])
    bvec = np.zeros_like(cvec) if bias is None else _per_channel(const_data(bias), out_t, dims[0])
    if cvec is None or bvec is None:
        return None
    lay = layer.outputs[0]
    if node.op == "mul":
        scaled = (w * _shaped(cvec, w.ndim, dims[1])).astype(w.dtype)
        kernel = const(scaled)
        kernel.name = origin_name([layer.inputs[1]])
        lay = rb.emit(layer.op, [layer.inputs[0], kernel], layer.attrs, [out_t],
                      layer.path, layer.loc)[0]
        single.add(lay)
        if bias is None:
            return lay
        total = bvec * cvec
    else:
        total = bvec + cvec if node.op == "add" else bvec - cvec
    bias_c = const(_shaped(total, out_t.rank, dims[0]))
    bias_c.name = origin_name([bias] if bias is not None else [c])
    return rb.emit("add", [lay, bias_c], None, [out_t], layer.path, layer.loc)[0]


def _np_name(dtype: str) -> str:
    from ..ir.types import to_dtype
    return to_dtype(dtype).name


def _channels(layer: Node) -> tuple[int, int] | None:
    """(output dim, weight dim) of the layer's output channels, if it has exactly one."""
    if layer.op == "dot_general":
        (_, rc), (_, rb) = layer.attrs["dimension_numbers"]
        free = [d for d in range(layer.inputs[1].type.rank) if d not in rc and d not in rb]
        return (layer.outputs[0].type.rank - 1, free[0]) if len(free) == 1 else None
    if layer.attrs.get("batch_group_count", 1) != 1:
        return None
    dn = layer.attrs["dimension_numbers"]
    return dn.get("out_spec")[1], dn.get("rhs_spec")[0]


def _per_channel(data, out_t, chan):
    """``data`` as a vector over the channels, if it only varies along them (else None)."""
    if data is None or data.ndim > out_t.rank:
        return None
    aligned = data.reshape((1,) * (out_t.rank - data.ndim) + data.shape)
    n = out_t.shape[chan]
    if any(d != 1 for i, d in enumerate(aligned.shape) if i != chan) or aligned.shape[chan] not in (1, n):
        return None
    return np.broadcast_to(aligned.reshape(-1), (n,)).astype(data.dtype)


def _shaped(vec, rank: int, dim: int):
    """The channel vector as a rank-``rank`` array varying along ``dim``."""
    shape = [1] * rank
    shape[dim] = vec.shape[0]
    return vec.reshape(shape)
