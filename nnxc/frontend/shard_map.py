"""``shard_map`` and the collectives of its body.

On one device -- every manual mesh axis of size 1: a model written for sharding and exported
for one device, or any mesh on a 1-device machine -- a shard_map computes what its body
computes on the whole arrays. The frontend inlines the body, and each collective over those
axes becomes what it computes on one device (``ONE_DEVICE``; each checked bit for bit against
jax.jit of the shard_map on CPU, pbroadcast against its definition: JAX cannot lower it on CPU):

    psum, psum_invariant, pmax, pmin   x (one participant)
    pvary, pbroadcast                  x
    ppermute                           x when the permutation sends 0 to 0, else zeros
    all_gather(_invariant)             x; not tiled: a new axis of size 1 at the gathered dim
    reduce_scatter (psum_scatter)      x, -0.0 as +0.0 (XLA's reduce-scatter adds x to a
                                       zero); not tiled: the scattered axis of size 1 removed;
                                       complex: refused
    all_to_all                         x, reshaped to the result (one chunk sent to itself)
    axis_index                         0

Other collectives over 1-device axes (ragged_all_to_all, psend/precv, the reduced/unreduced
casts) are refused, naming the primitive, the axes and the source line.

Over more devices the shard_map stays a ``shard_map`` node: its body a region on per-device
blocks, the mesh axes with their sizes, the in/out specs and the manual axes as attributes
(``nnxc/ir/mesh_ops.py`` has its type rule; XLA rebuilds ``jax.shard_map`` around the body).
"""
from __future__ import annotations

import numpy as np

from .. import _jax as jc
from ..ir.graph import Node, Value
from ..ir.params import encode_param
from ..ir.attrs import Record
from ..ir.types import TensorType, is_float

# collectives over named mesh axes (jax.lax.psum & co.), met only inside a shard_map body
COLLECTIVES = frozenset({
    "psum", "psum_invariant", "pmax", "pmin", "pvary", "pbroadcast", "ppermute", "all_gather",
    "all_gather_invariant", "all_gather_reduced", "reduce_scatter", "all_to_all", "axis_index",
    "ragged_all_to_all", "psend", "precv", "preduced", "unreduced_psum", "unreduced_reduce_scatter",
    "vary_unreduced_cast_p", "reduced_vary_cast_p"})


class NotOnOneDevice(Exception):
    """A collective over 1-device axes that has no one-device form here (the message says why)."""


def collective_axes(eqn) -> frozenset:
    p = eqn.params
    axes = p.get("axes", p.get("axis_name", ()))
    return frozenset(axes if isinstance(axes, (tuple, list, set, frozenset)) else (axes,))


def mesh_axes(params) -> tuple[dict, tuple]:
    """({axis: size} of the shard_map's mesh, its manual axes in mesh order)."""
    mesh = params["mesh"]
    sizes = {a: int(n) for a, n in zip(mesh.axis_names, mesh.axis_sizes)}
    manual = params.get("newly_manual_axes") or params.get("axis_names") or mesh.axis_names
    return sizes, tuple(a for a in mesh.axis_names if a in manual)


def convert_shard_map(conv, eqn, ins: list, nodes: list, path: str, loc) -> list:
    """Inline the body on one device; otherwise a ``shard_map`` node with the body as a region."""
    sizes, manual = mesh_axes(eqn.params)
    body = eqn.params["jaxpr"]
    if all(sizes[a] == 1 for a in manual):
        outer = conv.one_device
        conv.one_device = outer | frozenset(manual)
        try:
            return conv.closed(body, ins, nodes, path)
        finally:
            conv.one_device = outer
    attrs = {"mesh": Record("Mesh", (("axis_names", tuple(sizes)), ("axis_sizes", tuple(sizes.values())))),
             "manual_axes": manual, "check_vma": bool(eqn.params.get("check_vma", True))}
    try:
        attrs["in_specs"] = tuple(jc.sharding_spec(s) for s in eqn.params["in_specs"])
        attrs["out_specs"] = tuple(jc.sharding_spec(s) for s in eqn.params["out_specs"])
    except ValueError as e:
        conv.unsupported.append(("shard_map", path, loc, f"a spec it cannot keep: {e}"))
    region = conv.region(body, path)
    node = Node("shard_map", ins, [TensorType.of(v.aval) for v in eqn.outvars], attrs, [region], path, loc)
    nodes.append(node)
    return node.outputs


