"""Elementwise rules: math, comparisons, logic and shifts, select, casts."""
from __future__ import annotations

import numpy as np

from ...ir.types import to_dtype
from .builder import onnx_dtype
from .table import ONNX_RULES, Refused, need, rule


def dt(node, i: int = 0) -> str:
    return node.inputs[i].type.dtype


def odt(node, i: int = 0) -> str:
    return node.outputs[i].type.dtype


_WIDE = {"f16": "f32", "bf16": "f32"}  # low-precision floats computed in f32 by multi-op rules


def _simple(onnx_op: str):
    return lambda b, node, xs: b.op(onnx_op, *xs)


for _jax, _onnx in {
    "sub": "Sub", "div": "Div", "pow": "Pow", "exp": "Exp", "log": "Log", "tanh": "Tanh",
    "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin",
    "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh",
    "acosh": "Acosh", "atanh": "Atanh", "sqrt": "Sqrt", "floor": "Floor", "ceil": "Ceil",
    "erf": "Erf",
}.items():
    ONNX_RULES[_jax] = _simple(_onnx)


def sigmoid(b, x: str, t: str) -> str:
    """``1 / (1 + exp(-x))``, as XLA computes ``logistic``, not ONNX ``Sigmoid``: onnxruntime's
    f32 Sigmoid (MLAS, Eigen's rational approximation around 0.5) is accurate only to about
    3e-8 absolute, so ``sigmoid(-14.2)`` comes out 5 % too large and ``sigmoid(-20)`` several
    times too large. A later normalization turns that into a visible error (fuzz seed 56098:
    3e-4 where 2e-5 is allowed). This form is within 4 ulps of XLA's over [-100, 100], each
    about 2 ulps from the exact value; f16 / bf16 are computed in f32 and rounded once, as
    XLA does."""
    w = _WIDE.get(t, t)
    x = b.cast(x, t, w)
    one = b.scalar(1, w)
    y = b.op("Div", one, b.op("Add", one, b.op("Exp", b.op("Neg", x))))
    return b.cast(y, w, t)


@rule("logistic")
def _logistic(b, node, xs):
    return sigmoid(b, xs[0], dt(node))


_BOOL_OP = {"add": "Or", "mul": "And", "max": "Or", "min": "And"}
_INT_OP = {"and": "BitwiseAnd", "or": "BitwiseOr", "xor": "BitwiseXor", "not": "BitwiseNot"}


@rule("add", "mul", "max", "min")
def _arith(b, node, xs):
    t = dt(node)
    if t == "bool":
        return b.op(_BOOL_OP[node.op], *xs)
    if node.op in ("max", "min") and t in ("i16", "u16"):  # not in onnxruntime: go through i32
        out = b.op(node.op.capitalize(), *[b.cast(x, t, "i32") for x in xs])
        return b.cast(out, "i32", t)
    if node.op == "max" and t in ("f32", "f16", "f64"):
        relu = _relu_of(node, xs)
        if relu is not None:  # Relu, not Max(x, 0): onnxruntime fuses it into Conv / Gemm
            return b.op("Relu", relu)
    return b.op(node.op.capitalize(), *xs)


def _relu_of(node, xs):
    """The operand of ``max(x, 0)`` (either order, 0 a constant splat), else None."""
    from ...passes.rewrite import splat
    a, c = node.inputs
    for x, zero, name in ((a, c, xs[0]), (c, a, xs[1])):
        if zero.type.size() != 1 and zero.type != node.outputs[0].type:
            continue
        if x.type == node.outputs[0].type and splat(zero) == 0.0:
            return name
    return None


@rule("add_any")
def _add_any(b, node, xs):
    """What jax.grad adds cotangents with: a plain add."""
    return b.op("Or" if dt(node) == "bool" else "Add", *xs)


