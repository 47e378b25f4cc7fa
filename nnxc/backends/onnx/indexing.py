"""Indexing: gather / scatter (the forms jnp indexing and nnx.Embed produce, and the general
case through full coordinates), dynamic_slice, dynamic_update_slice, sort and top_k.
"""
from __future__ import annotations

import numpy as np

from ...ir.types import to_dtype
from .builder import onnx_dtype
from .shape import dims_of, pad_op
from .table import Refused, need, rule

FILL = "FILL_OR_DROP"


def _mode(node) -> str:
    m = node.attrs.get("mode")
    return getattr(m, "member", "FILL_OR_DROP" if m is None else str(m))


def _fill_value(node, dtype: str):
    v = node.attrs.get("fill_value")
    if v is not None:
        return v
    if dtype.startswith(("f", "bf", "c")):
        return np.nan
    if dtype == "bool":
        return True
    info = np.iinfo(to_dtype(dtype))
    return info.max if dtype.startswith("u") else info.min


def _column(b, idx: str, k: int, last: int, dtype: str) -> str:
    """``idx[..., k]`` as int64."""
    return b.cast(b.op("Gather", idx, b.scalar(k, "i64"), axis=last), dtype, "i64")


def _in_bounds(b, s: str, size, window) -> tuple[str, str]:
    """(start clamped to [0, size - window], mask of starts out of that range)."""
    hi = b.op("Sub", b.dim_scalar(size), b.scalar(window, "i64")) if not isinstance(window, str) \
        else b.op("Sub", b.dim_scalar(size), b.dim_scalar(window))
    clamped = b.op("Max", b.op("Min", s, hi), b.scalar(0, "i64"))
    return clamped, b.op("Not", b.op("Equal", clamped, s))


def _iota_at(b, n, axis: int, rank: int) -> str:
    r = b.op("Range", b.scalar(0, "i64"), b.dim_scalar(n), b.scalar(1, "i64"))
    return b.unsqueeze(r, [i for i in range(rank) if i != axis])


def _place(b, x: str, positions, rank: int) -> str:
    """Unsqueeze a tensor whose dims go to ``positions`` of a rank-``rank`` result."""
    return b.unsqueeze(x, [i for i in range(rank) if i not in positions])


def _coords(b, shape, per_dim) -> str:
    """Stack per-dim coordinate tensors (each broadcastable to ``shape``) -> [*shape, R]."""
    full = b.shape(shape)
    parts = [b.unsqueeze(b.op("Expand", c, full), [len(shape)]) for c in per_dim]
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=-1)


