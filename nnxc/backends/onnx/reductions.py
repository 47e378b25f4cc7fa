"""Reductions: reduce_*, argmax/argmin, cumulative ops, reduce_window (pooling)."""
from __future__ import annotations

import numpy as np

from ...ir.types import to_dtype
from .shape import INT64_MAX, dim_add, dim_mul, interior_pad, pad_op, reshape
from .table import Refused, need, rule


def reduce(b, onnx_op: str, x: str, axes, keepdims: int = 0) -> str:
    axes = list(axes)
    if not axes:
        return x
    if b.opset >= 18 or (onnx_op == "ReduceSum" and b.opset >= 13):
        return b.op(onnx_op, x, b.i64(*axes), keepdims=keepdims)
    return b.op(onnx_op, x, axes=axes, keepdims=keepdims)


_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
           "reduce_prod": "ReduceProd", "reduce_and": "ReduceMin", "reduce_or": "ReduceMax"}


@rule(*_REDUCE, "reduce_xor")
def _reduce(b, node, xs):
    axes, t = node.attrs["axes"], node.inputs[0].type.dtype
    if t != "bool":
        if node.op in ("reduce_and", "reduce_or", "reduce_xor"):
            raise Refused(f"{node.op} on {t} (bitwise reductions of integers)")
        out = reduce(b, _REDUCE[node.op], xs[0], axes)
        if node.op in ("reduce_max", "reduce_min") and t.startswith(("f", "bf")):
            out = _keep_nan(b, xs[0], out, axes, t)
        return out
    x = b.cast(xs[0], "bool", "i32")  # onnxruntime reduces numbers only
    if node.op == "reduce_xor":
        s = reduce(b, "ReduceSum", x, axes)
        return b.cast(b.op("Mod", s, b.scalar(2, "i32")), "i32", "bool")
    op = "ReduceMin" if node.op in ("reduce_and", "reduce_min") else "ReduceMax"
    return b.cast(reduce(b, op, x, axes), "i32", "bool")


def _keep_nan(b, x: str, out: str, axes, t: str) -> str:
    """XLA's max/min reductions return NaN when the row holds one; onnxruntime skips it."""
    nan = b.cast(b.op("IsNaN", x), "bool", "i32")
    any_nan = b.cast(reduce(b, "ReduceMax", nan, list(axes)), "i32", "bool")
    return b.where(any_nan, b.scalar(np.nan, t), out)


@rule("argmax", "argmin")
def _argmax(b, node, xs):
    (axis,) = node.attrs["axes"]
    t, ot = node.inputs[0].type.dtype, node.outputs[0].type.dtype
    x = b.cast(xs[0], "bool", "i32") if t == "bool" else xs[0]
    op = "ArgMax" if node.op == "argmax" else "ArgMin"
    out = b.op(op, x, axis=axis, keepdims=0)
    if t.startswith(("f", "bf")):  # JAX counts NaN as the extreme: the first NaN wins
        nan = b.cast(b.op("IsNaN", x), "bool", "i32")
        first_nan = b.op("ArgMax", nan, axis=axis, keepdims=0)
        any_nan = b.cast(reduce(b, "ReduceMax", nan, [axis]), "i32", "bool")
        out = b.where(any_nan, first_nan, out)
    return b.cast(out, "i64", ot)


def _logaddexp(b, t):
    def combine(x, y):
        hi = b.op("Max", x, y)
        diff = b.op("Neg", b.op("Abs", b.op("Sub", x, y)))
        out = b.op("Add", hi, b.op("Log", b.op("Add", b.scalar(1, t), b.op("Exp", diff))))
        return b.where(b.op("IsInf", hi), hi, out)  # inf - inf would make NaN: -inf and inf stay
    return combine


def doubling_scan(b, x: str, axis: int, n: int, combine, identity: str, rank: int,
                  reverse: bool, dtype: str) -> str:
    """Inclusive scan by log2(n) shifted combines (Hillis-Steele)."""
    shift = 1
    while shift < n:
        pads = [0] * (2 * rank)
        pads[axis + (rank if reverse else 0)] = shift
        padded = pad_op(b, x, pads[:rank], pads[rank:], identity, dtype)
        moved = b.slice(padded, [shift if reverse else 0], [n + shift if reverse else n], [axis])
        x = combine(x, moved)
        shift *= 2
    return x


