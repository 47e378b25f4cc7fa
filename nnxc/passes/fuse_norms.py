"""fuse-norms: layer norm and RMS norm graphs become ``nnxc.layer_norm`` / ``nnxc.rms_norm``.

    before:  %0 = square(%x)   %1 = reduce_sum(%x) {axes=(1,)}   %2 = div(%1, 8.0:f32)
             %3 = reduce_sum(%0) {axes=(1,)}   %4 = div(%3, 8.0:f32)   %5 = square(%2)
             %6 = sub(%4, %5)   %7 = max(0.0:f32, %6)   %8 = reshape(%2) ..  %9 = reshape(%7) ..
             %10 = sub(%x, %8)  %11 = add(%9, 1e-06:f32)  %12 = rsqrt(%11)  %13 = mul(%12, %s)
             %14 = mul(%10, %13)  %15 = add(%14, %b)
    after:   %15 = nnxc.layer_norm(%x, %scale, %bias) {axes=(1,), epsilon=1e-06, fast_variance=True}

Flax's form (variance as E[x^2]-E[x]^2) and the textbook one (E[(x-mean)^2]); squares as
``square``, ``x**2`` or ``x*x``; ``rsqrt(var+eps)`` or ``/sqrt(var+eps)``; with or without
scale and bias; products in any association (the matcher flattens ``mul`` chains). The
normalized axes must be the trailing dims (as ONNX's ops take them), and scale / bias may
only vary along them.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.graph import Graph, Value
from ..ir.types import to_dtype
from .idioms import keep, keepdims_ok, not_float, unbroadcast
from .pattern import Bind, PatternBuilder, Rule, fuse
from .rewrite import const, reshaped

p = PatternBuilder()
x, scale, bias, eps, n = p.var("x", const=False), p.var("scale"), p.var("bias"), p.const("eps"), p.const("n")
A = Bind("axes")


def _sq(v):
    return p.any(p.square(v), p.integer_pow(v, y=2), p.mul(v, v))


def _mean(v):
    return p.div(p.reduce_sum(v, axes=A), n)


def _kmean(v, name):
    """E[v] with the reduced dims kept (before or after the division)."""
    s = p.reduce_sum(v, axes=A)
    return p.any(keep(p, p.div(s, n), name), p.div(keep(p, s, name), n))


def _scaled(centered, var):
    """``centered / sqrt(var + eps)``, times ``scale`` or not."""
    inv, den = p.rsqrt(p.add(var, eps)), p.sqrt(p.add(var, eps))
    return p.any(p.mul(centered, inv, scale), p.mul(p.div(centered, den), scale),
                 p.mul(centered, inv), p.div(centered, den))


centered = p.sub(x, p.any(keep(p, _mean(x), "kmean"), _kmean(x, "kmean")))
fast_var = p.bind("fast", keep(p, p.max(0.0, p.sub(_mean(_sq(x)), _sq(_mean(x)))), "kvar"))
var = p.any(fast_var, _kmean(_sq(centered), "kvar"))
layer_norm_core = _scaled(centered, var)
rms_core = _scaled(x, _kmean(_sq(x), "kvar"))


def _param_ok(m, name: str, xv: Value, axes: tuple) -> str | None:
    v = m.values.get(name)
    if v is None or v.type.rank == 0:
        return None
    r = xv.type.rank
    aligned = (1,) * (r - v.type.rank) + tuple(v.type.shape)
    if v.type.rank > r or v.type.dtype != xv.type.dtype:
        return f"{name} {v.type} does not broadcast against {xv.type}"
    if any(aligned[i] != 1 for i in range(r) if i not in axes):
        return f"{name} {v.type} varies along dims that are not normalized"
    if any(aligned[i] != xv.type.shape[i] for i in axes) and v.type.size() != 1:
        return f"{name} {v.type} is broadcast along normalized dims"
    return None


def _check(m) -> str | None:
    xv, axes = m["x"], tuple(m.attrs["axes"])
    r = xv.type.rank
    if not_float(xv):
        return not_float(xv)
    if axes != tuple(range(r - len(axes), r)):
        return f"normalizes over axes {axes}, not the trailing dims of {xv.type}"
    size = [xv.type.shape[a] for a in axes]
    if not all(isinstance(d, int) for d in size):
        return "the normalized dims are symbolic"
    if not math.isclose(m.consts["n"], math.prod(size), rel_tol=1e-6):
        return f"divides by {m.consts['n']:g}, but the normalized dims hold {math.prod(size)} elements"
    if m.consts["eps"] < 0:
        return f"epsilon {m.consts['eps']:g} is negative"
    return keepdims_ok(m, xv, axes, ["kmean", "kvar"]) or _param_ok(m, "scale", xv, axes) \
        or _param_ok(m, "bias", xv, axes)


def _param(b, m, name: str, default: float) -> Value:
    """The scale / bias operand in the fused op's shape: the normalized dims, or a scalar."""
    xv, axes = m["x"], m.attrs["axes"]
    v = m.values.get(name)
    if v is None:
        return _scalar(b, default)
    want = tuple(xv.type.shape[a] for a in axes)
    if v.type.rank == 0:
        return v
    if v.type.size() == 1:
        return reshaped(b, v, ())
    return unbroadcast(v, want) or reshaped(b, v, want)


def _scalar(b, x: float) -> Value:
    return const(x, b.dtype)


def _eps(m) -> float:
    """Epsilon as the shortest decimal that is the same number in the input's dtype."""
    return float(str(np.asarray(m.consts["eps"], to_dtype(m["x"].type.dtype))[()]))


def _layer_norm(b, m):
    return b.fused("nnxc.layer_norm", m["x"], _param(b, m, "scale", 1.0), _param(b, m, "bias", 0.0),
                   axes=tuple(m.attrs["axes"]), epsilon=_eps(m), fast_variance="fast" in m.values)


def _rms_norm(b, m):
    return b.fused("nnxc.rms_norm", m["x"], _param(b, m, "scale", 1.0),
                axes=tuple(m.attrs["axes"]), epsilon=_eps(m))


LAYER_NORM = Rule("layer_norm", p.any(p.add(layer_norm_core, bias), layer_norm_core), _layer_norm, _check)
RMS_NORM = Rule("rms_norm", rms_core, _rms_norm, _check)
RULES = [LAYER_NORM, RMS_NORM]


def fuse_norms(graph: Graph) -> Graph:
    return fuse(graph, RULES)
