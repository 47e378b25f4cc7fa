"""Shape rules: broadcast, reshape, transpose, squeeze, concatenate, pad, slice, rev, iota."""
from __future__ import annotations

from ...ir.attrs import SymDim
from .table import Refused, rule

INT64_MIN = -(2**63)


def dims_of(attr) -> tuple:
    """An IR shape attribute (ints and SymDims) as IR dims (ints and expression strings)."""
    return tuple(d.expr if isinstance(d, SymDim) else int(d) for d in attr)


@rule("broadcast_in_dim")
def _broadcast_in_dim(b, node, xs):
    out = node.outputs[0].type
    src = node.inputs[0].type
    bdims = node.attrs["broadcast_dimensions"]
    x = b.unsqueeze(xs[0], [i for i in range(out.rank) if i not in bdims])
    kept = [1 if i not in bdims else src.shape[bdims.index(i)] for i in range(out.rank)]
    if tuple(kept) == tuple(out.shape):
        return x
    return b.expand(x, out.shape)


@rule("reshape")
def _reshape(b, node, xs):
    if node.attrs.get("dimensions") is not None:
        raise Refused("reshape with a dimension permutation")
    out = node.outputs[0].type
    if out.shape == node.inputs[0].type.shape:
        return xs[0]
    return b.reshape(xs[0], out.shape)


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
    for size in node.attrs["sizes"]:
        outs.append(b.slice(xs[0], [start], [start + size], [axis]))
        start += size
    return outs


@rule("slice")
def _slice(b, node, xs):
    a = node.attrs
    starts, limits = a["start_indices"], a["limit_indices"]
    steps = a.get("strides") or (1,) * len(starts)
    shape = node.inputs[0].type.shape
    axes = [i for i, (s, e, st) in enumerate(zip(starts, limits, steps))
            if (s, st) != (0, 1) or e != shape[i]]
    return b.slice(xs[0], [starts[i] for i in axes], [limits[i] for i in axes], axes,
                   [steps[i] for i in axes])


@rule("rev")
def _rev(b, node, xs):
    axes = list(node.attrs["dimensions"])
    return b.slice(xs[0], [-1] * len(axes), [INT64_MIN] * len(axes), axes, [-1] * len(axes))


def interior_pad(b, x: str, rank: int, axis: int, k: int, value: str) -> str:
    """Insert ``k`` copies of ``value`` between neighbours along ``axis`` (lax.pad interior)."""
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    y = b.unsqueeze(b.transpose(x, perm), [rank])  # [..., n, 1]
    y = b.op("Pad", y, b.i64(*([0] * (rank + 1) + [0] * rank + [k])), value)  # [..., n, k+1]
    y = b.op("Reshape", y, b.i64(*([0] * (rank - 1) + [-1])))  # [..., n*(k+1)]
    y = b.slice(y, [0], [-k], [rank - 1])  # drop the padding after the last element
    return b.transpose(y, inv)


def pad(b, x: str, rank: int, config, value: str) -> str:
    """lax.pad: ``config`` is ((low, high, interior), ...) per axis; negative pads crop."""
    for axis, (_, _, interior) in enumerate(config):
        if interior:
            x = interior_pad(b, x, rank, axis, interior, value)
    crop = [(i, lo, hi) for i, (lo, hi, _) in enumerate(config) if lo < 0 or hi < 0]
    if crop:
        x = b.slice(x, [-min(lo, 0) for _, lo, _ in crop],
                    [min(hi, 0) if hi < 0 else 2**63 - 1 for _, _, hi in crop], [i for i, _, _ in crop])
    lows = [max(lo, 0) for lo, _, _ in config]
    highs = [max(hi, 0) for _, hi, _ in config]
    if any(lows) or any(highs):
        x = b.op("Pad", x, b.i64(*lows, *highs), value)
    return x


@rule("pad")
def _pad(b, node, xs):
    return pad(b, xs[0], node.inputs[0].type.rank, node.attrs["padding_config"], xs[1])


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
    if len(shape) > 1:
        x = b.expand(x, shape)
    return b.cast(x, t, out.dtype)


@rule("dim_as_value")
def _dim_as_value(b, node, xs):
    d = node.attrs["dim"]
    return b.dim_scalar(d.expr if isinstance(d, SymDim) else int(d), node.outputs[0].type.dtype)


@rule("tile")
def _tile(b, node, xs):
    return b.op("Tile", xs[0], b.i64(*node.attrs["reps"]))


@rule("stack")
def _stack(b, node, xs):
    axis = node.attrs["axis"]
    return b.op("Concat", *[b.unsqueeze(x, [axis]) for x in xs], axis=axis)


@rule("unstack")
def _unstack(b, node, xs):
    axis = node.attrs["axis"]
    return [b.op("Gather", xs[0], b.scalar(i, "i64"), axis=axis) for i in range(len(node.outputs))]