@rule("gather")
def _gather(b, node, xs):
    dn = node.attrs["dimension_numbers"]
    offset, collapsed, smap = dn.get("offset_dims"), dn.get("collapsed_slice_dims"), dn.get("start_index_map")
    obatch, ibatch = dn.get("operand_batching_dims") or (), dn.get("start_indices_batching_dims") or ()
    sizes = dims_of(node.attrs["slice_sizes"])
    ot, it, xt = node.outputs[0].type, node.inputs[1].type, node.inputs[0].type
    x, idx, mode = xs[0], xs[1], _mode(node)
    nb, rank = it.rank - 1, xt.rank
    starts, masks = [], []
    for k, d in enumerate(smap):
        s, oob = _in_bounds(b, _column(b, idx, k, nb, it.dtype), xt.shape[d], sizes[d])
        starts.append(s)
        masks.append(oob)
    batch_pos = [p for p in range(ot.rank) if p not in offset]
    window = [d for d in range(rank) if d not in collapsed and d not in obatch]
    full = [d for d in range(rank) if d not in smap and d not in obatch]
    if not obatch and len(smap) == 1 and tuple(collapsed) == tuple(smap) and \
            all(sizes[d] == xt.shape[d] for d in full):  # take along one axis (Embed, strides)
        a = smap[0]
        out = b.op("Gather", x, starts[0], axis=a)  # dims: x[:a], batch, x[a+1:]
        labels = [("w", d) for d in range(a)] + [("b", i) for i in range(nb)] + \
                 [("w", d) for d in range(a + 1, rank)]
    elif nb == 0 and not obatch:  # a dynamic slice at one start position
        vec = b.op("Concat", *[b.unsqueeze(s, [0]) for s in starts], axis=0)
        ends = b.op("Add", vec, b.shape([sizes[d] for d in smap]))
        out = b.op("Slice", x, vec, ends, b.i64(*smap))
        out = b.squeeze(out, collapsed)
        labels = [("w", d) for d in window]
    else:  # general: GatherND on the coordinates of every gathered element
        shape = list(it.shape[:-1]) + list(sizes)
        per_dim = []
        for d in range(rank):
            if d in smap:
                c = _place(b, starts[smap.index(d)], range(nb), len(shape))
                if sizes[d] != 1:
                    c = b.op("Add", c, _iota_at(b, sizes[d], nb + d, len(shape)))
            elif d in obatch:
                j = ibatch[obatch.index(d)]
                c = _iota_at(b, it.shape[j], j, len(shape))
            else:
                c = _iota_at(b, sizes[d], nb + d, len(shape))
            per_dim.append(c)
        out = b.op("GatherND", x, _coords(b, shape, per_dim))
        out = b.squeeze(out, [nb + d for d in range(rank) if d in collapsed or d in obatch])
        labels = [("b", i) for i in range(nb)] + [("w", d) for d in window]
    want = []
    wins, bats = iter(window), iter(range(nb))
    for p in range(ot.rank):
        want.append(("w", next(wins)) if p in offset else ("b", next(bats)))
    out = b.transpose(out, [labels.index(w) for w in want])
    if mode == FILL and masks:
        oob = masks[0]
        for m in masks[1:]:
            oob = b.op("Or", oob, m)
        fill = b.scalar(_fill_value(node, ot.dtype), ot.dtype)
        out = b.where(_place(b, oob, batch_pos, ot.rank), fill, out, ot.dtype)
    return out


_SCATTER = {"scatter": "none", "scatter-add": "add", "scatter-mul": "mul",
            "scatter-min": "min", "scatter-max": "max"}


def _scatter_type(dtype: str, reduction: str, op: str) -> str:
    """The dtype to scatter ``dtype`` in: onnxruntime's ScatterND reduces neither f16 nor
    bf16 (f32 is exact for their max / min and rounds add / mul once), sets no bf16, and
    takes max / min of booleans (or / and) as u8."""
    if dtype == "bf16" or (dtype == "f16" and reduction != "none"):
        return "f32"
    if dtype == "bool" and reduction != "none":
        if reduction not in ("min", "max"):
            raise Refused(f"{op} on booleans")
        return "u8"
    return dtype


