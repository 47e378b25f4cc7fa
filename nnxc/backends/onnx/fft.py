"""FFT through ONNX ``DFT``, and complex numbers as real/imaginary pairs.

ONNX has complex tensor types but almost no op takes them (onnxruntime runs none of the
arithmetic on them), so inside the graph a complex IR value (``c64[B,5]``) is a real tensor
with a trailing axis of 2 (``f32[B,5,2]``: real part, imaginary part) -- the layout ``DFT``
itself reads and writes. c128 is the same in f64.

Rules here take over an op whenever one of its operands or results is complex, and leave
everything else to the op's own rule:

- arithmetic: ``add``, ``add_any``, ``sub``, ``neg``, ``mul``, ``div`` (Smith's algorithm),
  ``abs`` (scaled, no overflow), ``square``, ``integer_pow``, ``exp``, ``eq``, ``ne``,
  ``real``, ``imag``, ``conj``, ``complex``, ``convert_element_type`` (real <-> complex,
  c64 <-> c128; complex -> real keeps the real part, as JAX does), ``dot_general``;
- data movement and sums, which act on the two parts alike: broadcast, reshape, transpose,
  slices, pads, concatenation, gathers and scatters, selects, ``reduce_sum``, ``cumsum``,
  the identity ops -- the op's own rule runs once per part;
- ``fft`` (every ``FftType``, over its trailing axes) as forward ``DFT``s (opset >= 17):
  RFFT with ``onesided=1``, inverses as ``conj(DFT(conj(X))) / n``, IRFFT on the rebuilt
  full spectrum (the imaginary parts of the DC and Nyquist terms drop out, as in pocketfft
  and XLA);
- ``cond``, ``scan``, ``while``: complex consts, carries, scanned slices, stacked results and
  branch results are pairs in the bodies too (``control.py`` declares them so).

Any other op on a complex value is refused, naming it -- never run on the pair as if it
were a real tensor. A rule module loaded after this one is guarded too (``_guard_all`` runs
again whenever a complex rule does).

At the graph boundary (``export.py``) a complex input, output, variable or variable update
is its pair, ``boundary_type(t)`` (``c64[B,5]`` -> ``f32[B,5,2]``): inputs are marked with
``as_pair``, outputs handed over as ``pair(b, v, name)``.
"""
from __future__ import annotations

import weakref

import numpy as np

from ...ir.graph import Node, Value
from ...ir.types import TensorType, to_dtype
from . import control, elementwise, fused, indexing, linalg, reductions, rng, shape  # noqa: F401 - wrapped below
from .builder import host_array
from .table import ONNX_RULES, Refused, need

PART = {"c64": "f32", "c128": "f64"}  # the dtype of each part of a complex dtype


def is_complex(dtype: str) -> bool:
    return dtype in PART


def boundary_type(t: TensorType) -> TensorType:
    """How a complex value would cross the graph boundary: its real/imaginary pair."""
    return TensorType((*t.shape, 2), PART[t.dtype]) if is_complex(t.dtype) else t


# -- the pair representation, per builder ---------------------------------------------------
#
# For each builder (main graph or a Loop / If body), the ONNX names that hold complex values
# as pairs, and where known the names of their two parts. A name made in a body is visible
# in that body only, so lookups walk from a builder to its parents.

_PAIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _table(b) -> dict:
    t = _PAIRS.get(b)
    if t is None:
        t = _PAIRS[b] = {}
    return t


def _find(b, name: str):
    while b is not None:
        t = _PAIRS.get(b)
        if t is not None and name in t:
            return t[name]
        b = b.parent
    return None


def _where_from(v: Value) -> str:
    if v.producer is None:
        return "a complex value no rule declared as a real/imaginary pair (an nnxc bug)"
    return f"a complex result of {v.producer.op} (not lowered as a real/imaginary pair)"