def convert_collective(conv, eqn, ins: list, nodes: list, path: str, loc) -> list:
    """A collective over 1-device mesh axes, as what it computes on one device."""
    def emit(op, inputs, types, attrs=None) -> list:
        node = Node(op, inputs, types, attrs or {}, (), path, loc)
        nodes.append(node)
        return node.outputs

    name = eqn.primitive.name
    rule = ONE_DEVICE.get(name)
    try:
        if rule is None:
            raise NotOnOneDevice("nnxc has no one-device form for this collective")
        return rule(conv, eqn, ins, emit)
    except NotOnOneDevice as e:
        axes = ", ".join(sorted(collective_axes(eqn)))
        conv.unsupported.append((name, path, loc, f"over the 1-device mesh axes ({axes}): {e}"))
        return [Value(TensorType.of(v.aval)) for v in eqn.outvars]


def _out(eqn, i: int = 0) -> TensorType:
    return TensorType.of(eqn.outvars[i].aval)


def _same(conv, eqn, ins, emit) -> list:
    return list(ins)


def _reshaped(conv, eqn, ins, emit) -> list:
    """The operand reshaped to the result: one participant moves no data, it may add or drop
    axes of size 1 (all_gather, all_to_all, reduce_scatter untiled)."""
    (x,) = ins
    t = _out(eqn)
    if t == x.type:
        return [x]
    return emit("reshape", [x], [t], {"new_sizes": encode_param(tuple(eqn.outvars[0].aval.shape))})


def _zeros(conv, eqn, t: TensorType, emit) -> Value:
    zero = conv.const(np.zeros((), np.dtype(eqn.outvars[0].aval.dtype)))
    shape = encode_param(tuple(eqn.outvars[0].aval.shape))
    return emit("broadcast_in_dim", [zero], [t], {"shape": shape, "broadcast_dimensions": ()})[0]


def _reduce_scatter(conv, eqn, ins, emit) -> list:
    (x,) = _reshaped(conv, eqn, ins, emit)
    t = _out(eqn)
    if t.dtype.startswith("c"):
        raise NotOnOneDevice("a complex reduce-scatter adds each part to a zero; not written yet")
    if not is_float(t.dtype):
        return [x]
    # XLA's reduce-scatter adds the one participant's block to a zero, so -0.0 comes out +0.0;
    # x + 0 would be simplified away by XLA, a select on x == 0 is not
    zero = _zeros(conv, eqn, t, emit)
    (is_zero,) = emit("eq", [x, zero], [TensorType(t.shape, "bool")])
    return emit("select_n", [is_zero, x, zero], [t])


def _ppermute(conv, eqn, ins, emit) -> list:
    if any(src == 0 and dst == 0 for src, dst in eqn.params["perm"]):
        return list(ins)
    return [_zeros(conv, eqn, _out(eqn), emit)]  # a device nothing is sent to gets zeros


def _axis_index(conv, eqn, ins, emit) -> list:
    return [conv.const(np.zeros((), np.dtype(eqn.outvars[0].aval.dtype)))]


ONE_DEVICE = {
    **dict.fromkeys(("psum", "psum_invariant", "pmax", "pmin", "pvary", "pbroadcast"), _same),
    "ppermute": _ppermute, "all_gather": _reshaped, "all_gather_invariant": _reshaped,
    "all_to_all": _reshaped, "reduce_scatter": _reduce_scatter, "axis_index": _axis_index,
}
