"""jaxpr -> IR. Call-like primitives are inlined; scan/while/cond, and the reducers of
reduce/reduce_window, become regions; a shard_map is inlined on one device, else a region
(``shard_map.py``)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..errors import UnsupportedOpError
from ..ir.graph import Graph, Node, Region, Value
from ..ir.types import TensorType
from .. import _jax as jc
from ..ir.params import UnsupportedParam, encode_param
from .shard_map import (COLLECTIVES, ONE_DEVICE, collective_axes, convert_collective,  # noqa: F401
                        convert_shard_map)
from .static_slices import same_dim, static_slices

# call-like primitives whose body is inlined (the primal computation is kept), and the
# param that holds the body
INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr",
          "remat2": "jaxpr"}
# the calls jax.jit lowers as calls (func.call) unless their ``inline`` param says otherwise
CALLS = frozenset({"pjit", "jit"})
# primitives that become nodes with regions, and the params that hold their bodies (a
# reducer: a region of scalars, (accumulators..., elements...) -> accumulators...)
REGIONS = {"scan": ("jaxpr",), "while": ("cond_jaxpr", "body_jaxpr"), "cond": ("branches",),
           "reduce": ("jaxpr",), "reduce_window": ("jaxpr",)}
# params that only matter to autodiff or are implied by the op; not kept in the IR
DROPPED = {"scan": {"linear", "_split_transpose", "jaxpr"},
           "while": {"cond_jaxpr", "body_jaxpr"}, "cond": {"branches"},
           "reduce": {"computation", "jaxpr"},  # computation: the Python function traced into jaxpr
           "reduce_window": {"jaxpr", "consts"},  # consts: the reducer's closed-over constants
           "scatter-add": {"update_jaxpr", "update_consts"},
           "scatter-mul": {"update_jaxpr", "update_consts"},
           "scatter-sub": {"update_jaxpr", "update_consts"},
           "scatter-min": {"update_jaxpr", "update_consts"},
           "scatter-max": {"update_jaxpr", "update_consts"},
           "scatter": {"update_jaxpr", "update_consts"},
           # the mesh a constraint was traced under: lowering uses the mesh compiled under
           "sharding_constraint": {"context_mesh"},
           # where to copy to: kept only when that is one device (then the op is an identity)
           "device_put": {"devices", "srcs", "copy_semantics"}}
REFUSED = {"pure_callback": "host callbacks cannot be compiled ahead of time or exported",
           "io_callback": "host callbacks cannot be compiled ahead of time or exported",
           "debug_callback": "remove jax.debug.print/callback before exporting",
           "debug_print": "remove jax.debug.print before exporting"}


def aval_type(aval) -> TensorType:
    return TensorType.of(aval)


def const_value(x, aval=None) -> Value:
    """A constant Value holding ``x`` (a literal or closed-over array)."""
    t = TensorType.of(aval if aval is not None else x)
    try:
        data = np.asarray(x, dtype=np.dtype(aval.dtype) if aval is not None else None)
    except TypeError:  # e.g. PRNG key arrays: keep the JAX array
        data = x
    return Value(t, data=data)


class Converter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.unsupported: list[tuple] = []
        self.inlined_loc: str | None = None  # set while converting an inlined call's body
        self.one_device: frozenset = frozenset()  # size-1 mesh axes of the shard_maps being inlined

    def const(self, x, aval=None) -> Value:
        v = const_value(x, aval)
        if v.type.rank:
            self.graph.consts.append(v)
        return v

    def boundary(self, v: Value, nodes: list[Node], path: str, loc) -> Value:
        """A constant that crosses a nested jit's boundary (an argument or a result of a
        ``jax.jit`` the program calls) becomes ``jit_boundary(constant)``, lowered as such a
        call: jax.jit's HLO passes it as a call operand, which no folding before XLA inlines
        the call sees through, and XLA simplifies the rest differently when it can."""
        if not v.is_const:
            return v
        node = Node("jit_boundary", [v], [v.type], {}, (), path, loc)
        nodes.append(node)
        return node.outputs[0]

    def closed(self, cj, in_values, nodes: list[Node], path: str) -> list[Value]:
        if isinstance(cj, jc.ClosedJaxpr):
            consts = [self.const(c) for c in cj.consts]
            return self.block(cj.jaxpr, consts, in_values, nodes, path)
        return self.block(cj, [], in_values, nodes, path)

    def block(self, jaxpr, const_values, in_values, nodes: list[Node], path: str) -> list[Value]:
        env: dict = {}
        for var, v in zip(jaxpr.constvars, const_values):
            env[var] = v
        for var, v in zip(jaxpr.invars, in_values):
            env[var] = v

        def read(a):
            if isinstance(a, jc.Literal):
                return self.const(a.val, a.aval)
            return env[a]

        slices, unread = static_slices(jaxpr)
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if id(eqn) in unread:
                continue
            if self.inlined_loc is None:
                epath, loc = jc.scope_path(eqn.source_info) or path, jc.user_frame(eqn.source_info)
            else:  # inside an inlined call: its trace may be cached from another call site
                epath, loc = path, self.inlined_loc
            if id(eqn) in slices:  # its index arithmetic is not converted
                outs = self.static_slice(slices[id(eqn)], eqn, read(eqn.invars[0]), nodes, epath, loc)
                for var, v in zip(eqn.outvars, outs):
                    env[var] = v
                continue
            ins = [read(a) for a in eqn.invars]
            if name in INLINE or name == "custom_linear_solve":
                outer, self.inlined_loc = self.inlined_loc, loc
                if name == "custom_linear_solve":  # what it computes is its `solve` jaxpr
                    inner, ins = _linear_solve_call(eqn.params, ins)
                else:
                    inner = eqn.params.get(INLINE[name])
                called = name in CALLS and not eqn.params.get("inline")
                if called:
                    ins = [self.boundary(v, nodes, epath, loc) for v in ins]
                outs = self.closed(inner, ins, nodes, epath)
                if called:
                    outs = [self.boundary(v, nodes, epath, loc) for v in outs]
                self.inlined_loc = outer
            elif name == "shard_map":
                outs = convert_shard_map(self, eqn, ins, nodes, epath, loc)
            elif name in COLLECTIVES and self.one_device and collective_axes(eqn) <= self.one_device:
                outs = convert_collective(self, eqn, ins, nodes, epath, loc)
            else:
                node = self.node(eqn, name, ins, epath, loc)
                nodes.append(node)
                outs = node.outputs
            for var, v in zip(eqn.outvars, outs):
                if not isinstance(var, jc.DropVar):
                    env[var] = v
        return [read(a) for a in jaxpr.outvars]

    def static_slice(self, form, eqn, operand: Value, nodes: list[Node], path: str, loc) -> list[Value]:
        """The ``slice`` (and ``squeeze``) JAX emits at concrete shapes for a gather that
        symbolic tracing produced (see ``static_slices``)."""
        dtype = eqn.outvars[0].aval.dtype
        shape = tuple(eqn.invars[0].aval.shape)
        if (form.strides is None and not any(form.start) and not form.squeeze_dims
                and all(same_dim(a, b) for a, b in zip(form.limit, shape))):
            return [operand]  # the whole array: JAX emits no slice either
        attrs = {"start_indices": encode_param(form.start), "limit_indices": encode_param(form.limit),
                 "strides": encode_param(form.strides)}
        sliced = Node("slice", [operand], [TensorType.of(SimpleNamespace(shape=form.slice_shape, dtype=dtype))],
                      attrs, (), path, loc)
        nodes.append(sliced)
        if not form.squeeze_dims:
            return sliced.outputs
        squeezed = Node("squeeze", sliced.outputs, [aval_type(eqn.outvars[0].aval)],
                        {"dimensions": encode_param(form.squeeze_dims)}, (), path, loc)
        nodes.append(squeezed)
        return squeezed.outputs

    def node(self, eqn, name: str, ins, path: str, loc: str | None) -> Node:
        jc.register_primitive(eqn.primitive)
        out_types = [aval_type(v.aval) for v in eqn.outvars]
        if name in REFUSED:  # one entry per refused op; its params (callbacks) don't matter
            self.unsupported.append((name, path, loc, REFUSED[name]))
            return Node(name, ins, out_types, {}, (), path, loc)
        attrs = {}
        bad = []
        dropped = DROPPED.get(name, ())
        params = eqn.params
        if name == "sharding_constraint":  # a frozenset of dims: kept in order
            params = {**params, "unconstrained_dims": tuple(sorted(params["unconstrained_dims"]))}
        if name == "device_put":
            targets = [t for t in params["devices"] if jc.placement_devices(t) != 1]
            if targets:
                bad.append(f"a placement on more than one device or a memory kind ({targets[0]!r:.80}); "
                           "an nnxc graph runs on one device, drop jax.device_put inside the traced function")
        for k, v in params.items():
            if k in dropped:
                continue
            if v is None and k in jc.OMITTED_BY_PRIMITIVE.get(name, ()):
                continue  # printed only when set; binding restores it from the table
            try:
                attrs[k] = encode_param(v)
            except UnsupportedParam as e:
                bad.append(f"param {k!r}: {e}")
        if bad:
            self.unsupported.append((name, path, loc, "; ".join(bad)))
        regions = []
        for key in REGIONS.get(name, ()):
            bodies = eqn.params[key]
            if name == "reduce_window":  # an open jaxpr, its constants in another param
                bodies = jc.ClosedJaxpr(bodies, list(eqn.params["consts"]))
            for body in (bodies if isinstance(bodies, (tuple, list)) else (bodies,)):
                regions.append(self.region(body, path))
        return Node(name, ins, out_types, attrs, regions, path, loc)

    def region(self, cj, path: str) -> Region:
        jaxpr = cj.jaxpr if isinstance(cj, jc.ClosedJaxpr) else cj
        args = [Value(aval_type(v.aval)) for v in jaxpr.invars]
        region = Region(args)
        region.results = self.closed(cj, args, region.nodes, path)
        return region

    def finish(self):
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported)


def jaxpr_to_graph(closed_jaxpr, graph: Graph, in_values: list[Value]) -> list[Value]:
    """Convert ``closed_jaxpr`` into ``graph`` (whose inputs/variables are ``in_values``)."""
    conv = Converter(graph)
    outs = conv.closed(closed_jaxpr, in_values, graph.nodes, "")
    conv.finish()
    return outs


def _linear_solve_call(params: dict, ins: list):
    """``custom_linear_solve(consts..., b)`` (jnp.linalg.solve, inv) computes
    ``solve(solve_consts..., b)``: the forward value, as JAX's own lowering of it does.
    Its operands are the consts of matvec, vecmat, solve and transpose_solve, then b."""
    lengths, jaxprs = params["const_lengths"], params["jaxprs"]
    start = lengths.matvec + lengths.vecmat
    total = start + lengths.solve + lengths.transpose_solve
    return jaxprs.solve, list(ins[start:start + lengths.solve]) + list(ins[total:])