def pair(b, v: Value, name: str) -> str:
    """The ``[..., 2]`` real tensor holding complex IR value ``v`` (ONNX name ``name``)."""
    if v.data is not None:
        a = np.asarray(host_array(v.data))
        return b.const(np.stack([a.real, a.imag], -1).astype(to_dtype(PART[v.type.dtype])))
    if _find(b, name) is None:
        raise Refused(f"complex value {v.type} is {_where_from(v)}")
    return name


def parts(b, v: Value, name: str) -> tuple[str, str]:
    """The real and imaginary parts of complex IR value ``v``."""
    if v.data is not None:
        a = np.asarray(host_array(v.data))
        t = to_dtype(PART[v.type.dtype])
        return b.const(a.real.astype(t)), b.const(a.imag.astype(t))
    found = _find(b, name)
    if found is None:
        raise Refused(f"complex value {v.type} is {_where_from(v)}")
    if found[0] is None:  # known as a pair only (a DFT result): split it here
        found = (b.op("Gather", name, b.scalar(0, "i64"), axis=-1),
                 b.op("Gather", name, b.scalar(1, "i64"), axis=-1))
        _table(b)[name] = found
    return found


def as_pair(b, name: str) -> str:
    """Record ONNX ``name`` (a ``[..., 2]`` tensor) as a complex value."""
    _table(b).setdefault(name, (None, None))
    return name


def join(b, re: str, im: str) -> str:
    """A complex value from its parts (the pair is made for whoever needs it; unused, it is
    pruned from the exported graph)."""
    name = b.op("Concat", b.op("Unsqueeze", re, b.i64(-1)), b.op("Unsqueeze", im, b.i64(-1)), axis=-1)
    _table(b)[name] = (re, im)
    return name


def _operand(b, v: Value, name: str):
    """(re, im) of a complex operand, (x, None) of a real one."""
    return parts(b, v, name) if is_complex(v.type.dtype) else (name, None)


# -- dispatch: complex rules take over ops that touch complex values ------------------------

COMPLEX_RULES: dict = {}  # op -> fn(b, node, xs, base) where base is the op's own rule
_GUARDED = "_nnxc_complex_guard"


def complex_rule(*ops: str):
    def register(fn):
        for op in ops:
            COMPLEX_RULES[op] = fn
        return fn
    return register


def _touches_complex(node) -> bool:
    return any(is_complex(v.type.dtype) for v in (*node.inputs, *node.outputs))


def _guard(op: str, base):
    def rule_(b, node, xs):
        if not _touches_complex(node):
            if base is None:
                raise Refused(f"no ONNX rule for {op} (exporting at opset {b.opset})")
            return base(b, node, xs)
        _guard_all()
        fn = COMPLEX_RULES.get(op)
        if fn is None and getattr(base, "always_refuses", False):
            return base(b, node, xs)  # a refusal with its own reason
        if fn is None:
            types = ", ".join(str(v.type) for v in (*node.inputs, *node.outputs) if is_complex(v.type.dtype))
            raise Refused(f"{op} on complex values ({types}): ONNX has no complex arithmetic, and nnxc "
                          f"carries complex values as real/imaginary pairs through elementwise "
                          f"arithmetic, data movement, sums, dot_general and fft only")
        return fn(b, node, xs, base)
    setattr(rule_, _GUARDED, True)
    rule_.base = base
    return rule_


def _guard_all() -> None:
    """Wrap every rule that is not wrapped yet (rule modules loaded after this one too)."""
    for op in list(ONNX_RULES):
        if not getattr(ONNX_RULES[op], _GUARDED, False):
            ONNX_RULES[op] = _guard(op, ONNX_RULES[op])
    for op in COMPLEX_RULES:
        if op not in ONNX_RULES:
            ONNX_RULES[op] = _guard(op, None)


def _real_type(t: TensorType) -> TensorType:
    return TensorType(t.shape, PART[t.dtype]) if is_complex(t.dtype) else t


