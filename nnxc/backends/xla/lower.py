"""IR -> JAX: an interpreter run inside ``jax.jit``.

Core ops bind the JAX primitive of the same name with the node's attributes (the default
rule), so lowering is exact. ``XLA_RULES`` holds the ops that need more: regions become
``lax.scan`` / ``lax.while_loop`` / ``lax.switch``; ops added by passes (``nnxc.*``) are
written with jax.numpy / lax here.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable

import jax
import numpy as np
from jax import lax

from ...errors import NnxcError, UnsupportedOpError
from ... import _jax as jc
from ...ir.params import decode_param
from ...ir.graph import Elided, Graph, Node, Region, Value
from ...ir.ops import jax_dim
from ...ir.parser import ElidedConstantError
from ...ir.types import DimError, is_plain_symbol, solve_dims, to_dtype
from . import fused  # noqa: F401 - registers the nnxc.* lowerings
from .rules import XLA_RULES, attrs_of, rule

class DimMismatchError(NnxcError, ValueError):
    """Arguments whose shapes fit no values of the graph's dim symbols."""


def default_rule(node: Node, args: list, dims: dict) -> list:
    prim = jc.primitive(node.op)
    if prim is None:
        raise UnsupportedOpError([(node.op, node.path, node.loc, "no JAX primitive or XLA rule")],
                                 stage="XLA lowering")
    return jc.bind(prim, args, attrs_of(node, dims))


def const_array(v: Value):
    if isinstance(v.data, Elided):
        raise ElidedConstantError.of(v)
    return v.data


def run_nodes(nodes: list[Node], env: dict, dims: dict) -> None:
    for node in nodes:
        args = [env[v] if v in env else const_array(v) for v in node.inputs]
        scope = jax.named_scope(node.path) if node.path else contextlib.nullcontext()
        with scope:
            outs = XLA_RULES.get(node.op, default_rule)(node, args, dims)
        for v, x in zip(node.outputs, outs):
            env[v] = x


def run_region(region: Region, args: list, dims: dict) -> list:
    env = dict(zip(region.args, args))
    run_nodes(region.nodes, env, dims)
    return [env[v] if v in env else const_array(v) for v in region.results]


def bind_dims(graph: Graph, args: list) -> dict:
    """Values of the graph's dim symbols, read off the actual arguments' shapes.

    With concrete shapes every symbol is solved for (``B`` from ``B``, ``K`` from ``2*K``;
    see ``solve_dims``), and a shape that fits no value raises ``DimMismatchError`` (a
    symbol no input dim determines, as in ``K*K``, is left out). With
    symbolic shapes (``jax.export``), a plain symbol takes the argument's dim, and the
    symbols only seen in expressions are made in the arguments' symbolic scope, so they
    are the ones JAX solves for from the same shapes.
    """
    pairs = []
    for v, a in zip(graph.inputs, args):
        for d, actual in zip(v.type.shape, np.shape(a) if not hasattr(a, "shape") else a.shape):
            if isinstance(d, str):
                pairs.append((d, actual))
    if all(isinstance(n, (int, np.integer)) for _, n in pairs):
        try:
            return solve_dims(pairs, strict=False)
        except DimError as e:
            raise DimMismatchError(f"argument shapes do not fit the graph's input types: {e.msg}") from None
    dims: dict = {}
    for d, actual in pairs:
        if is_plain_symbol(d):
            dims.setdefault(d, actual)
    scope = next((n.scope for _, n in pairs if hasattr(n, "scope")), None)
    if scope is not None:
        dims.setdefault("__scope__", scope)
    for d, _ in pairs:
        jax_dim(d, dims)  # makes the missing symbols in the arguments' scope
    return dims


def updated_paths(graph: Graph) -> list[str]:
    """Paths of the variables a call changes (updated or created), in variable order."""
    changed = {p for p, _ in graph.updates}
    return [v.path for v in graph.variables if v.meta.get("new") or v.path in changed]


def run_graph(graph: Graph, var_leaves: list, args: list, mesh=None) -> tuple[list, list]:
    """Evaluate the graph: (outputs, new values of ``updated_paths(graph)``).

    Variables the call leaves alone are not returned, so XLA does not copy them. ``mesh``:
    the mesh the graph is compiled on (``shard_map`` nodes run on it when their axes match).
    """
    token = LOWERING_MESH.set(mesh)
    try:
        return _run_graph(graph, var_leaves, args)
    finally:
        LOWERING_MESH.reset(token)


def _run_graph(graph: Graph, var_leaves: list, args: list) -> tuple[list, list]:
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    env = {var.value: x for var, x in zip(inputs, var_leaves)}
    env.update(zip(graph.inputs, args))
    dims = bind_dims(graph, args)
    run_nodes(graph.nodes, env, dims)
    read = lambda v: env[v] if v in env else const_array(v)  # noqa: E731
    updates = dict(graph.updates)
    return [read(v) for v in graph.outputs], [read(updates[p]) for p in updated_paths(graph)]


# -- regions ---------------------------------------------------------------------

@rule("scan")
def _scan(node, args, dims):
    a = attrs_of(node, dims)
    nc, ncarry = a["num_consts"], a["num_carry"]
    consts, carry, xs = args[:nc], args[nc:nc + ncarry], args[nc + ncarry:]
    body = node.regions[0]

    def step(c, x):
        outs = run_region(body, [*consts, *c, *x], dims)
        return outs[:ncarry], outs[ncarry:]

    # with xs, lax.scan takes the length from them: a symbolic length (a scan over T) cannot
    # go through its int() check of the `length` argument
    carry, ys = lax.scan(step, list(carry), list(xs), length=None if xs else a["length"],
                         reverse=a["reverse"], unroll=a.get("unroll", 1))
    return [*carry, *ys]