@rule("and", "or", "xor", "not")
def _logic(b, node, xs):
    if dt(node) == "bool":
        return b.op(node.op.capitalize(), *xs)
    need(b, 18, f"bitwise {node.op} on integers")
    return b.op(_INT_OP[node.op], *xs)


@rule("neg")
def _neg(b, node, xs):
    if dt(node).startswith("u"):  # wraps around, like JAX
        return b.op("Sub", b.scalar(0, dt(node)), xs[0])
    return b.op("Neg", xs[0])


@rule("sign")
def _sign(b, node, xs):
    t = dt(node)
    if t in ("f16", "bf16"):  # onnxruntime's Sign gives 0 for their NaN (fuzz seed 41262); f32 is exact
        return b.cast(b.op("Sign", b.cast(xs[0], t, "f32")), "f32", t)
    if t.startswith(("f", "bf")):
        return b.op("Sign", xs[0])
    # onnxruntime's vectorized Sign gets int64 values past 2**31 wrong: (x > 0) - (x < 0)
    zero = b.scalar(0, t)
    pos = b.cast(b.op("Greater", xs[0], zero), "bool", t)
    return b.op("Sub", pos, b.cast(b.op("Less", xs[0], zero), "bool", t)) if t[0] == "i" else pos


@rule("abs")
def _abs(b, node, xs):
    return xs[0] if dt(node).startswith("u") else b.op("Abs", xs[0])


@rule("rem")
def _rem(b, node, xs):
    """C fmod semantics (the sign of the dividend). onnxruntime's integer fmod=1 goes
    through double and loses large values, so integers take Python's mod and a fix-up."""
    t = dt(node)
    if t.startswith(("f", "bf")):
        return b.op("Mod", *xs, fmod=1)
    r = b.op("Mod", *xs, fmod=0)
    if t.startswith("u"):
        return r
    x, y = xs
    zero = b.scalar(0, t)
    flip = b.op("Xor", b.op("Less", r, zero), b.op("Less", x, zero))
    fix = b.op("And", b.op("Not", b.op("Equal", r, zero)), flip)
    return b.where(fix, b.op("Sub", r, y), r, t)


@rule("square")
def _square(b, node, xs):
    return b.op("Mul", xs[0], xs[0])


@rule("rsqrt")
def _rsqrt(b, node, xs):
    return b.op("Reciprocal", b.op("Sqrt", xs[0]))


@rule("cbrt")
def _cbrt(b, node, xs):
    mag = b.op("Pow", b.op("Abs", xs[0]), b.scalar(1 / 3, dt(node)))
    return b.op("Mul", b.op("Sign", xs[0]), mag)


@rule("exp2")
def _exp2(b, node, xs):
    return b.op("Pow", b.scalar(2, dt(node)), xs[0])


@rule("log1p")
def _log1p(b, node, xs):
    """log(u) * (x / (u - 1)) with u = 1 + x keeps small x exact; the ratio first, since
    log(u) * x overflows for x near the largest float (fuzz seed 10063)."""
    x, t = xs[0], dt(node)
    u = b.op("Add", x, b.scalar(1, t))
    um1 = b.op("Sub", u, b.scalar(1, t))
    ratio = b.op("Mul", b.op("Log", u), b.op("Div", x, um1))
    out = b.where(b.op("Equal", um1, b.scalar(0, t)), x, ratio)
    return b.where(b.op("IsInf", u, detect_negative=0), u, out)  # log1p(-inf) stays NaN


@rule("expm1")
def _expm1(b, node, xs):
    """(u - 1) * (x / log(u)) with u = exp(x), Kahan's trick; the ratio first, since
    (u - 1) * x overflows for u near the largest float."""
    x, t = xs[0], dt(node)
    u = b.op("Exp", x)
    um1 = b.op("Sub", u, b.scalar(1, t))
    ratio = b.op("Mul", um1, b.op("Div", x, b.op("Log", u)))
    out = b.where(b.op("Equal", um1, b.scalar(0, t)), x, ratio)
    out = b.where(b.op("Equal", um1, b.scalar(-1, t)), um1, out)
    return b.where(b.op("IsInf", u), u, out)