@rule("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")
def _cumulative(b, node, xs):
    axis, reverse = node.attrs["axis"], bool(node.attrs.get("reverse", False))
    it = node.inputs[0].type
    if node.op == "cumsum":
        return b.op("CumSum", xs[0], b.scalar(axis, "i64"), reverse=int(reverse))
    if node.op == "cumprod" and b.opset >= 26:
        return b.op("CumProd", xs[0], b.scalar(axis, "i64"), reverse=int(reverse))
    n = it.shape[axis]
    if not isinstance(n, int):
        raise Refused(f"{node.op} along a symbolic axis")
    t = it.dtype
    if t.startswith(("f", "bf")):
        lo, hi = -np.inf, np.inf
    else:
        lo, hi = np.iinfo(to_dtype(t)).min, np.iinfo(to_dtype(t)).max
    combine, ident = {
        "cumprod": (lambda p, q: b.op("Mul", p, q), 1),
        "cummax": (lambda p, q: b.op("Max", p, q), lo),
        "cummin": (lambda p, q: b.op("Min", p, q), hi),
        "cumlogsumexp": (_logaddexp(b, t), -np.inf),
    }[node.op]
    return doubling_scan(b, xs[0], axis, n, combine, b.scalar(ident, t), it.rank, reverse, t)


# -- reduce_window: pooling over the windowed dims, the others folded into the batch --------

def _pool_type(t: str, op: str) -> str:
    """The dtype to pool ``t`` in: onnxruntime pools f16/f32/f64 (integers go through f64,
    exact below 2**53)."""
    if t in ("f16", "f32", "f64"):
        return t
    if t == "bf16":
        return "f32"
    if op == "reduce_window_sum":
        raise Refused(f"reduce_window_sum on {t} (onnxruntime convolves floats only)")
    return "f64"


def _pool_identity(t: str, op: str):
    """The reducer's identity, in the space MaxPool works in (min pools the negated input)."""
    if op == "reduce_window_sum":
        return 0
    if t.startswith(("f", "bf")):
        return -np.inf
    if t == "bool":
        return 0 if op == "reduce_window_max" else -1
    info = np.iinfo(to_dtype(t))
    return int(info.min) if op == "reduce_window_max" else -int(info.max)


