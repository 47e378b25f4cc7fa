"""``reduce`` and ``reduce_window`` with a reducer of the user's own: ``lax.reduce`` /
``lax.reduce_window`` with a function that is not one of JAX's monoids, an initial value that
is not the monoid's identity, or several operands (argmax-style reductions). The reducer is
the node's region, scalars ``(accumulators..., elements...) -> accumulators...``.

- A one-op reducer ``op(acc, x)`` that is a monoid (add, mul, max, min, and, or) goes to the
  reductions and pooling of ``reductions.py`` / ``special.py`` and meets the initial value
  once, where XLA's result is that (see below). Max, min, and, or are exact; a float sum or
  product rounds in ONNX's order, not XLA's.
- Any other reducer is folded: its region, whose ops must be elementwise on scalars, is
  emitted on whole tensors, ``acc = reducer(acc, x_k)`` over the elements ``x_k`` of every
  window at once, from the initial value, in the order XLA's CPU backend folds them (jax
  0.10; the order only matters to a reducer that is not associative and commutative, float
  add and mul among them, which XLA may also vectorize):
  - reduce_window: row-major over the window, padding and base-dilation holes skipped (not
    combined as the initial value). That is XLA's order for windows over one dim; for windows
    over several dims, its loop emitter reorders the positions of some padded or dilated ones.
  - reduce: row-major over the reduced dims. But XLA splits a one-operand reduction along a
    dim longer than 32 (its TreeReductionRewriter): a reduce_window first, windows of 32
    along those dims (padded evenly at both ends, the padding skipped) and of the whole dim
    along the other reduced dims, then the reduce of that, split again while a dim is longer
    than 32; each window starts from the initial value, so a non-identity one counts more
    than once. And a reduce of one element per result is a reshape: XLA's simplifier drops
    the initial value (it assumes an identity). The rule does both (the second at run time
    for a symbolic count); as the split depends on the sizes, a one-operand reducer of one's
    own needs static reduced dims (XLA does not split several operands).
  Up to ``UNROLL`` positions per window are unrolled, more go through an ONNX ``Loop``.
"""
from __future__ import annotations

import itertools

from ...ir.graph import Node
from .control import choose, inline, loop
from .shape import INT64_MAX, dim_add, dim_mul, pad, reshape, slice_dims
from .table import ONNX_RULES, Refused, rule

UNROLL = 8
TREE = 32  # XLA's CPU TreeReductionRewriter: reductions longer than this are split
_FLOATS = ("f16", "bf16", "f32", "f64")
_SMALL_INTS = ("i8", "i16", "i32", "u8", "u16", "u32")  # exact in the f64 MaxPool works in
_REDUCE = {"add": "reduce_sum", "mul": "reduce_prod", "max": "reduce_max", "min": "reduce_min",
           "and": "reduce_and", "or": "reduce_or"}
_IDEMPOTENT = ("max", "min", "and", "or")  # the initial value may meet them any number of times
_ELEMENTWISE = ("elementwise", "special")  # rule modules whose ops the fold can emit on tensors
_NOT_ELEMENTWISE = ("rng_uniform", "scatter-sub")


def monoid(region) -> str | None:
    """``op`` when the reducer is one ``op(acc, x)`` (either order) of a monoid, else None."""
    if len(region.args) != 2 or len(region.nodes) != 1:
        return None
    (inner,) = region.nodes
    if (inner.op not in _REDUCE or len(inner.inputs) != 2 or region.results != inner.outputs
            or {id(v) for v in inner.inputs} != {id(v) for v in region.args}):
        return None
    return inner.op


def _home(op: str):
    """The rule an op's rule extends last (``rule.base``), or None."""
    fn = ONNX_RULES.get(op)
    while getattr(fn, "base", None) is not None:
        fn = fn.base
    return fn


