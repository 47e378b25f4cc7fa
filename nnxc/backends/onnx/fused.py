"""ONNX rules for the ``nnxc.*`` ops the fusion passes introduce (defined in ir/fused_ops.py).

Native ops where the opset has them (LayerNormalization 17, Gelu 20, RMSNormalization and
Attention 23, Softmax 13), the same math in basic ops below that.
"""
from __future__ import annotations

import math

import numpy as np

from ...ir.graph import Elided
from ...ir.types import to_dtype
from .elementwise import sigmoid
from .linalg import _dot_general
from .table import rule


def _full(b, node, i: int, xs, want_shape):
    """Scale / bias as a tensor of the normalized dims' shape (the native norm ops take one;
    onnxruntime 1.31 crashes building a session whose LayerNormalization has no bias)."""
    v, t = node.inputs[i], node.inputs[i].type
    if t.rank:
        return xs[i]
    if v.is_const and not isinstance(v.data, Elided) and all(isinstance(d, int) for d in want_shape):
        return b.const(np.full(want_shape, np.asarray(v.data), dtype=to_dtype(t.dtype)))
    return b.expand(xs[i], want_shape)


@rule("nnxc.linear")
def _linear(b, node, xs):
    x, w, bias = node.inputs
    (lc, rc), _ = node.attrs["dimension_numbers"]
    if x.type.rank == 2 and w.type.rank == 2 and tuple(lc) == (1,) and tuple(rc) == (0,) \
            and x.type.dtype == w.type.dtype == node.outputs[0].type.dtype:
        return b.op("Gemm", xs[0], xs[1], xs[2])
    return b.op("Add", _dot_general(b, node, xs[:2]), xs[2])


def _norm_shape(node):
    x = node.inputs[0].type
    return [x.shape[a] for a in node.attrs["axes"]]


@rule("nnxc.layer_norm")
def _layer_norm(b, node, xs):
    x = node.inputs[0]
    axis, eps, shape = node.attrs["axes"][0], node.attrs["epsilon"], _norm_shape(node)
    if b.opset >= 17:
        return b.op("LayerNormalization", xs[0], _full(b, node, 1, xs, shape),
                    _full(b, node, 2, xs, shape), axis=axis, epsilon=eps)
    axes = list(node.attrs["axes"])
    mean = _mean(b, xs[0], axes)
    d = b.op("Sub", xs[0], mean)
    var = _mean(b, b.op("Mul", d, d), axes)
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(eps, x.type.dtype))))
    return b.op("Add", b.op("Mul", b.op("Mul", d, inv), xs[1]), xs[2])


def _mean(b, x: str, axes) -> str:
    from .reductions import reduce
    return reduce(b, "ReduceMean", x, axes, keepdims=1)


@rule("nnxc.rms_norm")
def _rms_norm(b, node, xs):
    x = node.inputs[0]
    axis, eps, shape = node.attrs["axes"][0], node.attrs["epsilon"], _norm_shape(node)
    if b.opset >= 23:
        return b.op("RMSNormalization", xs[0], _full(b, node, 1, xs, shape), axis=axis, epsilon=eps)
    ms = _mean(b, b.op("Mul", xs[0], xs[0]), list(node.attrs["axes"]))
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", ms, b.scalar(eps, x.type.dtype))))
    return b.op("Mul", b.op("Mul", xs[0], inv), xs[1])


@rule("nnxc.gelu")
def _gelu(b, node, xs):
    approximate = node.attrs["approximate"]
    if b.opset >= 20:
        return b.op("Gelu", xs[0], approximate="tanh" if approximate else "none")
    t, x = node.inputs[0].type.dtype, xs[0]
    if approximate:
        cube = b.op("Mul", x, b.op("Mul", x, x))
        inner = b.op("Mul", b.scalar(math.sqrt(2 / math.pi), t),
                     b.op("Add", x, b.op("Mul", b.scalar(0.044715, t), cube)))
        cdf = b.op("Add", b.scalar(1.0, t), b.op("Tanh", inner))
    else:
        cdf = b.op("Add", b.scalar(1.0, t), b.op("Erf", b.op("Mul", x, b.scalar(1 / math.sqrt(2), t))))
    return b.op("Mul", b.op("Mul", b.scalar(0.5, t), x), cdf)


@rule("nnxc.silu")
def _silu(b, node, xs):
    return b.op("Mul", xs[0], sigmoid(b, xs[0], node.inputs[0].type.dtype))  # not Sigmoid: see there


@rule("nnxc.softmax")
def _softmax(b, node, xs):
    return b.op("Softmax", xs[0], axis=node.attrs["axis"])


@rule("nnxc.attention")
def _attention(b, node, xs):
    q, k, v = (x.type for x in node.inputs[:3])
    scale = node.attrs["scale"]
    mask = xs[3] if len(xs) > 3 else None
    boolean = mask is not None and node.inputs[3].type.dtype == "bool"
    # a finite large negative number where masked: a fully masked row averages v, as in jax
    # (onnxruntime's Attention gives 0 there for a boolean mask, or for a finfo.min bias)
    big = -0.7 * float(np.finfo(np.float32).max)
    if b.opset >= 23:  # 3-D inputs [B,T,N*H]: reshapes (free) instead of transposes
        q3, k3, v3 = (b.reshape(x, [*t.shape[:2], _mul(t.shape[2], t.shape[3])])
                      for x, t in zip(xs[:3], (q, k, v)))
        if boolean:
            mask = b.op("Where", mask, b.scalar(0.0, q.dtype), b.scalar(big, q.dtype))
        elif mask is not None:  # finfo.min -> big: the row stays an average in onnxruntime
            mask = b.op("Max", mask, b.scalar(big, q.dtype))
        out = b.op("Attention", q3, k3, v3, *([mask] if mask else []), scale=scale,
                   q_num_heads=q.shape[2], kv_num_heads=k.shape[2])
        return b.reshape(out, [*q.shape[:3], v.shape[3]])
    qt, kt, vt = (b.transpose(x, [0, 2, 1, 3]) for x in xs[:3])  # [B,T,N,H] -> [B,N,T,H]
    # basic ops; grouped queries as [B,K,G,T,H] against keys and values [B,K,1,S,H]
    heads, (batch, t, n) = k.shape[2], q.shape[:3]
    groups = n // heads
    q5 = b.reshape(qt, [batch, heads, groups, t, q.shape[3]])
    k5 = b.unsqueeze(b.transpose(xs[1], [0, 2, 3, 1]), [2])  # [B,K,1,H,S]
    v5 = b.unsqueeze(vt, [2])  # [B,K,1,S,Hv]
    logits = b.op("Mul", b.op("MatMul", q5, k5), b.scalar(scale, q.dtype))
    if mask is not None:
        m = node.inputs[3].type.shape
        m5 = b.reshape(mask, [m[0], heads if m[1] != 1 else 1, groups if m[1] != 1 else 1, m[2], m[3]])
        logits = b.op("Where", m5, logits, b.scalar(big, q.dtype)) if boolean else b.op("Add", logits, m5)
    out = b.op("MatMul", b.op("Softmax", logits, axis=-1), v5)  # [B,K,G,T,Hv]
    out = b.transpose(out, [0, 3, 1, 2, 4])
    return b.reshape(out, [batch, t, n, v.shape[3]])


def _mul(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else f"({a})*({b})"
