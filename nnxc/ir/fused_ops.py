"""The ``nnxc.*`` ops that fusion passes introduce: their meaning and shape rules.

    nnxc.linear(x, w, b) {dimension_numbers, ..}  dot_general(x, w) + b; b has the shape of
                                                   the result's trailing (rhs free) dims
    nnxc.layer_norm(x, scale, bias) {axes, epsilon, fast_variance}
                                                   normalize over trailing ``axes``; variance
                                                   E[x^2]-E[x]^2 (fast, Flax's default) or
                                                   E[(x-E[x])^2]; scale and bias have the
                                                   normalized dims' shape or ()
    nnxc.rms_norm(x, scale) {axes, epsilon}        x * rsqrt(E[x^2] + eps) * scale
    nnxc.gelu(x) {approximate}                     jax.nn.gelu
    nnxc.silu(x)                                   x * sigmoid(x)
    nnxc.softmax(x) {axis}                         jax.nn.softmax over one axis
    nnxc.attention(q, k, v[, mask]) {scale}        softmax(scale * q.k^T, masked) . v with
                                                   q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv]
                                                   (N = K*G: query head n reads key head
                                                   n // G), mask bool broadcastable to
                                                   [B,N,T,S] (False: not attended) or a
                                                   bias of q's dtype added to the scaled
                                                   logits; result [B,T,N,Hv]
                                                   (jax.nn.dot_product_attention)

Each has an XLA lowering in ``backends/xla/fused.py`` (and an ONNX one in ``backends/onnx``).
"""
from __future__ import annotations

from .ops import ShapeError, aval, from_aval, shape_rule
from .types import TensorType, is_float


def _same_dims(a, b) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def _float(t: TensorType, what: str) -> None:
    if not is_float(t.dtype):
        raise ShapeError(f"{what} must be floating point, got {t}")


@shape_rule("nnxc.linear")
def _linear(node, ins, env):
    from .. import _jax as jc
    from .params import decode_param
    if len(ins) != 3:
        raise ShapeError(f"nnxc.linear takes (x, w, bias), got {len(ins)} operands")
    params = {k: decode_param(v, env) for k, v in node.attrs.items()}
    out = from_aval(jc.abstract_eval(jc.primitive("dot_general"), [aval(ins[0], env), aval(ins[1], env)],
                                     params)[0])
    b = ins[2]
    if b.rank > out.rank or not _same_dims(b.shape, out.shape[out.rank - b.rank:]):
        raise ShapeError(f"bias {b} does not match the trailing dims of the result {out}")
    if b.dtype != out.dtype:
        raise ShapeError(f"bias dtype {b.dtype} is not the result's {out.dtype}")
    return [out]


def _norm_operand(x: TensorType, axes: tuple, p: TensorType, what: str) -> None:
    want = tuple(x.shape[a] for a in axes)
    if p.rank and not _same_dims(p.shape, want):
        raise ShapeError(f"{what} {p} must have the normalized dims' shape {want} or be a scalar")
    if p.dtype != x.dtype:
        raise ShapeError(f"{what} dtype {p.dtype} is not the input's {x.dtype}")


def _axes(node, x: TensorType) -> tuple:
    axes = tuple(node.attrs.get("axes", ()))
    if not axes or axes != tuple(range(x.rank - len(axes), x.rank)):
        raise ShapeError(f"axes {axes} must be the trailing dims of {x}")
    if not isinstance(node.attrs.get("epsilon"), float):
        raise ShapeError("epsilon must be a float")
    return axes


@shape_rule("nnxc.layer_norm")
def _layer_norm(node, ins, env):
    if len(ins) != 3:
        raise ShapeError(f"nnxc.layer_norm takes (x, scale, bias), got {len(ins)} operands")
    x = ins[0]
    _float(x, "the input")
    axes = _axes(node, x)
    if not isinstance(node.attrs.get("fast_variance"), bool):
        raise ShapeError("nnxc.layer_norm needs fast_variance=True|False")
    _norm_operand(x, axes, ins[1], "scale")
    _norm_operand(x, axes, ins[2], "bias")
    return [x]


@shape_rule("nnxc.rms_norm")
def _rms_norm(node, ins, env):
    if len(ins) != 2:
        raise ShapeError(f"nnxc.rms_norm takes (x, scale), got {len(ins)} operands")
    x = ins[0]
    _float(x, "the input")
    _norm_operand(x, _axes(node, x), ins[1], "scale")
    return [x]


@shape_rule("nnxc.gelu", "nnxc.silu")
def _unary(node, ins, env):
    if len(ins) != 1:
        raise ShapeError(f"{node.op} takes one operand, got {len(ins)}")
    _float(ins[0], "the input")
    if node.op == "nnxc.gelu" and not isinstance(node.attrs.get("approximate"), bool):
        raise ShapeError("nnxc.gelu needs approximate=True|False")
    return [ins[0]]


@shape_rule("nnxc.softmax")
def _softmax(node, ins, env):
    if len(ins) != 1:
        raise ShapeError(f"nnxc.softmax takes one operand, got {len(ins)}")
    axis = node.attrs.get("axis")
    if not isinstance(axis, int) or not 0 <= axis < ins[0].rank:
        raise ShapeError(f"axis {axis!r} is not a dim of {ins[0]}")
    _float(ins[0], "the input")
    return [ins[0]]


@shape_rule("nnxc.attention")
def _attention(node, ins, env):
    if len(ins) not in (3, 4):
        raise ShapeError(f"nnxc.attention takes (q, k, v[, mask]), got {len(ins)} operands")
    q, k, v = ins[:3]
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise ShapeError(f"q, k, v must be [B,T,N,H], [B,S,K,H], [B,S,K,Hv]; got {q}, {k}, {v}")
    if not (_same_dims(k.shape[:3], v.shape[:3]) and q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3]):
        raise ShapeError(f"q {q}, k {k} and v {v} do not agree")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise ShapeError(f"q, k and v have different dtypes ({q.dtype}, {k.dtype}, {v.dtype})")
    if isinstance(q.shape[2], int) and isinstance(k.shape[2], int) and q.shape[2] % k.shape[2]:
        raise ShapeError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key heads")
    if len(ins) == 4:
        m = ins[3]
        want = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        if m.dtype not in ("bool", q.dtype) or m.rank != 4 \
                or not all(a == 1 or a == b for a, b in zip(m.shape, want)):
            raise ShapeError(f"mask {m} must be bool (or a {q.dtype} bias) and broadcast to {list(want)}")
    if not isinstance(node.attrs.get("scale"), float):
        raise ShapeError("nnxc.attention needs a float scale")
    return [TensorType(tuple(q.shape[:3]) + (v.shape[3],), q.dtype)]