def _check_reducer(node) -> None:
    """Refuse a reducer the fold cannot emit on whole tensors: every value must be a scalar,
    every op elementwise (its rule in elementwise.py or special.py), no nested regions."""
    for inner in node.regions[0].nodes:
        home = _home(inner.op)
        why = None
        if inner.regions:
            why = "control flow"
        elif any(v.type.rank for v in (*inner.inputs, *inner.outputs)):
            why = "non-scalar values"
        elif any(v.type.dtype.startswith("c") for v in (*inner.inputs, *inner.outputs)):
            why = "complex values"
        elif home is None or inner.op in _NOT_ELEMENTWISE or home.__module__.rsplit(".", 1)[-1] not in _ELEMENTWISE:
            why = "an op that is not elementwise"
        if why:
            raise Refused(f"{node.op} with a reducer using {inner.op} ({why}): nnxc folds a custom "
                          f"reducer by applying its elementwise scalar ops to whole tensors")


def _proxy(b, op: str, node, attrs: dict, x: str) -> str:
    """The rule of ``op`` (a reduction or pooling primitive) on the first operand of ``node``."""
    p = Node(op, [node.inputs[0]], [node.outputs[0].type], attrs, (), node.path, node.loc)
    return ONNX_RULES[op](b, p, [x])


def _padded_dim(n, lo: int, hi: int, base: int):
    """The size of a dim of ``n`` after base dilation and padding."""
    if (lo, hi, base) == (0, 0, 1):
        return n
    if isinstance(n, int):
        return max(n + (n - 1) * (base - 1), 0) + lo + hi
    return dim_add(dim_mul(n, base), 1 - base + lo + hi)


def window_fold(b, region, xs: list[str], inits: list[str], shape, dtypes: list[str], out,
                win, strides, pads, base, wdil) -> list[str]:
    """reduce_window of ``xs`` (IR dims ``shape``, output dims ``out``) with the reducer
    ``region``, folded in XLA's order (the module docstring)."""
    rank = len(shape)
    dims = [d for d in range(rank) if (win[d], strides[d], tuple(pads[d]), base[d], wdil[d])
            != (1, 1, (0, 0), 1, 1)]
    if any(o == 0 for o in out):
        return [b.expand(i, out) for i in inits]
    config = [(pads[d][0], pads[d][1], base[d] - 1) if d in dims else (0, 0, 0) for d in range(rank)]
    padded = [pad(b, x, shape, config, i, t) for x, i, t in zip(xs, inits, dtypes)]
    mask, mask_out = None, [out[d] if d in dims else 1 for d in range(rank)]
    if any(pads[d][0] > 0 or pads[d][1] > 0 or base[d] > 1 for d in dims):  # positions to skip
        ones_shape = [shape[d] if d in dims else 1 for d in range(rank)]
        ones = b.expand(b.scalar(True, "bool"), ones_shape)
        mask = pad(b, ones, ones_shape, config, b.scalar(False, "bool"), "bool")
    sizes = [_padded_dim(shape[d], *config[d][:2], base[d]) if d in dims else None for d in range(rank)]
    count = dim_mul(*[win[d] for d in dims]) if dims else 1
    if all(strides[d] == win[d] and wdil[d] == 1 for d in dims):
        # disjoint windows: one reshape puts each window's elements on a leading axis
        stacks = [_blocks(b, x, dims, win, out, sizes) for x in padded]
        mstack = None if mask is None else _blocks(b, mask, dims, win, mask_out, sizes)

        def pick(bb, k):
            kk = bb.scalar(k, "i64") if isinstance(k, int) else k
            return ([bb.op("Gather", s, kk, axis=0) for s in stacks],
                    None if mstack is None else bb.op("Gather", mstack, kk, axis=0))
        return _fold(b, region, inits, out, dtypes, count, pick)
    positions = list(itertools.product(*[range(win[d]) for d in dims]))

    def take(x, pos, o):  # the elements at window position ``pos`` of every window
        starts = [k * wdil[d] for k, d in zip(pos, dims)]
        steps = [strides[d] for d in dims]
        if all(isinstance(o[d], int) for d in dims):
            ends = [s + (o[d] - 1) * strides[d] + 1 for s, d in zip(starts, dims)]
            return b.slice(x, starts, ends, dims, steps)
        x = b.slice(x, starts, [INT64_MAX] * len(dims), dims, steps)
        return slice_dims(b, x, [0] * len(dims), [o[d] for d in dims], dims)

    slices = [[take(x, pos, out) for x in padded] for pos in positions]
    mslices = [None if mask is None else take(mask, pos, mask_out) for pos in positions]
    if len(positions) <= UNROLL:
        return _fold(b, region, inits, out, dtypes, len(positions), lambda bb, k: (slices[k], mslices[k]))
    stack = lambda parts: b.op("Concat", *[b.unsqueeze(p, [0]) for p in parts], axis=0)  # noqa: E731
    stacks = [stack([s[j] for s in slices]) for j in range(len(xs))]
    mstack = None if mask is None else stack(mslices)

    def pick_loop(bb, k):
        return ([bb.op("Gather", s, k, axis=0) for s in stacks],
                None if mstack is None else bb.op("Gather", mstack, k, axis=0))
    return _fold(b, region, inits, out, dtypes, len(positions), pick_loop)