@rule("reduce_window_max", "reduce_window_min", "reduce_window_sum")
def _reduce_window(b, node, xs):
    """Padding goes in as an explicit Pad with the reducer's identity (-inf for max, +inf
    for min, 0 for sum), as XLA pads: onnxruntime's MaxPool refuses pads >= the kernel.
    Its float MaxPool also skips NaNs (XLA's max and min propagate them) and, with strides,
    never goes below the lowest finite float (a window of -inf gives -3.4e38): a second pool
    classifies each window (a NaN in it / all -inf / otherwise) and puts both back. When each
    window holds an input element, MaxPool pads by itself; when the input is a relu's, no
    window is all -inf and only NaNs are put back. Two axes not pooled (NHWC) stay as N and
    C, with no Reshape around the pool."""
    a = node.attrs
    it, ot, op = node.inputs[0].type, node.outputs[0].type, node.op
    rank, t = it.rank, it.dtype
    win, strides = a["window_dimensions"], a["window_strides"]
    pads, base, wdil = [tuple(p) for p in a["padding"]], a["base_dilation"], a["window_dilation"]
    pooled = [i for i in range(rank) if (win[i], strides[i], pads[i], base[i], wdil[i])
              != (1, 1, (0, 0), 1, 1)]
    if not pooled:
        return xs[0]
    rest = [i for i in range(rank) if i not in pooled]
    perm = rest + pooled
    work = _pool_type(t, op)
    x = b.cast(b.transpose(xs[0], perm), t, work)
    x, shape, group, folded = _pool_frame(b, x, [it.shape[i] for i in rest],
                                          [it.shape[i] for i in pooled], op)
    if op == "reduce_window_min":
        x = b.op("Neg", x)
    ident = b.scalar(_pool_identity(t, op), work)
    for k, i in enumerate(pooled):
        if base[i] != 1:
            x = interior_pad(b, x, shape, 2 + k, base[i] - 1, ident, work)
            n = shape[2 + k]
            shape[2 + k] = dim_add(dim_mul(n, base[i]), 1 - base[i])
    lo = [pads[i][0] for i in pooled]
    hi = [pads[i][1] for i in pooled]
    crop = [(2 + k, l, h) for k, (l, h) in enumerate(zip(lo, hi)) if l < 0 or h < 0]
    if crop:  # negative padding drops elements
        x = b.slice(x, [max(-l, 0) for _, l, _ in crop], [h if h < 0 else INT64_MAX for _, _, h in crop],
                    [k for k, _, _ in crop])
    lo, hi = [max(p, 0) for p in lo], [max(p, 0) for p in hi]
    kernel = [win[i] for i in pooled]
    kw = dict(kernel_shape=kernel, strides=[strides[i] for i in pooled], dilations=[wdil[i] for i in pooled])
    if op == "reduce_window_sum":  # Conv pads with zeros, the identity, and takes any amount
        ones = b.const(np.ones([group, 1] + kernel, dtype=to_dtype(work)))
        y = b.op("Conv", x, ones, pads=lo + hi, group=group if group > 1 else None, **kw)
    else:
        if _windows_hold_input(node, pooled, lo, hi):  # MaxPool's own padding: no Pad node
            kw["pads"] = lo + hi
        else:
            x = pad_op(b, x, [0, 0] + lo, [0, 0] + hi, ident, work)
        y = b.op("MaxPool", x, **kw)
        if t.startswith(("f", "bf")) and "pads" in kw and _never_neg_inf(node):
            y = _put_nan_back(b, x, y, shape, kw, work)
        elif t.startswith(("f", "bf")):  # per window: 2 if a NaN, 0 if all -inf, else 1
            cls = b.op("Add", b.cast(b.op("IsNaN", x), "bool", work),
                       b.cast(b.op("Not", b.op("IsInf", x, detect_positive=0)), "bool", work))
            cls = b.op("MaxPool", cls, **kw)
            y = b.where(b.op("Equal", cls, b.scalar(0, work)), b.scalar(-np.inf, work), y)
            y = b.where(b.op("Greater", cls, b.scalar(1, work)), b.scalar(np.nan, work), y)
        if op == "reduce_window_min":
            y = b.op("Neg", y)
    if folded:
        y = reshape(b, y, [ot.shape[i] for i in perm])
    return b.cast(b.transpose(y, [perm.index(i) for i in range(rank)]), work, t)


def _windows_hold_input(node, pooled: list, lo: list, hi: list) -> bool:
    """Each window holds an element of the input (no dilation, non-negative padding shorter
    than the window), so MaxPool's own padding, which it skips, is XLA's identity padding."""
    a, t = node.attrs, node.inputs[0].type
    for k, i in enumerate(pooled):
        n, w = t.shape[i], a["window_dimensions"][i]
        if not isinstance(n, int) or n < 1 or a["base_dilation"][i] != 1 \
                or a["window_dilation"][i] != 1 or min(a["padding"][i]) < 0 or max(lo[k], hi[k]) >= w:
            return False
    return True


def _never_neg_inf(node) -> bool:
    """The pooled input is ``max(x, c)`` with ``|c| <= 1e30`` (a relu): never -inf, and a
    window's sum (at most 2**20 elements) never overflows to -inf."""
    from ...passes.rewrite import splat
    p = node.inputs[0].producer
    if node.op != "reduce_window_max" or p is None or p.op != "max":
        return False
    if int(np.prod(node.attrs["window_dimensions"])) > 2 ** 20:
        return False
    return any(c is not None and abs(c) <= 1e30 for c in map(splat, p.inputs))


