"""fuse-activations: gelu (tanh and erf forms) and silu graphs become ``nnxc.gelu`` / ``nnxc.silu``.

    before:  %0 = integer_pow(%x) {y=3}      %1 = mul(0.044715:f32, %0)   %2 = add(%x, %1)
             %3 = mul(0.7978846:f32, %2)     %4 = tanh(%3)                %5 = add(1.0:f32, %4)
             %6 = mul(0.5:f32, %5)           %7 = mul(%x, %6)
    after:   %7 = nnxc.gelu(%x) {approximate=True}

Recognized wherever the formula appears, in the spellings jax.nn and hand-written code use.
Products and sums are matched in any association and operand order (the matcher flattens
``mul`` / ``add`` chains), so each formula is written once: ``0.5*x*(1+tanh(..))``, ``x**3``
as ``integer_pow`` or a product of three ``x``, erf as ``erf(x/sqrt2)``, ``erf(x*(1/sqrt2))``
or jax's ``erfc(-x/sqrt2)``; silu as ``x*sigmoid(x)`` or ``x/(1+exp(-x))``.
"""
from __future__ import annotations

import math

from ..ir.graph import Graph
from .idioms import not_float
from .pattern import PatternBuilder, Rule, fuse

p = PatternBuilder()
x = p.var("x", const=False)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _half_x_times(y):
    """``0.5 * x * y``, or ``x * y / 2``."""
    return p.any(p.mul(0.5, x, y), p.div(p.mul(x, y), 2.0))


def _floating(m):
    return not_float(m["x"])


cube = p.any(p.integer_pow(x, y=3), p.mul(x, x, x))
inner = p.any(p.mul(SQRT_2_OVER_PI, p.add(x, p.mul(0.044715, cube))),
              p.add(p.mul(SQRT_2_OVER_PI, x), p.mul(SQRT_2_OVER_PI * 0.044715, cube)))
GELU_TANH = Rule("gelu_tanh", _half_x_times(p.add(1.0, p.tanh(inner))),
                 lambda b, m: b.fused("nnxc.gelu", m["x"], approximate=True), _floating)

erf = p.erf(p.any(p.div(x, math.sqrt(2)), p.mul(x, 1 / math.sqrt(2))))
erfc = p.erfc(p.any(p.mul(p.neg(x), 1 / math.sqrt(2)), p.div(p.neg(x), math.sqrt(2))))
GELU_ERF = Rule("gelu_erf", _half_x_times(p.any(p.add(1.0, erf), erfc)),
                lambda b, m: b.fused("nnxc.gelu", m["x"], approximate=False), _floating)

sigmoid = p.any(p.logistic(x), p.div(1.0, p.add(1.0, p.exp(p.neg(x)))))
SILU = Rule("silu", p.any(p.mul(x, sigmoid), p.div(x, p.add(1.0, p.exp(p.neg(x))))),
            lambda b, m: b.fused("nnxc.silu", m["x"]), _floating)

RULES = [GELU_TANH, GELU_ERF, SILU]


def fuse_activations(graph: Graph) -> Graph:
    return fuse(graph, RULES)