def _blocks(b, x: str, dims, win, out, sizes) -> str:
    """Disjoint windows (stride = window) of ``x`` as [window elements, *out]: the windowed
    dims cut to whole windows, split into (window index, position), positions moved first."""
    rank = len(out)
    ends = [dim_mul(out[d], win[d]) for d in dims]
    if any(e != sizes[d] for e, d in zip(ends, dims)):
        x = slice_dims(b, x, [0] * len(dims), ends, dims)
    split, lead, rest = [], [], []
    for d in range(rank):
        if d in dims:
            rest.append(len(split))
            lead.append(len(split) + 1)
            split += [out[d], win[d]]
        else:
            rest.append(len(split))
            split.append(out[d])
    y = b.transpose(reshape(b, x, split), lead + rest)
    return reshape(b, y, [dim_mul(*[win[d] for d in dims])] + list(out))


def _fold(b, region, inits, out, dtypes, count, pick) -> list[str]:
    """``acc = region(acc, x_k)`` for k < ``count`` from the initial values, where
    ``pick(builder, k) -> (x_k per operand, valid_k or None)``; invalid positions keep acc."""
    accs = [b.expand(i, out) for i in inits]
    if isinstance(count, int) and count <= UNROLL:
        for k in range(count):
            accs = _step(b, region, accs, *pick(b, k), dtypes, out)
        return accs

    def body(sub, it, carried):
        return _step(sub, region, carried, *pick(sub, it), dtypes, out), []
    accs, _ = loop(b, b.dim_scalar(count), list(zip(accs, dtypes)), body)
    return accs


def _step(b, region, accs, xk, valid, dtypes, out) -> list[str]:
    new = inline(b, region, [*accs, *xk])
    new = [b.expand(n, out) if v.data is not None else n for n, v in zip(new, region.results)]  # a constant
    if valid is None:
        return new
    return [b.where(valid, n, a, t, signed_zeros=True) for n, a, t in zip(new, accs, dtypes)]


def _window_attrs(a) -> tuple:
    return (tuple(a["window_dimensions"]), tuple(a["window_strides"]), [tuple(p) for p in a["padding"]],
            tuple(a["base_dilation"]), tuple(a["window_dilation"]))


def _pooling(op: str | None, t: str) -> str | None:
    """The pooling primitive a monoid reducer on ``t`` is, where nnxc pools ``t`` exactly
    (float sums within rounding)."""
    if op in ("and", "or", "max", "min") and t == "bool":
        return "reduce_window_min" if op in ("and", "min") else "reduce_window_max"
    if op in ("max", "min") and t in _FLOATS + _SMALL_INTS:
        return f"reduce_window_{op}"
    if op == "add" and t in _FLOATS:
        return "reduce_window_sum"
    return None


