"""Shape rules: broadcast, reshape, transpose, squeeze, concatenate, pad, slice, rev, iota.

Shapes, starts and sizes may hold symbolic dims: an IR dim is an int or the text of an
expression (``B``, ``B-1``, ``2*B``, ``mod(-2,B)``); ``b.dim`` / ``b.shape`` compute those at
run time from the ``Shape`` of the graph inputs. ``dim_add`` / ``dim_mul`` build new ones.
"""
from __future__ import annotations

import math

from ...ir.attrs import SymDim
from .table import Refused, rule

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def dims_of(attr) -> tuple:
    """An IR shape attribute (ints and SymDims) as IR dims (ints and expression strings)."""
    return tuple(d.expr if isinstance(d, SymDim) else int(d) for d in attr)


def dim_add(*dims):
    """The sum of IR dims: an int, or the text of a symbolic expression."""
    const = sum(d for d in dims if isinstance(d, int))
    terms = [f"({d})" for d in dims if not isinstance(d, int)]
    if not terms:
        return const
    text = "+".join(terms)
    return text if const == 0 else f"{text}+{const}" if const > 0 else f"{text}-{-const}"


def dim_mul(*dims):
    """The product of IR dims: an int, or the text of a symbolic expression."""
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    const = math.prod(d for d in dims if isinstance(d, int))
    if const == 0:
        return 0
    terms = [f"({d})" for d in dims if not isinstance(d, int)]
    return "*".join(([str(const)] if const != 1 else []) + terms)