# log(erfc(x) * exp(x*x) / t) with t = 1 / (1 + x/2), x >= 0, as a polynomial in t (lowest
# degree first): a least-squares Chebyshev fit of degree 11 to scipy's f64 erfcx over
# [0, 1e4] (largest error 4.4e-8), the form of Numerical Recipes' erfc.
_ERFC_TAIL = (-1.26551212, 0.999999475, 0.375040863, 0.0822268228, -0.0714560841, -0.250632846,
              0.389359546, -1.33418578, 2.53869053, -2.31613087, 1.04082948, -0.188229055)


@rule("erfc")
def _erfc(b, node, xs):
    """``erfc(x) = t * exp(-x*x) * exp(P(t))`` for x >= 0 and ``2 - erfc(-x)`` below, not
    ``1 - Erf(x)``, which is 0 from x = 4 on (so ``log_ndtr(-9)`` was -inf, not -43.6): within
    12 ulps of XLA's f32 erfc over [-10, 10], and relatively accurate down to f32's smallest
    normal, below which it is 0 as in XLA. ``exp(-x*x)`` is its own factor so that x*x rounds
    as in XLA's formula. f16 / bf16 are computed in f32 and rounded once."""
    t = dt(node)
    w = _WIDE.get(t, t)
    x = b.cast(xs[0], t, w)
    ax = b.op("Abs", x)
    one = b.scalar(1, w)
    u = b.op("Div", one, b.op("Add", one, b.op("Mul", ax, b.scalar(0.5, w))))
    poly = b.scalar(_ERFC_TAIL[-1], w)
    for c in reversed(_ERFC_TAIL[:-1]):
        poly = b.op("Add", b.op("Mul", poly, u), b.scalar(c, w))
    gauss = b.op("Exp", b.op("Neg", b.op("Mul", ax, ax)))
    pos = b.op("Mul", b.op("Mul", gauss, u), b.op("Exp", poly))
    tiny = b.scalar(np.finfo(to_dtype(w)).tiny, w)  # XLA flushes subnormal results to 0
    pos = b.where(b.op("Less", pos, tiny), b.scalar(0, w), pos)
    out = b.where(b.op("Less", x, b.scalar(0, w)), b.op("Sub", b.scalar(2, w), pos), pos)
    return b.cast(out, w, t)


@rule("is_finite")
def _is_finite(b, node, xs):
    return b.op("Not", b.op("Or", b.op("IsInf", xs[0]), b.op("IsNaN", xs[0])))


@rule("atan2")
def _atan2(b, node, xs):
    """C's atan2, signed zeros and infinities included: the angle of (|x|, |y|) in the first
    quadrant, mirrored by the sign bits of x and y (ONNX has no copysign; ``_negative``)."""
    t = dt(node)
    w = _WIDE.get(t, t)  # f16 / bf16: computed in f32 and rounded once, as XLA does
    y, x = (b.cast(v, t, w) for v in xs)
    ay, ax = b.op("Abs", y), b.op("Abs", x)
    a = b.op("Atan", b.op("Div", ay, ax))  # NaN for 0/0 and inf/inf (and NaN inputs)
    zero = b.scalar(0, w)
    diagonal = b.where(b.op("Equal", ay, zero), zero, b.scalar(np.pi / 4, w))  # pi/4 exactly
    a = b.where(b.op("Equal", ay, ax), diagonal, a)
    a = b.where(_negative(b, x, w), b.op("Sub", b.scalar(np.pi, w), a), a)
    sign = b.where(_negative(b, y, w), b.scalar(-1, w), b.scalar(1, w))  # not Where(.., -a, a):
    return b.cast(b.op("Mul", a, sign), w, t)  # onnxruntime's Where drops the sign of -0.0