def _per_part(b, node, xs, base):
    """Run the op's own rule on the real parts, then on the imaginary parts (real operands,
    such as indices and predicates, go to both as they are)."""
    ins, names = [[], []], [[], []]
    for v, x in zip(node.inputs, xs):
        if is_complex(v.type.dtype):
            ps = parts(b, v, x)
            for k in (0, 1):
                data = None
                if v.data is not None:
                    a = np.asarray(host_array(v.data))
                    data = (a.real if k == 0 else a.imag).astype(to_dtype(PART[v.type.dtype]))
                ins[k].append(Value(_real_type(v.type), data=data))
                names[k].append(ps[k])
        else:
            for k in (0, 1):
                ins[k].append(v)
                names[k].append(x)
    if base is None:
        raise Refused(f"no ONNX rule for {node.op}")
    outs = []
    for k in (0, 1):
        proxy = Node(node.op, ins[k], [_real_type(o.type) for o in node.outputs], node.attrs,
                     node.regions, node.path, node.loc)
        got = base(b, proxy, names[k])
        outs.append([got] if isinstance(got, str) else list(got))
    result = []
    for o, re, im in zip(node.outputs, outs[0], outs[1]):
        if not is_complex(o.type.dtype):
            raise Refused(f"{node.op} with complex operands and a real result {o.type}")
        result.append(join(b, re, im))
    return result if len(result) != 1 else result[0]


complex_rule(
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "slice", "rev",
    "concatenate", "pad", "select_n", "gather", "dynamic_slice", "dynamic_update_slice",
    "scatter", "scatter-add", "split", "stack", "unstack", "tile", "reduce_sum", "cumsum",
)(_per_part)


@complex_rule("copy", "copy_p", "stop_gradient", "optimization_barrier", "sharding_constraint",
              "mesh_cast", "reshard", "device_put", "pvary", "layout_constraint", "name")
def _identity(b, node, xs, base):
    return [pair(b, v, x) if is_complex(v.type.dtype) else x for v, x in zip(node.inputs, xs)]


@complex_rule("cond", "scan", "while")
def _region(b, node, xs, base):
    """Control flow: complex operands, carries and results go through the bodies as pairs
    (``control.py`` declares them so)."""
    xs = [pair(b, v, x) if is_complex(v.type.dtype) else x for v, x in zip(node.inputs, xs)]
    return base(b, node, xs)


# -- complex arithmetic ------------------------------------------------------------------------

def _ptype(node) -> str:
    """The part dtype the node computes in."""
    for v in (*node.outputs, *node.inputs):
        if is_complex(v.type.dtype):
            return PART[v.type.dtype]
    raise AssertionError(node)


def _mul(b, a, c):
    """(ar + i ai)(cr + i ci); a part may be None (zero) for a real operand."""
    (ar, ai), (cr, ci) = a, c
    if ai is None and ci is None:
        return b.op("Mul", ar, cr), None
    if ai is None:
        return b.op("Mul", ar, cr), b.op("Mul", ar, ci)
    if ci is None:
        return b.op("Mul", ar, cr), b.op("Mul", ai, cr)
    re = b.op("Sub", b.op("Mul", ar, cr), b.op("Mul", ai, ci))
    im = b.op("Add", b.op("Mul", ar, ci), b.op("Mul", ai, cr))
    return re, im


def _div(b, a, c, t: str):
    """Smith's algorithm: scale by the larger part of the divisor (no overflow of |c|^2)."""
    (ar, ai), (cr, ci) = a, c
    zero = b.scalar(0, t)
    ai = zero if ai is None else ai
    if ci is None:
        return b.op("Div", ar, cr), b.op("Div", ai, cr)
    big_re = b.op("GreaterOrEqual", b.op("Abs", cr), b.op("Abs", ci))
    # |cr| >= |ci|: r = ci/cr, d = cr + ci r, ((ar + ai r) + i (ai - ar r)) / d
    r1 = b.op("Div", ci, cr)
    d1 = b.op("Add", cr, b.op("Mul", ci, r1))
    re1 = b.op("Div", b.op("Add", ar, b.op("Mul", ai, r1)), d1)
    im1 = b.op("Div", b.op("Sub", ai, b.op("Mul", ar, r1)), d1)
    # otherwise: r = cr/ci, d = ci + cr r, ((ar r + ai) + i (ai r - ar)) / d
    r2 = b.op("Div", cr, ci)
    d2 = b.op("Add", ci, b.op("Mul", cr, r2))
    re2 = b.op("Div", b.op("Add", b.op("Mul", ar, r2), ai), d2)
    im2 = b.op("Div", b.op("Sub", b.op("Mul", ai, r2), ar), d2)
    return b.where(big_re, re1, re2, t), b.where(big_re, im1, im2, t)