@rule("while")
def _while(node, args, dims):
    a = attrs_of(node, dims)
    cn, bn = a["cond_nconsts"], a["body_nconsts"]
    cconsts, bconsts, init = args[:cn], args[cn:cn + bn], args[cn + bn:]
    cond, body = node.regions
    out = lax.while_loop(lambda c: run_region(cond, [*cconsts, *c], dims)[0],
                         lambda c: run_region(body, [*bconsts, *c], dims), list(init))
    return list(out)


@rule("cond")
def _cond(node, args, dims):
    index, ops = args[0], args[1:]
    branches = [lambda *o, r=r: run_region(r, list(o), dims) for r in node.regions]
    return list(lax.switch(index, branches, *ops))


# the mesh of ``nnxc.compile(graph, mesh=...)`` while its graph is traced (None: no mesh given)
LOWERING_MESH: contextvars.ContextVar = contextvars.ContextVar("nnxc_lowering_mesh", default=None)


def shard_map_mesh(names: tuple, sizes: tuple):
    """The devices a ``shard_map`` node runs on: the mesh compiled on when it has the node's
    axes and sizes, else the first devices of that mesh, else the first devices of the
    process, as a mesh of the node's axes."""
    from jax.sharding import AxisType, Mesh
    n = math.prod(sizes)
    given = LOWERING_MESH.get()
    if not isinstance(given, Mesh):  # none, or an AbstractMesh (no devices)
        given = None
    if given is not None and tuple(given.axis_names) == tuple(names) and tuple(given.axis_sizes) == tuple(sizes):
        return given
    devices = list(given.devices.flat) if given is not None else jax.devices()
    if len(devices) < n:
        raise NnxcError(f"shard_map over the mesh {', '.join(f'{a}={k}' for a, k in zip(names, sizes))} needs "
                        f"{n} devices, {len(devices)} available (on CPU, set XLA_FLAGS="
                        f"--xla_force_host_platform_device_count={n} before JAX starts)")
    return Mesh(np.asarray(devices[:n], dtype=object).reshape(sizes), tuple(names),
                axis_types=(AxisType.Auto,) * len(names))


@rule("shard_map")
def _shard_map(node, args, dims):
    from jax.sharding import PartitionSpec as P
    a = node.attrs
    mesh = shard_map_mesh(a["mesh"].get("axis_names"), a["mesh"].get("axis_sizes"))
    spec = lambda s: P(*s)  # noqa: E731 - entries: None, a name, a tuple of names
    body = node.regions[0]
    fn = jax.shard_map(lambda *xs: tuple(run_region(body, list(xs), dims)), mesh=mesh,
                       in_specs=tuple(spec(s) for s in a["in_specs"]),
                       out_specs=tuple(spec(s) for s in a["out_specs"]),
                       axis_names=frozenset(a["manual_axes"]), check_vma=a["check_vma"])
    return list(fn(*args))


# -- reducers: reduce / reduce_window bind JAX's primitive with the region as its jaxpr ------

def reducer_jaxpr(region: Region, dims: dict):
    """The reducer region as the ClosedJaxpr JAX's reduce primitives take (traced on scalars),
    and the Python function it was traced from."""
    def fn(*xs):
        return run_region(region, list(xs), dims)
    scalars = [jax.ShapeDtypeStruct((), to_dtype(v.type.dtype)) for v in region.args]
    return jax.make_jaxpr(fn)(*scalars), fn


@rule("reduce")
def _reduce(node, args, dims):
    closed, fn = reducer_jaxpr(node.regions[0], dims)
    params = dict(attrs_of(node, dims), jaxpr=closed, computation=fn)
    return jc.bind(jc.primitive("reduce"), args, params)


@rule("reduce_window")
def _reduce_window(node, args, dims):
    closed, _ = reducer_jaxpr(node.regions[0], dims)
    params = dict(attrs_of(node, dims), jaxpr=closed.jaxpr, consts=tuple(closed.consts))
    return jc.bind(jc.primitive("reduce_window"), args, params)


# -- ops whose JAX params include functions the IR does not keep ------------------

_SCATTERS = {"scatter": lax.scatter, "scatter-add": lax.scatter_add, "scatter-sub": lax.scatter_sub,
             "scatter-mul": lax.scatter_mul,
             "scatter-min": lax.scatter_min, "scatter-max": lax.scatter_max}


@rule(*_SCATTERS)
def _scatter(node, args, dims):
    a = attrs_of(node, dims)
    a.pop("update_consts", None)
    return [_SCATTERS[node.op](*args, **a)]


@rule("dim_as_value")
def _dim_as_value(node, args, dims):
    dim = decode_param(node.attrs["dim"], dims)
    return [jax.numpy.asarray(jc.dimension_as_value(dim), dtype=to_dtype(node.outputs[0].type.dtype))]



# -- placement: the values are the operands' -------------------------------------------

@jax.jit
def _crossing(x):
    return x


@rule("jit_boundary")
def _jit_boundary(node, args, dims):
    """A constant crossing a nested jit in the user's program: the same call (jax.jit emits
    a ``func.call`` for it; XLA inlines it), so that XLA simplifies around it as it does in
    the user's own HLO."""
    return [_crossing(args[0])]


@rule("sharding_constraint")
def _sharding_constraint(node, args, dims):
    sharding = decode_param(node.attrs["sharding"], dims)
    if sharding is None:  # no mesh with its axes is set where the graph is compiled
        return list(args)
    return [jax.lax.with_sharding_constraint(args[0], sharding)]


@rule("device_put")
def _device_put(node, args, dims):
    # kept only with a one-device target (see the frontend): inside jit, the operands themselves
    return list(args)