def _negative(b, x: str, t: str) -> str:
    """Whether the sign bit of float ``x`` is set (-0.0 too, via 1/-0 = -inf; not NaN)."""
    zero = b.scalar(0, t)
    neg_zero = b.op("And", b.op("Equal", x, zero), b.op("Less", b.op("Reciprocal", x), zero))
    return b.op("Or", b.op("Less", x, zero), neg_zero)


@rule("round")
def _round(b, node, xs):
    method = node.attrs.get("rounding_method")
    even = b.op("Round", xs[0])  # ONNX Round is half-to-even
    if method is not None and getattr(method, "member", method) in ("TO_NEAREST_EVEN", 1):
        return even
    x, t = xs[0], dt(node)  # away from zero: fix the ties of half-to-even
    sign = b.op("Sign", x)
    trunc = b.op("Mul", sign, b.op("Floor", b.op("Abs", x)))
    tie = b.op("Equal", b.op("Abs", b.op("Sub", x, trunc)), b.scalar(0.5, t))
    return b.where(tie, b.op("Add", trunc, sign), even)


@rule("integer_pow")
def _integer_pow(b, node, xs):  # the same multiplication order as JAX's own lowering
    x, y = xs[0], node.attrs["y"]
    if y == 0:
        return b.op("Expand", b.scalar(1, dt(node)), b.op("Shape", x))
    recip, y = y < 0, abs(y)
    acc = None
    while y > 0:
        if y & 1:
            acc = x if acc is None else b.op("Mul", acc, x)
        y >>= 1
        if y > 0:
            x = b.op("Mul", x, x)
    return b.op("Div", b.scalar(1, dt(node)), acc) if recip else acc


_CMP = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@rule("eq", "ne", "lt", "le", "gt", "ge")
def _compare(b, node, xs):
    if dt(node) == "bool" and node.op not in ("eq", "ne"):  # onnxruntime orders numbers only
        xs = [b.cast(x, "bool", "u8") for x in xs]
    out = b.op(_CMP.get(node.op, "Equal"), *xs)
    return b.op("Not", out) if node.op == "ne" else out


@rule("eq_to", "lt_to", "le_to")
def _compare_total_order(b, node, xs):
    """XLA's TOTALORDER comparisons (sort and searchsorted comparators): floats compare by
    their bits, -NaN < -inf < -0.0 < 0.0 < inf < NaN, and a NaN equals itself."""
    from .indexing import _key  # the same integer key TopK sorts floats by
    t = dt(node)
    if _is_float(t):
        need(b, 26, f"{node.op} on {t} (ONNX BitCast)")
    keys = [_key(b, x, t)[0] for x in xs]
    return b.op({"eq_to": "Equal", "lt_to": "Less", "le_to": "LessOrEqual"}[node.op], *keys)


@rule("select_n")
def _select_n(b, node, xs):
    which, cases = xs[0], xs[1:]
    if len(cases) == 1:
        return cases[0]
    t = odt(node)
    if dt(node) == "bool":
        return b.where(which, cases[1], cases[0], t, signed_zeros=True)
    out = cases[-1]
    for i in range(len(cases) - 2, -1, -1):
        out = b.where(b.op("Equal", which, b.scalar(i, dt(node))), cases[i], out, t, signed_zeros=True)
    return out


@rule("clamp")
def _clamp(b, node, xs):
    lo, x, hi = xs
    return b.op("Min", b.op("Max", x, lo), hi)


@rule("convert_element_type")
def _convert(b, node, xs):
    src, dst = dt(node), odt(node)
    if _is_float(src) and dst[0] in "iu":
        return _float_to_int(b, xs[0], src, dst)
    return b.cast(xs[0], src, dst)


def _is_float(t: str) -> bool:
    return t.startswith(("f", "bf"))