def _abs(b, re: str, im: str, t: str) -> str:
    """|z| = m sqrt(1 + (n/m)^2) with m, n the larger and smaller magnitude (XLA's form):
    no overflow or underflow of the squares; 0 at 0, inf when either part is infinite."""
    x, y = b.op("Abs", re), b.op("Abs", im)
    big, small = b.op("Max", x, y), b.op("Min", x, y)
    zero = b.scalar(0, t)
    q = b.op("Div", small, b.where(b.op("Equal", big, zero), b.scalar(1, t), big, t))
    out = b.op("Mul", big, b.op("Sqrt", b.op("Add", b.scalar(1, t), b.op("Mul", q, q))))
    out = b.where(b.op("IsInf", big), b.scalar(np.inf, t), out, t)
    nan = b.op("Or", b.op("IsNaN", re), b.op("IsNaN", im))
    inf = b.op("Or", b.op("IsInf", re), b.op("IsInf", im))
    return b.where(b.op("And", nan, b.op("Not", inf)), b.scalar(np.nan, t), out, t)


def _binary_operands(b, node, xs):
    return [_operand(b, v, x) for v, x in zip(node.inputs, xs)]


def _zero_like(b, x: str, t: str) -> str:
    return b.op("Expand", b.scalar(0, t), b.op("Shape", x))


def _result(b, node, re: str, im: str | None) -> str:
    if im is None:
        im = _zero_like(b, re, _ptype(node))
    return join(b, re, im)


@complex_rule("add", "add_any", "sub")
def _add(b, node, xs, base):
    (ar, ai), (cr, ci) = _binary_operands(b, node, xs)
    op = "Sub" if node.op == "sub" else "Add"
    re = b.op(op, ar, cr)
    if ai is None and ci is None:
        im = None
    elif ci is None:
        im = ai
    elif ai is None:
        im = b.op("Neg", ci) if op == "Sub" else ci
    else:
        im = b.op(op, ai, ci)
    return _result(b, node, re, im)


@complex_rule("neg")
def _neg(b, node, xs, base):
    re, im = parts(b, node.inputs[0], xs[0])
    return join(b, b.op("Neg", re), b.op("Neg", im))


@complex_rule("mul")
def _mul_rule(b, node, xs, base):
    return _result(b, node, *_mul(b, *_binary_operands(b, node, xs)))


@complex_rule("div")
def _div_rule(b, node, xs, base):
    a, c = _binary_operands(b, node, xs)
    return _result(b, node, *_div(b, a, c, _ptype(node)))


@complex_rule("square")
def _square(b, node, xs, base):
    z = parts(b, node.inputs[0], xs[0])
    return join(b, *_mul(b, z, z))


@complex_rule("integer_pow")
def _integer_pow(b, node, xs, base):
    """The multiplication order of JAX's own lowering (``elementwise._integer_pow``)."""
    t = _ptype(node)
    x, y = parts(b, node.inputs[0], xs[0]), node.attrs["y"]
    if y == 0:
        one = b.op("Expand", b.scalar(1, t), b.op("Shape", x[0]))
        return join(b, one, _zero_like(b, x[0], t))
    recip, y = y < 0, abs(y)
    acc = None
    while y > 0:
        if y & 1:
            acc = x if acc is None else _mul(b, acc, x)
        y >>= 1
        if y > 0:
            x = _mul(b, x, x)
    if recip:
        acc = _div(b, (b.scalar(1, t), None), acc, t)
    return join(b, *acc)


@complex_rule("exp")
def _exp(b, node, xs, base):
    re, im = parts(b, node.inputs[0], xs[0])
    mag = b.op("Exp", re)
    return join(b, b.op("Mul", mag, b.op("Cos", im)), b.op("Mul", mag, b.op("Sin", im)))