def _static(dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def reshape(b, x: str, dims) -> str:
    """Reshape to IR dims. A symbolic dim may be 0 at run time (``B-1`` at B=1), so the shape
    tensor is read literally (``allowzero``), never as "copy the input's dim"."""
    dims = tuple(dims)
    maybe_zero = 0 in dims or not _static(dims)
    if maybe_zero and b.opset < 14:
        if 0 in dims:
            raise Refused("a reshape to an empty shape needs opset >= 14 (Reshape allowzero)")
        maybe_zero = False  # opset 13 has no allowzero: right unless a symbolic dim is 0
    return b.op("Reshape", x, _shape_or_infer(b, dims), allowzero=1 if maybe_zero else None)


def _shape_or_infer(b, dims) -> str:
    """``b.shape(dims)``, except that one symbolic dim ``b.dim`` cannot compute (say a power,
    ``B^2``) is left for Reshape to infer (-1) from the input's size."""
    bad = [i for i, d in enumerate(dims) if not isinstance(d, int) and not _computable(b, d)]
    if len(bad) != 1 or 0 in dims:
        return b.shape(dims)  # refuses, naming the dim, if one cannot be computed
    return b.shape([-1 if i == bad[0] else d for i, d in enumerate(dims)])


def _computable(b, d) -> bool:
    try:
        b.dim(d)
    except Refused:
        return False
    return True


def slice_dims(b, x: str, starts, ends, axes, steps=None) -> str:
    """``Slice`` whose starts and ends may be symbolic dims."""
    axes = list(axes)
    if not axes:
        return x
    if _static(starts) and _static(ends):
        return b.slice(x, starts, ends, axes, steps)
    ins = [b.shape(starts), b.shape(ends), b.i64(*axes)]
    if steps is not None and any(s != 1 for s in steps):
        ins.append(b.i64(*steps))
    return b.op("Slice", x, *ins)


def expand(b, x: str, dims, out) -> str:
    """``Expand`` of ``x`` (IR dims ``dims``, same rank) to IR dims ``out``."""
    # onnxruntime's optimizer drops an Expand from size 1 to a constant 0 (the result keeps
    # the 1): empty those axes with a Slice first
    empty = [i for i, (d, o) in enumerate(zip(dims, out)) if o == 0 and d == 1]
    if empty:
        x = b.slice(x, [0] * len(empty), [0] * len(empty), empty)
        dims = [0 if i in empty else d for i, d in enumerate(dims)]
    return x if tuple(dims) == tuple(out) else b.expand(x, out)


@rule("broadcast_in_dim")
def _broadcast_in_dim(b, node, xs):
    out = node.outputs[0].type
    src = node.inputs[0].type
    bdims = node.attrs["broadcast_dimensions"]
    x = b.unsqueeze(xs[0], [i for i in range(out.rank) if i not in bdims])
    kept = [1 if i not in bdims else src.shape[bdims.index(i)] for i in range(out.rank)]
    return expand(b, x, kept, out.shape)


@rule("reshape")
def _reshape(b, node, xs):
    if node.attrs.get("dimensions") is not None:
        raise Refused("reshape with a dimension permutation")
    out = node.outputs[0].type
    if out.shape == node.inputs[0].type.shape:
        return xs[0]
    return reshape(b, xs[0], out.shape)


@rule("transpose")
def _transpose(b, node, xs):
    return b.transpose(xs[0], node.attrs["permutation"])


@rule("squeeze")
def _squeeze(b, node, xs):
    return b.squeeze(xs[0], node.attrs["dimensions"])


@rule("expand_dims")
def _expand_dims(b, node, xs):
    return b.unsqueeze(xs[0], node.attrs["dimensions"])


@rule("concatenate")
def _concatenate(b, node, xs):
    return xs[0] if len(xs) == 1 else b.op("Concat", *xs, axis=node.attrs["dimension"])


@rule("split")
def _split(b, node, xs):
    axis, start, outs = node.attrs["axis"], 0, []
    for size in dims_of(node.attrs["sizes"]):
        end = dim_add(start, size)
        outs.append(slice_dims(b, xs[0], [start], [end], [axis]))
        start = end
    return outs


@rule("slice")
def _slice(b, node, xs):
    a = node.attrs
    starts, limits = dims_of(a["start_indices"]), dims_of(a["limit_indices"])
    steps = a.get("strides") or (1,) * len(starts)
    shape = node.inputs[0].type.shape
    axes = [i for i, (s, e, st) in enumerate(zip(starts, limits, steps))
            if (s, st) != (0, 1) or e != shape[i]]
    return slice_dims(b, xs[0], [starts[i] for i in axes], [limits[i] for i in axes], axes,
                      [steps[i] for i in axes])


@rule("rev")
def _rev(b, node, xs):
    axes = list(node.attrs["dimensions"])
    return b.slice(xs[0], [-1] * len(axes), [INT64_MIN] * len(axes), axes, [-1] * len(axes))


# dtypes onnxruntime's Pad does not take, and the type to pad them in (casts round-trip)
_PAD_VIA = {"bf16": "f32", "i16": "i32", "u16": "i32"}


def pad_op(b, x: str, lows, highs, value: str | None, dtype: str) -> str:
    """ONNX ``Pad`` (constant mode) by non-negative amounts, for any IR dtype."""
    if not any(lows) and not any(highs):
        return x
    wide = _PAD_VIA.get(dtype)
    if wide is not None:
        x = b.cast(x, dtype, wide)
        value = None if value is None else b.cast(value, dtype, wide)
    y = b.op("Pad", x, b.i64(*lows, *highs), *([value] if value is not None else []))
    return y if wide is None else b.cast(y, wide, dtype)


def interior_pad(b, x: str, shape, axis: int, k: int, value: str, dtype: str) -> str:
    """Insert ``k`` copies of ``value`` between neighbours along ``axis`` (lax.pad interior);
    ``shape``: the IR dims of ``x``."""
    rank = len(shape)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    y = b.unsqueeze(b.transpose(x, perm), [rank])  # [..., n, 1]
    y = pad_op(b, y, [0] * (rank + 1), [0] * rank + [k], value, dtype)  # [..., n, k+1]
    y = reshape(b, y, [shape[i] for i in perm[:-1]] + [dim_mul(shape[axis], k + 1)])
    y = b.slice(y, [0], [-k], [rank - 1])  # drop the padding after the last element
    return b.transpose(y, inv)


def pad(b, x: str, shape, config, value: str, dtype: str) -> str:
    """lax.pad: ``config`` is ((low, high, interior), ...) per axis; negative pads crop."""
    config = [dims_of(c) for c in config]
    if not all(_static(c) for c in config):
        raise Refused("pad by symbolic amounts")
    shape = list(shape)
    for axis, (_, _, interior) in enumerate(config):
        if interior:
            x = interior_pad(b, x, shape, axis, interior, value, dtype)
            n = shape[axis]
            shape[axis] = max(n + (n - 1) * interior, 0) if isinstance(n, int) else \
                dim_add(dim_mul(n, interior + 1), -interior)
    # pad, then crop: a negative low pad may remove more than the operand has, eating into the
    # high padding (lax.pad(x[0], low=-1, high=2) is one padding value, fuzz seed 30951)
    x = pad_op(b, x, [max(lo, 0) for lo, _, _ in config], [max(hi, 0) for _, hi, _ in config], value, dtype)
    crop = [(i, lo, hi) for i, (lo, hi, _) in enumerate(config) if lo < 0 or hi < 0]
    if crop:
        x = b.slice(x, [-min(lo, 0) for _, lo, _ in crop],
                    [min(hi, 0) if hi < 0 else INT64_MAX for _, _, hi in crop], [i for i, _, _ in crop])
    return x


@rule("pad")
def _pad(b, node, xs):
    t = node.inputs[0].type
    return pad(b, xs[0], t.shape, node.attrs["padding_config"], xs[1], t.dtype)


_RANGE_TYPES = ("f32", "f64", "i16", "i32", "i64")


@rule("iota")
def _iota(b, node, xs):
    a = node.attrs
    out = node.outputs[0].type
    shape, dim = dims_of(a["shape"]), a["dimension"]
    t = out.dtype if out.dtype in _RANGE_TYPES else "i64"
    n = b.dim_scalar(shape[dim], t)
    x = b.op("Range", b.scalar(0, t), n, b.scalar(1, t))
    x = b.unsqueeze(x, [i for i in range(len(shape)) if i != dim])
    x = expand(b, x, [d if i == dim else 1 for i, d in enumerate(shape)], shape)
    return b.cast(x, t, out.dtype)


@rule("dim_as_value")
def _dim_as_value(b, node, xs):
    d = node.attrs["dim"]
    return b.dim_scalar(d.expr if isinstance(d, SymDim) else int(d), node.outputs[0].type.dtype)


@rule("tile")
def _tile(b, node, xs):
    return b.op("Tile", xs[0], b.shape(dims_of(node.attrs["reps"])))


@rule("stack")
def _stack(b, node, xs):
    axis = node.attrs["axis"]
    return b.op("Concat", *[b.unsqueeze(x, [axis]) for x in xs], axis=axis)


@rule("unstack")
def _unstack(b, node, xs):
    axis = node.attrs["axis"]
    return [b.op("Gather", xs[0], b.scalar(i, "i64"), axis=axis) for i in range(len(node.outputs))]
