"""fold-constants: evaluate nodes whose inputs are all constants into constants.

    before:  %0: f32[1,8] = reshape(%c0) {new_sizes=(1,8)}      after:  const %c0: f32[1,8] = ..
             %1: f32[B,8] = add(%x, %0)                                 %1: f32[B,8] = add(%x, %c0)

Two passes share this code:

- ``fold-constants`` (in ``default``) folds only what every evaluation computes alike, bit for
  bit: data movement, integer / boolean arithmetic, comparisons, selects, sign flips and the
  conversions that are exact (never float -> int). Float math stays in the graph, because a
  value computed eagerly is rounded differently from the same value inside the compiled model
  (XLA folds it with its own evaluator or fuses it with vectorized code; FMA contraction and
  transcendental approximations differ by CPU).
- ``fold-all-constants`` (in ``inference``) also evaluates float math (rsqrt, exp, div, ...),
  which is what turns frozen BatchNorm statistics into weights; results may then differ
  from the original model in the last bits (IEEE semantics, inf and NaN, are kept).

Bounded: a result may have at most ``LIMIT`` elements unless it replaces constant inputs at
least as large that die with it (so frozen weights are transformed, never duplicated).
Data-movement ops are evaluated with NumPy; everything else by binding the JAX primitive.
"""
from __future__ import annotations

import numpy as np

from .. import _jax as jc
from ..ir.params import decode_param
from ..ir.graph import Graph, Node, Value
from ..ir.types import to_dtype
from .rewrite import Rebuild, const_data, fired, origin_name, use_counts

LIMIT = 1 << 16
NULLARY = frozenset({"iota"})  # ops without inputs that are constants
NEVER = frozenset({"dim_as_value", "rng_uniform", "rng_bit_generator", "random_seed",
                   "random_wrap", "random_unwrap", "scatter", "scatter-add", "scatter-mul",
                   "scatter-min", "scatter-max", "optimization_barrier"})


def fold_constants(graph: Graph, limit: int = LIMIT) -> Graph:
    """Fold what is exact (see the module docstring)."""
    return _fold(graph, limit, exact_only=True)


def fold_all_constants(graph: Graph, limit: int = LIMIT) -> Graph:
    """Fold float math too (results may differ in the last bits)."""
    return _fold(graph, limit, exact_only=False)


def _fold(graph: Graph, limit: int, exact_only: bool) -> Graph:
    uses = use_counts(graph)
    born: dict[Value, int] = {}  # constants made here -> uses of the value they replaced

    def visit(old: Node, new: Node, rb):
        if not _foldable(new) or (exact_only and not is_exact(new)):
            return None
        arrays = [const_data(v) for v in new.inputs]
        if any(a is None for a in arrays):
            return None
        size = sum(v.type.size() for v in new.outputs)
        dying = sum(a.size for v, a in zip(new.inputs, arrays)
                    if a.size > limit and born.get(v, uses.get(v, 0)) <= 1)
        if size > max(limit, dying):
            return None
        try:
            results = evaluate(new, arrays)
        except Exception:  # noqa: BLE001 - an op JAX refuses eagerly stays a node
            return None
        if exact_only and new.op == "convert_element_type" and not _round_trips(arrays[0], results[0]):
            return None
        outs = []
        origin = origin_name(new.inputs)
        for o, old_o, r in zip(new.outputs, old.outputs, results):
            r = np.asarray(r).astype(to_dtype(o.type.dtype), copy=False)
            if r.shape != tuple(o.type.shape):
                return None
            c = Value(o.type, name=origin, data=r)
            born[c] = uses.get(old_o, 0)
            outs.append(c)
        fired("folded")
        return outs

    rb = Rebuild(graph, visit)
    new = rb.run()
    return new if rb.changed else graph


def _foldable(node: Node) -> bool:
    if node.regions or node.op in NEVER or node.op.startswith("nnxc."):
        return False
    if not node.inputs and node.op not in NULLARY:
        return False
    return all(o.type.is_static and not o.type.dtype.startswith("key<") and o.type.dtype != "float0"
               for o in node.outputs)


# ops whose results are copies of input elements (or index arithmetic): exact in any dtype
DATA_MOVEMENT = frozenset({
    "reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "copy", "copy_p",
    "concatenate", "slice", "dynamic_slice", "rev", "pad", "select_n", "gather", "iota",
    "dynamic_update_slice", "neg", "abs", "stop_gradient", "real", "imag",
    "eq", "ne", "lt", "le", "gt", "ge", "is_finite", "sign"})


def _is_float(dtype: str) -> bool:
    return dtype[0] in "fc" or dtype == "bf16"


# ops whose folded result is bigger than their constant input: XLA keeps `broadcast(c)` and
# `iota` symbolic and fuses them into their users (a splat multiplier, a mask); a dense
# constant in their place is compiled differently, and the rest of the fusion rounds differently
EXPANDING = frozenset({"broadcast_in_dim", "iota"})


def is_exact(node: Node) -> bool:
    """Whether folding ``node`` leaves the compiled model's bits as they are: its eager result
    is what XLA computes, and the constant in its place compiles as the node did."""
    if node.op in EXPANDING:
        return False
    if node.op in DATA_MOVEMENT:
        return True
    ins = [v.type.dtype for v in node.inputs]
    outs = [v.type.dtype for v in node.outputs]
    if node.op == "convert_element_type":
        # float -> int: saturation and NaN handling differ between evaluators; the others
        # are exact when the values convert back unchanged (checked in _round_trips)
        return not (_is_float(ins[0]) and not _is_float(outs[0]))
    return not any(_is_float(d) for d in ins + outs)


def _round_trips(a, r) -> bool:
    """Whether converting ``r`` back gives ``a`` (so the conversion rounded nothing)."""
    a, r = np.asarray(a), np.asarray(r)
    if r.dtype.kind not in "fc":
        return True
    back = r.astype(a.dtype)
    if a.dtype.kind in "fc":
        return bool(np.array_equal(back, a, equal_nan=True))
    return bool(np.array_equal(back, a)) and bool(np.isfinite(r).all())


def evaluate(node: Node, arrays: list) -> list:
    """The node's results on constant inputs."""
    attrs = {k: decode_param(v, {}) for k, v in node.attrs.items()}
    fast = _NUMPY.get(node.op)
    if fast is not None:
        out = fast(arrays, attrs, node)
        if out is not None:
            return [out]
    prim = jc.primitive(node.op)
    if prim is None:
        raise ValueError(f"no JAX primitive {node.op}")
    return [np.asarray(x) for x in jc.bind(prim, arrays, attrs)]


def _broadcast(a, at, node):
    shape, dims = tuple(at["shape"]), tuple(at["broadcast_dimensions"])
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = a.shape[i]
    return np.broadcast_to(a.reshape(expanded), shape).copy()


def _convert(a, at, node):
    want = to_dtype(node.outputs[0].type.dtype)
    if a.dtype.kind == want.kind == "f" or (a.dtype.kind in "biu" and want.kind in "f"):
        return a.astype(want)
    return None  # float -> int and the rest: leave to XLA's own conversion


_NUMPY = {
    "reshape": lambda a, at, n: a[0].reshape(tuple(n.outputs[0].type.shape)),
    "transpose": lambda a, at, n: np.transpose(a[0], at["permutation"]).copy(),
    "squeeze": lambda a, at, n: np.squeeze(a[0], axis=tuple(at["dimensions"])),
    "broadcast_in_dim": lambda a, at, n: _broadcast(a[0], at, n),
    "convert_element_type": lambda a, at, n: _convert(a[0], at, n),
    "copy": lambda a, at, n: a[0].copy(),
}