def _put_nan_back(b, x: str, y: str, shape: list, kw: dict, work: str) -> str:
    """MaxPool's result ``y`` with NaN where ``x``'s window holds one, for an ``x`` that is
    never -inf. The window's average is NaN exactly there (its other values are finite or
    +inf, whose sums are too); tanh maps it into [-1, 1] or NaN, and a depthwise 1x1 Conv
    of zeros into 0 or NaN, which is added. Every op here (AveragePool, Tanh, Conv, Add)
    has an NCHWc form in onnxruntime, so a conv net's pooling stays in its blocked layout
    (an IsNaN / Where guard sent it back to NCHW: 10 layout reorders in ResNet-18). Not
    f32 (onnxruntime's CPU Conv is f32 only) or channels not known: a max pool of IsNaN
    and a Where."""
    channels = shape[1]
    if work != "f32" or not isinstance(channels, int) or channels < 1:
        nan = b.op("MaxPool", b.cast(b.op("IsNaN", x), "bool", work), **kw)  # 1: a NaN in it
        return b.where(b.op("Greater", nan, b.scalar(0, work)), b.scalar(np.nan, work), y)
    # (MaxPool pads by itself only without dilation: AveragePool takes the rest as it is)
    mean = b.op("AveragePool", x, **{k: v for k, v in kw.items() if k != "dilations"})
    zeros = b.const(np.zeros([channels, 1, 1, 1], dtype=to_dtype(work)))
    nan_or_zero = b.op("Conv", b.op("Tanh", mean), zeros, group=channels if channels > 1 else None)
    return b.op("Add", y, nan_or_zero)


def _pool_frame(b, x: str, rest: list, pooled: list, op: str):
    """``x`` (its axes ``rest + pooled``) as [batch, channels, *pooled] for MaxPool / Conv:
    (tensor, its dims, Conv group, whether it was reshaped). Two axes not pooled are batch
    and channels as they are (NCHW, no Reshape: the layout pass then cancels the
    Transposes around the pool; a sum is a depthwise Conv, one group per channel);
    otherwise they are folded into the batch, with one channel."""
    if len(rest) == 2 and (op != "reduce_window_sum" or (isinstance(rest[1], int) and rest[1] > 0)):
        return x, list(rest) + list(pooled), rest[1] if op == "reduce_window_sum" else 1, False
    shape = [dim_mul(*rest), 1] + list(pooled)
    return reshape(b, x, shape), shape, 1, True


# -- select_and_scatter_add / select_and_gather_add: derivatives of max / min pooling --------
#
# Each window selects one operand element: with ``select_prim=ge`` (max pooling) the first
# maximum in window order, with ``le`` (min pooling) the first minimum. Padding takes part as
# the lowest value, first in order (XLA drops the gradient of a window of -inf that starts in
# padding). MaxPool's Indices output finds the element (it keeps the first maximum), over the
# windowed dims with the others folded into the batch, in f64 where -inf and padding become
# -1e300 (MaxPool never picks a value at or below the lowest float). NaN inputs may select
# another element than XLA (MaxPool skips NaN).

def _pool_selection(b, node, operand: str, what: str):
    """(flat indices into the padded layout, the windows' pooled value, layout) of the
    element each window selects (the pooled value is -1e300 where all are -inf or padding)."""
    a = node.attrs
    prim = a["select_prim"].get("name")
    if prim not in ("ge", "le"):
        raise Refused(f"{what} with select_prim={prim} (ge and le, the derivatives of max and "
                      "min pooling, are supported)")
    if any(d != 1 for d in a.get("base_dilation", ())):
        raise Refused(f"{what} with base dilation {a['base_dilation']}")
    ot = node.inputs[1].type
    rank, t = ot.rank, ot.dtype
    win, strides, pads = a["window_dimensions"], a["window_strides"], [tuple(p) for p in a["padding"]]
    wdil = a.get("window_dilation") or (1,) * rank
    pooled = [i for i in range(rank) if (win[i], strides[i], pads[i], wdil[i]) != (1, 1, (0, 0), 1)]
    if not pooled:
        return None, None, None
    if any(p < 0 for i in pooled for p in pads[i]):
        raise Refused(f"{what} with negative padding {a['padding']}")
    if not (t.startswith(("f", "bf")) or t in ("i8", "i16", "i32", "u8", "u16", "u32")):
        raise Refused(f"{what} on {t}")
    rest = [i for i in range(rank) if i not in pooled]
    perm = rest + pooled
    layout = _PoolLayout(ot, perm, pooled, pads)
    x = reshape(b, b.cast(b.transpose(operand, perm), t, "f64"), layout.shape)
    if prim == "le":
        x = b.op("Neg", x)
    lowest = b.scalar(-1e300, "f64")
    x = layout.pad(b, b.where(b.op("IsInf", x, detect_positive=0), lowest, x), lowest, "f64")
    y, idx = b.op("MaxPool", x, outs=2, kernel_shape=[win[i] for i in pooled],
                  strides=[strides[i] for i in pooled], dilations=[wdil[i] for i in pooled])
    return reshape(b, idx, [-1]), reshape(b, y, [-1]), layout