def _float_to_int(b, x: str, src: str, dst: str) -> str:
    """XLA's float -> integer conversion: toward zero, saturating at the integer's range,
    NaN -> 0 (ONNX Cast leaves out-of-range values and NaN undefined). The bounds are
    floats of the source type: the integer maximum is often not one (int32 max in f32),
    so values above the largest float below it are set to the maximum after the Cast."""
    if src not in ("f32", "f64"):  # f16, bf16, f8: every value is exact in f32
        x, src = b.cast(x, src, "f32"), "f32"
    info, ftype = np.iinfo(to_dtype(dst)), to_dtype(src).type
    lo, hi = ftype(info.min), ftype(info.max)  # the minimum (0 or -2**k) is exact
    if int(hi) > info.max:
        hi = np.nextafter(hi, ftype(0))
    x = b.where(b.op("IsNaN", x), b.scalar(0, src), x)
    out = b.cast(b.op("Clip", x, b.scalar(lo, src), b.scalar(hi, src)), src, dst)
    if int(hi) < info.max:
        out = b.where(b.op("Greater", x, b.scalar(hi, src)), b.scalar(info.max, dst), out, dst)
    return out


@rule("bitcast_convert_type")
def _bitcast(b, node, xs):
    src, dst = dt(node), odt(node)
    if to_dtype(src).itemsize != to_dtype(dst).itemsize:
        raise Refused(f"bitcast from {src} to {dst} changes the element size")
    if src == dst:
        return xs[0]
    if b.opset >= 26:
        return b.op("BitCast", xs[0], to=onnx_dtype(dst))
    if dst in _FLOAT_BITS and src[0] in "iu":  # e.g. the uniform floats of jax.random
        return _bits_to_float(b, xs[0], src, dst)
    need(b, 26, f"bitcast_convert_type from {src} to {dst} (ONNX BitCast)")


_FLOAT_BITS = {"f32": (8, 23), "f16": (5, 10)}  # exponent and mantissa bits


def _bits_to_float(b, x: str, src: str, dst: str) -> str:
    """Integer bits -> float by arithmetic (before BitCast existed): sign, exponent and
    mantissa fields, exact for every value including subnormals, infinities and NaN."""
    ebits, mbits = _FLOAT_BITS[dst]
    width, bias = 1 + ebits + mbits, (1 << (ebits - 1)) - 1
    i = b.op("Mod", b.cast(x, src, "i64"), b.scalar(1 << width, "i64"))  # the unsigned pattern

    def field(shift, size):
        return b.op("Mod", b.op("Div", i, b.scalar(1 << shift, "i64")), b.scalar(1 << size, "i64"))
    e, m = field(mbits, ebits), b.op("Mod", i, b.scalar(1 << mbits, "i64"))
    frac = b.op("Div", b.cast(m, "i64", "f32"), b.scalar(float(1 << mbits), "f32"))
    scale = b.op("Pow", b.scalar(2, "f32"), b.op("Sub", b.cast(e, "i64", "f32"), b.scalar(bias, "f32")))
    normal = b.op("Mul", b.op("Add", frac, b.scalar(1, "f32")), scale)
    tiny = b.op("Mul", frac, b.scalar(2.0 ** (1 - bias), "f32"))  # subnormals
    zero_e = b.op("Equal", e, b.scalar(0, "i64"))
    out = b.where(zero_e, tiny, normal)
    special = b.where(b.op("Equal", m, b.scalar(0, "i64")), b.scalar(np.inf, "f32"), b.scalar(np.nan, "f32"))
    out = b.where(b.op("Equal", e, b.scalar((1 << ebits) - 1, "i64")), special, out)
    out = b.where(b.op("Equal", field(width - 1, 1), b.scalar(1, "i64")), b.op("Neg", out), out)
    return b.cast(out, "f32", dst)


_FLOAT_FORMAT = {"f64": (11, 52, "u64"), "f32": (8, 23, "u32"), "f16": (5, 10, "u16"),
                 "bf16": (8, 7, "u16")}  # exponent bits, mantissa bits, same-size unsigned type