@complex_rule("abs")
def _abs_rule(b, node, xs, base):
    return _abs(b, *parts(b, node.inputs[0], xs[0]), node.outputs[0].type.dtype)


@complex_rule("real", "imag")
def _real_imag(b, node, xs, base):
    re, im = parts(b, node.inputs[0], xs[0])
    return re if node.op == "real" else im


@complex_rule("conj")
def _conj(b, node, xs, base):
    v = node.inputs[0]
    if not is_complex(v.type.dtype):  # conj of a real value, as a complex value
        return join(b, b.cast(xs[0], v.type.dtype, _ptype(node)), _zero_like(b, xs[0], _ptype(node)))
    re, im = parts(b, v, xs[0])
    return join(b, re, b.op("Neg", im))


@complex_rule("complex")
def _complex(b, node, xs, base):
    t = _ptype(node)
    re, im = (b.cast(x, v.type.dtype, t) for v, x in zip(node.inputs, xs))
    shape = node.outputs[0].type.shape
    if node.inputs[0].type.shape != shape:
        re = b.expand(re, shape)
    if node.inputs[1].type.shape != shape:
        im = b.expand(im, shape)
    return join(b, re, im)


@complex_rule("eq", "ne")
def _eq(b, node, xs, base):
    (ar, ai), (cr, ci) = _binary_operands(b, node, xs)
    t = _ptype(node)
    zero = b.scalar(0, t)
    same = b.op("And", b.op("Equal", ar, cr), b.op("Equal", zero if ai is None else ai, zero if ci is None else ci))
    return b.op("Not", same) if node.op == "ne" else same


@complex_rule("convert_element_type")
def _convert(b, node, xs, base):
    src, dst = node.inputs[0].type, node.outputs[0].type
    if is_complex(src.dtype) and is_complex(dst.dtype):
        re, im = parts(b, node.inputs[0], xs[0])
        return join(b, b.cast(re, PART[src.dtype], PART[dst.dtype]), b.cast(im, PART[src.dtype], PART[dst.dtype]))
    if is_complex(src.dtype):  # complex -> real (or integer): the real part, converted
        re, _ = parts(b, node.inputs[0], xs[0])
        proxy = Node(node.op, [Value(_real_type(src))], [dst], node.attrs, (), node.path, node.loc)
        return base(b, proxy, [re])
    part = PART[dst.dtype]  # real -> complex: the value, converted, and a zero imaginary part
    proxy = Node(node.op, [node.inputs[0]], [TensorType(dst.shape, part)], node.attrs, (), node.path, node.loc)
    re = base(b, proxy, xs) if src.dtype != part else xs[0]
    return join(b, re, _zero_like(b, re, part))


@complex_rule("dot_general")
def _dot_general(b, node, xs, base):
    """Four real products when both operands are complex, two when one is."""
    lhs, rhs = node.inputs
    if not (is_complex(lhs.type.dtype) and is_complex(rhs.type.dtype)):
        return _per_part(b, node, xs, base)
    (ar, ai), (cr, ci) = parts(b, lhs, xs[0]), parts(b, rhs, xs[1])
    l_t, r_t = _real_type(lhs.type), _real_type(rhs.type)
    out = _real_type(node.outputs[0].type)

    def dot(x, y):
        proxy = Node(node.op, [Value(l_t), Value(r_t)], [out], node.attrs, (), node.path, node.loc)
        return base(b, proxy, [x, y])
    return join(b, b.op("Sub", dot(ar, cr), dot(ai, ci)), b.op("Add", dot(ar, ci), dot(ai, cr)))


# -- fft -----------------------------------------------------------------------------------

def _fft_type(node) -> str:
    ft = node.attrs["fft_type"]
    name = getattr(ft, "member", None) or getattr(ft, "name", None) or str(ft)
    name = str(name).rsplit(".", 1)[-1].upper()
    return {"0": "FFT", "1": "IFFT", "2": "RFFT", "3": "IRFFT"}.get(name, name)


