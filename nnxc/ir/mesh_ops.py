"""Type rules of ``shard_map`` over a multi-device mesh and of the collectives in its body.

    %y: f32[8,4] = shard_map(%x) {mesh=Mesh(axis_names=("data",), axis_sizes=(2,)),
                                  manual_axes=("data",), check_vma=True,
                                  in_specs=(("data",),), out_specs=(("data",),)} {
    ^(%b: f32[4,4]):
      %s: f32[4,4] = psum_invariant(%b) {axes=("data",)}
      yield %s
    }

A spec lists, per leading dim, None or the mesh axes (a name or a tuple of names) it is split
over; the region's arguments and results are the per-device blocks. A 1-device shard_map
never reaches the IR: the frontend inlines it (``nnxc/frontend/shard_map.py``).

JAX's own rules for the collectives need the axes bound by a shard_map trace, so they are
written here: the shard_map rule records its mesh in the verifier's environment, under
``"__mesh__"``, for ``all_to_all``, whose params do not say the axis size.
"""
from __future__ import annotations

import math

from .ops import ShapeError, shape_rule
from .types import TensorType, canonical_dim

MESH_KEY = "__mesh__"


def mesh_sizes(node) -> dict:
    mesh = node.attrs["mesh"]
    return dict(zip(mesh.get("axis_names"), mesh.get("axis_sizes")))


def split_count(entry, sizes: dict) -> int:
    """How many blocks a spec entry (None, an axis name, or a tuple of names) splits a dim into."""
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    missing = [a for a in names if a not in sizes]
    if missing:
        raise ShapeError(f"spec names {missing[0]!r}, not an axis of the mesh {tuple(sizes)}")
    return math.prod(sizes[a] for a in names)


def _times(d, n: int):
    if n == 1:
        return d
    return d * n if isinstance(d, int) else canonical_dim(f"({d})*{n}")


def _divided(d, n: int, what: str):
    if n == 1:
        return d
    if not isinstance(d, int) or d % n:
        raise ShapeError(f"{what}: dim {d} does not split into {n} blocks")
    return d // n


def global_type(block: TensorType, spec: tuple, sizes: dict, what: str) -> TensorType:
    if len(spec) > block.rank:
        raise ShapeError(f"{what}: spec {spec} is longer than the rank of {block}")
    shape = [_times(d, split_count(spec[i], sizes)) if i < len(spec) else d for i, d in enumerate(block.shape)]
    return TensorType(tuple(shape), block.dtype)


@shape_rule("shard_map")
def _shard_map(node, ins: list, env: dict) -> list:
    sizes = mesh_sizes(node)
    a = node.attrs
    if len(node.regions) != 1:
        raise ShapeError(f"shard_map takes one region (its body), got {len(node.regions)}")
    (body,) = node.regions
    in_specs, out_specs = a["in_specs"], a["out_specs"]
    if not len(ins) == len(in_specs) == len(body.args):
        raise ShapeError(f"{len(ins)} inputs, {len(in_specs)} in_specs, {len(body.args)} body arguments")
    if len(out_specs) != len(body.results):
        raise ShapeError(f"{len(out_specs)} out_specs for {len(body.results)} body results")
    if not set(a["manual_axes"]) <= set(sizes):
        raise ShapeError(f"manual axes {a['manual_axes']} are not all axes of the mesh {tuple(sizes)}")
    for i, (t, arg, spec) in enumerate(zip(ins, body.args, in_specs)):
        want = global_type(arg.type, spec, sizes, f"input {i}")
        if want != t:
            raise ShapeError(f"input {i} is {t}, but the body's argument {arg.type} split by {spec} is {want}")
    env[MESH_KEY] = sizes
    return [global_type(v.type, spec, sizes, f"result {i}")
            for i, (v, spec) in enumerate(zip(body.results, out_specs))]


# -- collectives in a shard_map body -------------------------------------------------

@shape_rule("psum", "psum_invariant", "pmax", "pmin", "pvary", "pbroadcast", "ppermute")
def _same_types(node, ins: list, env: dict) -> list:
    return list(ins)


@shape_rule("axis_index")
def _axis_index(node, ins: list, env: dict) -> list:
    return [TensorType((), "i32")]


@shape_rule("all_gather", "all_gather_invariant")
def _all_gather(node, ins: list, env: dict) -> list:
    (x,) = ins
    a = node.attrs
    d, n = a["all_gather_dimension"], a["axis_size"]
    shape = list(x.shape)
    if a["tiled"]:
        shape[d] = _times(shape[d], n)
    else:
        shape.insert(d, n)
    return [TensorType(tuple(shape), x.dtype)]


@shape_rule("reduce_scatter")
def _reduce_scatter(node, ins: list, env: dict) -> list:
    (x,) = ins
    a = node.attrs
    d, n = a["scatter_dimension"], a["axis_size"]
    shape = list(x.shape)
    if a["tiled"]:
        shape[d] = _divided(shape[d], n, "reduce_scatter")
    elif shape[d] != n:
        raise ShapeError(f"reduce_scatter: dim {d} is {shape[d]}, not the axis size {n}")
    else:
        del shape[d]
    return [TensorType(tuple(shape), x.dtype)]


@shape_rule("all_to_all")
def _all_to_all(node, ins: list, env: dict) -> list:
    (x,) = ins
    a = node.attrs
    sizes = env.get(MESH_KEY)
    if sizes is None:
        raise ShapeError("all_to_all outside a shard_map body (its axis size is the mesh's)")
    axes = a["axis_name"]
    n = split_count(axes if isinstance(axes, (str, tuple)) else tuple(axes), sizes)
    shape = list(x.shape)
    shape[a["split_axis"]] = _divided(shape[a["split_axis"]], n, "all_to_all")
    shape[a["concat_axis"]] = _times(shape[a["concat_axis"]], n)
    return [TensorType(tuple(shape), x.dtype)]