@rule(*_SCATTER)
def _scatter(b, node, xs):
    """ScatterND on the full coordinates of every updated element, reducing duplicates with
    its ``reduction``. Modes as XLA: CLIP clamps each window into the operand; FILL_OR_DROP
    and PROMISE_IN_BOUNDS drop windows that do not fit, by sending them to an extra row
    past the end of axis 0 that is sliced away afterwards. Scatter max / min propagate NaN
    like XLA's max / min (onnxruntime's drop it): NaNs of the operand stay, and positions a
    NaN update reaches become NaN."""
    reduction = _SCATTER[node.op]
    need(b, 18 if reduction in ("min", "max") else 16 if reduction != "none" else 13,
         f"{node.op} (ScatterND reduction={reduction})")
    dn = node.attrs["dimension_numbers"]
    uwin, inserted = dn.get("update_window_dims"), dn.get("inserted_window_dims")
    smap = dn.get("scatter_dims_to_operand_dims")
    obatch, ibatch = dn.get("operand_batching_dims") or (), dn.get("scatter_indices_batching_dims") or ()
    xt, it, ut = node.inputs[0].type, node.inputs[1].type, node.inputs[2].type
    work = _scatter_type(xt.dtype, reduction, node.op)
    x, idx, upd = b.cast(xs[0], xt.dtype, work), xs[1], b.cast(xs[2], ut.dtype, work)
    nb, rank = it.rank - 1, xt.rank
    scatter_pos = [p for p in range(ut.rank) if p not in uwin]
    window = [d for d in range(rank) if d not in inserted and d not in obatch]
    wsize = {d: ut.shape[uwin[w]] for w, d in enumerate(window)}
    per_dim, masks = [], []
    for d in range(rank):
        c = None
        if d in smap:
            s, oob = _in_bounds(b, _column(b, idx, smap.index(d), nb, it.dtype), xt.shape[d], wsize.get(d, 1))
            masks.append(oob)
            c = _place(b, s, scatter_pos, ut.rank)
        elif d in obatch:
            j = ibatch[obatch.index(d)]
            c = _iota_at(b, it.shape[j], scatter_pos[j], ut.rank)
        if d in wsize:
            w = _iota_at(b, wsize[d], uwin[window.index(d)], ut.rank)
            c = w if c is None else b.op("Add", c, w)
        if c is None:
            raise Refused(f"{node.op}: operand dim {d} is neither scattered, batched nor windowed")
        per_dim.append(c)
    drop = _mode(node) != "CLIP" and masks
    if drop:  # out-of-bounds windows write to an extra row past the end, removed afterwards
        oob = masks[0]
        for m in masks[1:]:
            oob = b.op("Or", oob, m)
        per_dim[0] = b.where(_place(b, oob, scatter_pos, ut.rank), b.dim_scalar(xt.shape[0]), per_dim[0])
        x = pad_op(b, x, [0] * rank, [1] + [0] * (rank - 1), None, work)
    coords = _coords(b, ut.shape, per_dim)
    out = b.op("ScatterND", x, coords, upd, reduction=None if reduction == "none" else reduction)
    if reduction in ("min", "max") and work.startswith("f"):
        zeros = b.op("Expand", b.scalar(0, work), b.op("Shape", x))
        hit = b.op("ScatterND", zeros, coords, b.cast(b.op("IsNaN", upd), "bool", work), reduction="max")
        nan = b.op("Or", b.op("Greater", hit, b.scalar(0, work)), b.op("IsNaN", x))
        out = b.where(nan, b.scalar(np.nan, work), out, work)
    if drop:
        out = b.slice(out, [0], [-1], [0])
    return b.cast(out, work, xt.dtype)


@rule("dynamic_slice")
def _dynamic_slice(b, node, xs):
    xt = node.inputs[0].type
    sizes = dims_of(node.attrs["slice_sizes"])
    starts = [_in_bounds(b, b.cast(s, node.inputs[1 + i].type.dtype, "i64"), xt.shape[i], sizes[i])[0]
              for i, s in enumerate(xs[1:])]
    vec = b.op("Concat", *[b.unsqueeze(s, [0]) for s in starts], axis=0)
    return b.op("Slice", xs[0], vec, b.op("Add", vec, b.shape(sizes)), b.i64(*range(xt.rank)))


@rule("dynamic_update_slice")
def _dynamic_update_slice(b, node, xs):
    xt, ut = node.inputs[0].type, node.inputs[1].type
    per_dim = []
    for i, s in enumerate(xs[2:]):
        s, _ = _in_bounds(b, b.cast(s, node.inputs[2 + i].type.dtype, "i64"), xt.shape[i], ut.shape[i])
        per_dim.append(b.op("Add", _place(b, s, [], ut.rank), _iota_at(b, ut.shape[i], i, ut.rank)))
    return b.op("ScatterND", xs[0], _coords(b, ut.shape, per_dim), xs[1])


# -- sorting ------------------------------------------------------------------------

_ORDER = {"f32": "i32", "f64": "i64", "f16": "i16", "bf16": "i16"}