@rule("reduce_precision")
def _reduce_precision(b, node, xs):
    """XLA's rounding on the bits to ``exponent_bits`` / ``mantissa_bits``: the mantissa to
    nearest even, exponents above the range to signed infinity and below it to signed zero
    (subnormals too), NaN as it is. The bits are integers in i64, or u64 for f64 (where
    the rounding carry wraps, as XLA's unsigned add does)."""
    t = dt(node)
    need(b, 26, f"reduce_precision on {t} (ONNX BitCast)")
    if t not in _FLOAT_FORMAT:
        raise Refused(f"reduce_precision on {t}")
    src_e, src_m, ut = _FLOAT_FORMAT[t]
    e, m = node.attrs["exponent_bits"], node.attrs["mantissa_bits"]
    nbits = 1 + src_e + src_m
    w = "u64" if nbits == 64 else "i64"
    k = lambda v: b.scalar(v, w)  # noqa: E731
    band = lambda v, mask: b.op("BitwiseAnd", v, k(mask))  # noqa: E731
    x = xs[0]
    bits = b.cast(b.op("BitCast", x, to=onnx_dtype(ut)), ut, w)
    if m < src_m:  # + 0111.. (+1 when the last kept bit is set), then drop the bits below it
        last = 1 << (src_m - m)
        bias = b.op("Add", b.op("Div", band(bits, last), k(last)), k((last >> 1) - 1))
        bits = band(b.op("Add", bits, bias), ((1 << nbits) - 1) & ~(last - 1))
    if e < src_e:
        exp_mask = ((1 << src_e) - 1) << src_m
        src_bias, bias = (1 << (src_e - 1)) - 1, (1 << (e - 1)) - 1
        exponent = band(bits, exp_mask)
        signed_zero = band(bits, 1 << (nbits - 1))
        signed_inf = b.op("BitwiseOr", signed_zero, k(exp_mask))
        bits = b.where(b.op("Greater", exponent, k((src_bias + bias) << src_m)), signed_inf, bits, w)
        bits = b.where(b.op("LessOrEqual", exponent, k((src_bias - bias) << src_m)), signed_zero, bits, w)
    out = b.op("BitCast", b.cast(bits, w, ut), to=onnx_dtype(t))
    return b.where(b.op("IsNaN", x), x, out, t)


@rule("nextafter")
def _nextafter(b, node, xs):
    """One step of the float's bit pattern towards ``y`` (integers order like the floats)."""
    need(b, 26, "nextafter (ONNX BitCast)")
    x, y = xs
    t = dt(node)
    it = {"f32": "i32", "f64": "i64", "f16": "i16"}.get(t)
    if it is None:
        raise Refused(f"nextafter on {t}")
    wide = "i32" if it == "i16" else it
    bits = b.cast(b.op("BitCast", x, to=onnx_dtype(it)), it, wide)
    zero = b.scalar(0, t)
    up = b.op("Equal", b.op("Less", x, y), b.op("Greater", x, zero))  # away from zero?
    step = b.where(up, b.scalar(1, wide), b.scalar(-1, wide), wide)
    out = b.op("BitCast", b.cast(b.op("Add", bits, step), wide, it), to=onnx_dtype(t))
    tiny = b.op("BitCast", b.scalar(1, it), to=onnx_dtype(t))  # the smallest subnormal
    out = b.where(b.op("Equal", x, zero), b.where(b.op("Less", y, zero), b.op("Neg", tiny), tiny), out)
    out = b.where(b.op("Equal", x, y), y, out)
    nan = b.op("Or", b.op("IsNaN", x), b.op("IsNaN", y))
    return b.where(nan, b.op("Add", x, y), out)


@rule("copy", "copy_p", "stop_gradient", "optimization_barrier", "sharding_constraint",
      "mesh_cast", "reshard", "device_put", "pvary", "layout_constraint", "name")
def _identity(b, node, xs):
    return list(xs)


# -- shifts: onnxruntime shifts unsigned 8/32/64-bit integers only ----------------------