class _PoolLayout:
    """The operand as [batch, 1, *windowed dims], padded, and back."""

    def __init__(self, t, perm, pooled, pads):
        self.t, self.perm, self.pooled = t, perm, pooled
        rest = perm[:len(perm) - len(pooled)]
        self.sizes = [t.shape[i] for i in pooled]
        self.lo, self.hi = [pads[i][0] for i in pooled], [pads[i][1] for i in pooled]
        batch = dim_mul(*[t.shape[i] for i in rest]) if rest else 1
        self.shape = [batch, 1] + self.sizes
        self.padded = [batch, 1] + [dim_add(n, lo + hi) for n, lo, hi in zip(self.sizes, self.lo, self.hi)]

    def pad(self, b, x, value, dtype):
        if not (any(self.lo) or any(self.hi)):
            return x
        return pad_op(b, x, [0, 0] + self.lo, [0, 0] + self.hi, value, dtype)

    def unpad(self, b, x):
        if not (any(self.lo) or any(self.hi)):
            return x
        ends = [dim_add(n, lo) for n, lo in zip(self.sizes, self.lo)]
        return b.slice(x, self.lo, ends, list(range(2, 2 + len(self.pooled))))


@rule("select_and_scatter_add")
def _select_and_scatter_add(b, node, xs):
    """jax.grad of max / min pooling: each window's source value is added (ScatterElements)
    at the element it selects (see above); the padding is cut off after."""
    need(b, 16, "select_and_scatter_add (ScatterElements with reduction='add')")
    idx, _, layout = _pool_selection(b, node, xs[1], "select_and_scatter_add")
    if idx is None:
        return xs[0]  # each element is its own window
    t = node.inputs[1].type
    src = reshape(b, b.transpose(xs[0], layout.perm), [-1])
    zeros = reshape(b, b.expand(b.scalar(0, t.dtype), layout.padded), [-1])
    out = b.op("ScatterElements", zeros, idx, src, axis=0, reduction="add")
    out = layout.unpad(b, reshape(b, out, layout.padded))
    out = reshape(b, out, [t.shape[i] for i in layout.perm])
    return b.transpose(out, [layout.perm.index(i) for i in range(t.rank)])


@rule("select_and_gather_add")
def _select_and_gather_add(b, node, xs):
    """jax.jvp of max / min pooling: each window takes the tangent (GatherElements) of the
    element it selects (see above). XLA reduces (value, tangent) pairs from (-inf, 0), which
    a window of -inf and padding keeps: its tangent is 0."""
    idx, pooled, layout = _pool_selection(b, node, xs[1], "select_and_gather_add")
    if idx is None:
        return xs[0]
    t, out_t = node.inputs[0].type, node.outputs[0].type
    tangent = reshape(b, b.transpose(xs[0], layout.perm), layout.shape)
    tangent = reshape(b, layout.pad(b, tangent, b.scalar(0, t.dtype), t.dtype), [-1])
    out = b.op("GatherElements", tangent, idx, axis=0)
    out = b.where(b.op("Equal", pooled, b.scalar(-1e300, "f64")), b.scalar(0, t.dtype), out)
    out = reshape(b, out, [out_t.shape[i] for i in layout.perm])
    return b.transpose(out, [layout.perm.index(i) for i in range(out_t.rank)])