def _dft(b, x: str, axis: int, *, onesided: bool = False) -> str:
    """A forward DFT along ``axis`` (an input from opset 20, an attribute before)."""
    flags = {"onesided": 1} if onesided else {}
    if b.opset >= 20:
        return b.op("DFT", x, None, b.scalar(axis, "i64"), **flags)
    return b.op("DFT", x, axis=axis, **flags)


def _conj_pair(b, x: str, part: str, scale: float = 1.0) -> str:
    """The complex conjugate of a pair tensor, times ``scale``."""
    return b.op("Mul", x, b.const(np.asarray([scale, -scale], dtype=to_dtype(part))))


def _hermitian(b, x: str, axis: int, n: int, part: str) -> str:
    """The full spectrum along ``axis`` from its ``n // 2 + 1`` first terms:
    ``X[k] = conj(X[n - k])`` for the rest."""
    m = n // 2 + 1
    if n == m:
        return x
    tail = b.op("Gather", x, b.const(np.arange(n - m, 0, -1, dtype=np.int64)), axis=axis)
    return b.op("Concat", x, _conj_pair(b, tail, part), axis=axis)


@complex_rule("fft")
def _fft(b, node, xs, base):
    """``DFT`` along each transformed axis of the ``[..., 2]`` (or ``[..., 1]``, real) tensor.
    ``DFT`` wants a leading axis it does not transform: an unbatched FFT gets one.

    Inverse transforms are forward ones, ``ifft(X) = conj(fft(conj(X))) / n`` (onnxruntime
    1.32's inverse DFT loses precision on f64 for lengths that are not powers of 2; its
    forward one does not). IRFFT rebuilds the full spectrum (``X[n-k] = conj(X[k])``) and
    keeps the real part: the imaginary parts of the DC and Nyquist terms drop out, as in
    pocketfft's (and XLA's) c2r."""
    kind = _fft_type(node)
    if kind not in ("FFT", "IFFT", "RFFT", "IRFFT"):
        raise Refused(f"fft of type {kind}")
    need(b, 17, "fft (ONNX DFT)")
    it, ot = node.inputs[0].type, node.outputs[0].type
    lengths = [int(n) for n in node.attrs["fft_lengths"]]
    k, rank = len(lengths), it.rank
    if k == 0:
        return pair(b, node.inputs[0], xs[0]) if is_complex(it.dtype) else xs[0]
    part = PART.get(ot.dtype, ot.dtype)
    if part not in ("f32", "f64"):
        raise Refused(f"fft on {it} -> {ot}: ONNX DFT runs on f32 and f64 here")
    if kind == "RFFT":
        x = b.unsqueeze(b.cast(xs[0], it.dtype, part), [rank])  # [..., n, 1]
    else:
        x = pair(b, node.inputs[0], xs[0])
    lead = rank == k
    if lead:
        x = b.unsqueeze(x, [0])
    axes = list(range(rank - k + lead, rank + lead))
    scale = 1.0 / float(np.prod(lengths))
    if kind == "RFFT":
        x = _dft(b, x, axes[-1], onesided=True)
        for ax in axes[:-1]:
            x = _dft(b, x, ax)
    elif kind == "FFT":
        for ax in axes:
            x = _dft(b, x, ax)
    elif kind == "IFFT":
        x = _conj_pair(b, x, part)
        for ax in axes:
            x = _dft(b, x, ax)
        x = _conj_pair(b, x, part, scale)
    else:  # IRFFT: the real part of the conjugate is the real part
        x = _conj_pair(b, x, part)
        for ax in axes[:-1]:
            x = _dft(b, x, ax)
        x = _dft(b, _hermitian(b, x, axes[-1], lengths[-1], part), axes[-1])
        x = b.op("Mul", b.op("Gather", x, b.scalar(0, "i64"), axis=-1), b.scalar(scale, part))
    if lead:
        x = b.squeeze(x, [0])
    return x if kind == "IRFFT" else as_pair(b, x)


_guard_all()