_WORK = {"u8": "u8", "i8": "u8", "u16": "u32", "i16": "u32", "u32": "u32", "i32": "u32",
         "u64": "u64", "i64": "u64"}
_SIGNED = {"u8": "i8", "u16": "i16", "u32": "i32", "u64": "i64"}


def _shift(b, x: str, s: str, t: str, direction: str) -> str:
    """Logical shift of ``x`` (dtype ``t``) by ``s``; amounts >= the bit width give 0."""
    work, bits = _WORK[t], to_dtype(t).itemsize * 8
    xu, su = b.cast(x, t, work), b.cast(s, t, work)
    if direction == "RIGHT" and bits < to_dtype(work).itemsize * 8:  # drop i16's sign extension
        need(b, 18, f"shift_right_logical on {t}")
        xu = b.op("BitwiseAnd", xu, b.scalar((1 << bits) - 1, work))
    out = b.op("BitShift", xu, su, direction=direction)
    out = b.where(b.op("GreaterOrEqual", su, b.scalar(bits, work)), b.scalar(0, work), out, work)
    return b.cast(out, work, t)


@rule("shift_left")
def _shift_left(b, node, xs):
    return _shift(b, *xs, dt(node), "LEFT")


@rule("shift_right_logical")
def _shift_right_logical(b, node, xs):
    return _shift(b, *xs, dt(node), "RIGHT")


@rule("shift_right_arithmetic")
def _shift_right_arithmetic(b, node, xs):
    """The top bit is the sign, for unsigned types too: ~((~x) >> s) when x < 0."""
    need(b, 18, "shift_right_arithmetic")
    t = dt(node)
    signed = _SIGNED.get(t, t)
    wide = "i32" if to_dtype(t).itemsize < 4 else signed  # onnxruntime's Where skips i8/i16
    x = b.cast(b.cast(xs[0], t, signed), signed, wide)
    s = b.cast(b.cast(xs[1], t, signed), signed, wide)
    neg = b.op("Less", x, b.scalar(0, wide))
    r = _shift(b, b.where(neg, b.op("BitwiseNot", x), x, wide), s, wide, "RIGHT")
    r = b.where(neg, b.op("BitwiseNot", r), r, wide)
    return b.cast(b.cast(r, wide, signed), signed, t)


# -- erf_inv: the single-precision approximation XLA uses (M. Giles) ---------------------

_ERFINV_SMALL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                 -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_LARGE = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                 -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


@rule("erf_inv")
def _erf_inv(b, node, xs):
    t = dt(node)
    x = b.cast(xs[0], t, "f32")
    one = b.scalar(1, "f32")
    sq = b.op("Mul", x, x)
    log1p_arg = b.op("Neg", sq)  # w = -log1p(-x*x), via the log1p rule's identity
    u = b.op("Add", log1p_arg, one)
    um1 = b.op("Sub", u, one)
    l1p = b.where(b.op("Equal", um1, b.scalar(0, "f32")), log1p_arg,
                  b.op("Div", b.op("Mul", b.op("Log", u), log1p_arg), um1))
    w = b.op("Neg", l1p)
    small = b.op("Less", w, b.scalar(5, "f32"))
    w = b.where(small, b.op("Sub", w, b.scalar(2.5, "f32")),
                b.op("Sub", b.op("Sqrt", w), b.scalar(3, "f32")))
    coef = [b.where(small, b.scalar(s, "f32"), b.scalar(g, "f32"))
            for s, g in zip(_ERFINV_SMALL, _ERFINV_LARGE)]
    p = coef[0]
    for c in coef[1:]:
        p = b.op("Add", c, b.op("Mul", p, w))
    out = b.op("Mul", p, x)
    edge = b.op("Equal", b.op("Abs", x), one)
    out = b.where(edge, b.op("Mul", x, b.scalar(np.inf, "f32")), out)
    return b.cast(out, "f32", odt(node))