@rule("reduce_window")
def _reduce_window(b, node, xs):
    n = len(node.outputs)
    region = node.regions[0]
    it = node.inputs[0].type
    pool = _pooling(monoid(region), it.dtype) if n == 1 else None
    if pool is not None:  # XLA starts each window from the initial value once
        keys = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")
        pooled = _proxy(b, pool, node, {k: node.attrs[k] for k in keys}, xs[0])
        return inline(b, region, [xs[1], pooled])
    _check_reducer(node)
    win, strides, pads, base, wdil = _window_attrs(node.attrs)
    if not all(isinstance(w, int) for w in win):
        raise Refused(f"reduce_window with symbolic window dimensions {win}")
    return window_fold(b, region, xs[:n], xs[n:], it.shape, [v.type.dtype for v in node.outputs],
                       node.outputs[0].type.shape, win, strides, pads, base, wdil)


@rule("reduce")
def _reduce(b, node, xs):
    """XLA reads a reduction of one element per result as a reshape (its simplifier assumes the
    initial value is an identity): so does this, at run time when the count is symbolic."""
    n = len(node.outputs)
    it = node.inputs[0].type
    dims = sorted(node.attrs["dimensions"])
    count = dim_mul(*[it.shape[d] for d in dims])
    types = [v.type for v in node.outputs]
    if count == 1:
        return [reshape(b, x, t.shape) for x, t in zip(xs[:n], types)]
    if isinstance(count, int):
        return _reduction(b, node, xs)
    one = b.op("Equal", b.dim_scalar(count), b.scalar(1, "i64"))
    return choose(b, one, lambda sub: [reshape(sub, x, t.shape) for x, t in zip(xs[:n], types)],
                  lambda sub: _reduction(sub, node, xs), types)


def _reduction(b, node, xs) -> list[str]:
    n = len(node.outputs)
    region = node.regions[0]
    it = node.inputs[0].type
    rank, dims = it.rank, sorted(node.attrs["dimensions"])
    op = monoid(region)
    split = n == 1 and any(not isinstance(it.shape[d], int) or it.shape[d] > TREE for d in dims)
    if op is not None and (op in _IDEMPOTENT or not split):
        return inline(b, region, [xs[1], _proxy(b, _REDUCE[op], node, {"axes": tuple(dims)}, xs[0])])
    symbolic = [it.shape[d] for d in dims if not isinstance(it.shape[d], int)]
    if n == 1 and symbolic:
        raise Refused(f"reduce with a reducer of its own over the symbolic dim {symbolic[0]}: XLA's "
                      f"CPU backend splits a reduction longer than {TREE} into windows that each start "
                      f"from the initial value, so the result depends on the size; make the reduced "
                      f"dims static (or reduce several operands, which XLA does not split)")
    _check_reducer(node)
    dtypes = [v.type.dtype for v in node.outputs]
    ones = (1,) * rank
    ops, shape = xs[:n], list(it.shape)
    while split and any(shape[d] > TREE for d in dims):  # XLA's tree of reduce_windows
        win, pads = [], []
        for d in range(rank):
            m = shape[d]
            if d not in dims or m <= TREE:
                win.append(m if d in dims else 1)
                pads.append((0, 0))
            else:
                extra = -(-m // TREE) * TREE - m
                win.append(TREE)
                pads.append((extra // 2, extra - extra // 2))
        out = [(shape[d] + sum(pads[d])) // win[d] if d in dims else shape[d] for d in range(rank)]
        ops = window_fold(b, region, ops, xs[n:], shape, dtypes, out, win, win, pads, ones, ones)
        shape = out
    win = [shape[d] if d in dims else 1 for d in range(rank)]
    out = [1 if d in dims else shape[d] for d in range(rank)]
    outs = window_fold(b, region, ops, xs[n:], shape, dtypes, out, win, win, [(0, 0)] * rank, ones, ones)
    return [b.squeeze(y, dims) for y in outs]