def _key(b, x: str, dtype: str, canonical: bool = False) -> tuple[str, bool]:
    """An integer key in XLA's total order (-NaN < -inf < -0 < 0 < inf < NaN) for TopK, and
    whether it differs from the values (so the values must be gathered). ``canonical``:
    the order of jnp.sort, which counts -0 as 0 and every NaN as NaN (sorted last)."""
    if dtype in ("bool", "i8", "i16", "u8", "u16", "u32"):  # TopK orders i32/i64/floats only
        wide = "i64" if dtype == "u32" else "i32"
        return b.cast(x, dtype, wide), True
    if dtype == "u64":  # flipping the top bit keeps the order in i64
        need(b, 18, "sorting u64")
        return b.op("BitwiseXor", b.cast(x, "u64", "i64"), b.scalar(-(2**63), "i64")), True
    if dtype in _ORDER and b.opset < 26 and b.ctx.exact_needs_newer:
        need(b, 26, "sorting floats in XLA's total order (NaN, -0.0; ONNX BitCast)")
    if dtype not in _ORDER or b.opset < 26:  # an explicit older opset: NaN and -0.0 may differ
        return x, False
    if canonical:
        zero = b.scalar(0, dtype)
        x = b.where(b.op("Equal", x, zero), zero, x)
        x = b.where(b.op("IsNaN", x), b.scalar(np.nan, dtype), x)
    it = _ORDER[dtype]  # the float's bits, with the magnitude bits flipped when negative
    wide = "i32" if it == "i16" else it
    bits = b.cast(b.op("BitCast", x, to=onnx_dtype(it)), it, wide)
    low = (1 << (8 * to_dtype(it).itemsize - 1)) - 1
    flip = b.where(b.op("Less", bits, b.scalar(0, wide)), b.scalar(low, wide), b.scalar(0, wide))
    return b.op("BitwiseXor", bits, flip), True


@rule("sort")
def _sort(b, node, xs):
    a = node.attrs
    axis, nkeys = a["dimension"], a.get("num_keys", 1)
    t = node.inputs[0].type
    k = b.dim(t.shape[axis])
    keys = [(x, v.type.dtype) for x, v in zip(xs[:nkeys], node.inputs)]
    if b.opset < 26:  # no bit casts: NaNs last through a more significant key, "is NaN"
        keys = [k for x, t in keys for k in ([(x, t)] if t not in _ORDER else [
            (b.cast(b.op("IsNaN", x), "bool", "i32"), "i32"),
            (b.where(b.op("IsNaN", x), b.scalar(0, t), x), t)])]
    idx, first = None, None
    for j in range(len(keys) - 1, -1, -1):  # least significant key first; TopK is stable
        key, changed = _key(b, *keys[j], canonical=True)
        if idx is not None:
            key = b.op("GatherElements", key, idx, axis=axis)
        vals, order = b.op("TopK", key, k, axis=axis, largest=0, sorted=1, outs=2)
        idx = order if idx is None else b.op("GatherElements", idx, order, axis=axis)
        first = vals if len(keys) == 1 and not changed else None
    outs = []
    for i, (x, v) in enumerate(zip(xs, node.inputs)):
        p = v.producer
        if i == 0 and first is not None:
            outs.append(first)
        elif p is not None and p.op == "iota" and p.attrs.get("dimension") == axis:
            outs.append(b.cast(idx, "i64", v.type.dtype))  # argsort: the permutation itself
        else:
            outs.append(b.op("GatherElements", x, idx, axis=axis))
    return outs


@rule("top_k")
def _top_k(b, node, xs):
    t = node.inputs[0].type
    axis = node.attrs.get("axis", t.rank - 1)
    if axis is None:
        axis = t.rank - 1
    key, changed = _key(b, xs[0], t.dtype)
    vals, idx = b.op("TopK", key, b.i64(node.attrs["k"]), axis=axis, largest=1, sorted=1, outs=2)
    if changed:
        vals = b.op("GatherElements", xs[0], idx, axis=axis)
    return [vals, b.cast(idx, "i64", node.outputs[1].type.dtype)]


@rule("approx_top_k")
def _approx_top_k(b, node, xs):  # the exact top k: recall 1 meets every recall target
    t = node.inputs[0].type
    axis = node.attrs.get("reduction_dimension", -1) % t.rank
    largest = bool(node.attrs.get("is_max_k", True))
    key, changed = _key(b, xs[0], t.dtype)
    k = node.outputs[0].type.shape[axis]
    vals, idx = b.op("TopK", key, b.i64(k), axis=axis, largest=int(largest), sorted=1, outs=2)
    if changed:
        vals = b.op("GatherElements", xs[0], idx, axis=axis)
    return [vals, b.cast(idx, "i64", node.outputs[1].type.dtype)]
