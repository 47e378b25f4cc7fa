"""Regions: scan -> Loop (xs sliced per step, ys stacked by the Loop), while -> Loop with a
condition, cond -> If (nested for more than two branches); a shard_map over several devices
is refused (one on a 1-device mesh never reaches the IR: the frontend inlines it). A scanned layer stack stays one
Loop, its stacked weights sliced inside the body.

Complex values (real/imaginary pairs, ``fft.py``) flow through as pairs: consts, carries,
scanned slices and stacked results, branch results -- declared in the bodies as their
``[..., 2]`` real tensors.
"""
from __future__ import annotations

from onnx import TensorProto, helper

from ...ir.types import TensorType
from .builder import onnx_dtype, value_info
from .shape import INT64_MIN, dims_of
from .table import Refused, rule

_BOOL = TensorType((), "bool")


def inline(b, region, args: list[str]) -> list[str]:
    """Emit ``region`` into builder ``b`` with its arguments bound to ``args`` (a complex
    result is returned as its pair)."""
    from .fft import is_complex, pair
    for v, name in zip(region.args, args):
        b.env[v] = name
    b.emit(region.nodes)
    return [pair(b, v, "" if v.data is not None else b.value(v)) if is_complex(v.type.dtype)
            else b.value(v) for v in region.results]


def _info(name: str, t: TensorType):
    """A subgraph input or output: a complex value as its real/imaginary pair."""
    from .fft import boundary_type
    return value_info(name, boundary_type(t))


def _pairs(b, names, types) -> list[str]:
    """Record the complex ones among ``names`` (made in builder ``b``) as pairs."""
    from .fft import as_pair, is_complex
    return [as_pair(b, n) if is_complex(t.dtype) else n for n, t in zip(names, types)]


def _results(sub, names: list[str]) -> list[str]:
    """Subgraph outputs must be produced inside the subgraph, once each: copy the others."""
    produced = {o for n in sub.nodes for o in n.output}
    out, used = [], set()
    for name in names:
        if name not in produced or name in used:
            name = sub.op("Identity", name)
        used.add(name)
        out.append(name)
    return out


def _graph(b, sub, kind: str, inputs: list, results: list[str], types: list):
    outputs = [_info(n, t) for n, t in zip(_results(sub, results), types)]
    return helper.make_graph(sub.nodes, b.ctx.fresh(kind), inputs, outputs)


def _scalar_info(name: str, elem: int):
    return helper.make_tensor_value_info(name, elem, [])


def _loop_inputs(b, types) -> tuple[str, str, list[str], list]:
    it, cond = b.ctx.fresh("iter"), b.ctx.fresh("cond")
    carry = [b.ctx.fresh("carry") for _ in types]
    infos = [_scalar_info(it, TensorProto.INT64), _scalar_info(cond, TensorProto.BOOL)]
    return it, cond, _pairs(b, carry, types), infos + [_info(n, t) for n, t in zip(carry, types)]


def loop(b, trips: str, carried: list[tuple[str, str]], body, scans: tuple[str, ...] = ()):
    """An ONNX ``Loop`` run ``trips`` (an i64 scalar) times over the ``carried`` (name, dtype)
    values: ``body(sub, it, values) -> (new values, scanned)`` emits one step into builder
    ``sub`` from the step number ``it`` (i64, from 0) and the carried names. Each scanned value
    (dtypes ``scans``) comes out stacked along a new leading axis. Values are declared by element
    type only. Returns (carried, scanned) output names."""
    ctx = b.ctx
    sub = b.sub()
    it, cond = ctx.fresh("iter"), ctx.fresh("cond")
    names = [ctx.fresh("carry") for _ in carried]
    typed = lambda n, t: helper.make_tensor_value_info(n, onnx_dtype(t), None)  # noqa: E731
    inputs = [_scalar_info(it, TensorProto.INT64), _scalar_info(cond, TensorProto.BOOL)]
    inputs += [typed(n, t) for n, (_, t) in zip(names, carried)]
    new, scanned = body(sub, it, names)
    results = _results(sub, [sub.op("Identity", cond), *new, *scanned])
    types = [t for _, t in carried] + list(scans)
    outputs = [_scalar_info(results[0], TensorProto.BOOL)] + [typed(n, t) for n, t in zip(results[1:], types)]
    graph = helper.make_graph(sub.nodes, ctx.fresh("loop_body"), inputs, outputs)
    outs = b.op("Loop", trips, None, *[n for n, _ in carried], outs=len(types), body=graph)
    outs = [outs] if isinstance(outs, str) else list(outs)
    return outs[:len(carried)], outs[len(carried):]


def choose(b, cond: str, then, otherwise, types: list) -> list[str]:
    """An ONNX ``If`` on the bool scalar ``cond``: ``then(sub)`` and ``otherwise(sub)`` emit a
    branch into a builder of its own and return its result names (of IR types ``types``)."""
    graphs = []
    for fn in (then, otherwise):
        sub = b.sub()
        graphs.append(_graph(b, sub, "branch", [], fn(sub), types))
    outs = b.op("If", cond, outs=len(types), then_branch=graphs[0], else_branch=graphs[1])
    return [outs] if isinstance(outs, str) else list(outs)


@rule("scan")
def _scan(b, node, xs):
    a = node.attrs
    nc, ncarry, length, reverse = a["num_consts"], a["num_carry"], a["length"], a.get("reverse", False)
    (body,) = node.regions
    carry_types = [v.type for v in body.args[nc:nc + ncarry]]
    sub = b.sub()
    it, cond, carry, inputs = _loop_inputs(sub, carry_types)
    n = b.dim_scalar(dims_of((length,))[0])  # the length may be a symbolic dim
    step = sub.op("Sub", sub.op("Sub", n, b.scalar(1, "i64")), it) if reverse else it
    slices = _pairs(sub, [sub.op("Gather", x, step, axis=0) for x in xs[nc + ncarry:]],
                    [v.type for v in node.inputs[nc + ncarry:]])
    res = inline(sub, body, xs[:nc] + carry + slices)
    cond_out = sub.op("Identity", cond)
    graph = _graph(b, sub, "scan_body", inputs, [cond_out] + res,
                   [_BOOL] + [v.type for v in body.results])
    outs = b.op("Loop", n, None, *xs[nc:nc + ncarry],
                outs=len(body.results), body=graph)
    outs = [outs] if isinstance(outs, str) else outs
    if reverse:  # the Loop stacked ys in step order; put them back at their own indices
        outs = outs[:ncarry] + [b.slice(y, [-1], [INT64_MIN], [0], [-1]) for y in outs[ncarry:]]
    return _pairs(b, outs, [v.type for v in node.outputs])


@rule("while")
def _while(b, node, xs):
    a = node.attrs
    cn, bn = a["cond_nconsts"], a["body_nconsts"]
    cconsts, bconsts, init = xs[:cn], xs[cn:cn + bn], xs[cn + bn:]
    cond_r, body_r = node.regions
    (first,) = inline(b, cond_r, cconsts + init)
    sub = b.sub()
    _, _, carry, inputs = _loop_inputs(sub, [v.type for v in body_r.args[bn:]])
    res = inline(sub, body_r, bconsts + carry)
    (again,) = inline(sub, cond_r, cconsts + res)  # the condition again
    graph = _graph(b, sub, "while_body", inputs, [again] + res, [_BOOL] + [v.type for v in body_r.results])
    outs = b.op("Loop", None, first, *init, outs=len(init), body=graph)
    return _pairs(b, [outs] if isinstance(outs, str) else outs, [v.type for v in node.outputs])


@rule("cond")
def _cond(b, node, xs):
    index, ops = xs[0], xs[1:]
    regions, types = node.regions, [v.type for v in node.outputs]
    if len(regions) == 1:
        return inline(b, regions[0], ops)
    itype = node.inputs[0].type.dtype

    def branch(i):
        sub = b.sub()
        return _graph(b, sub, "branch", [], inline(sub, regions[i], ops), types)

    def chain(i):  # a graph choosing among branches i.. with nested Ifs
        if i == len(regions) - 1:
            return branch(i)
        sub = b.sub()
        pick = sub.op("Equal", index, b.scalar(i, itype))
        outs = sub.op("If", pick, outs=len(types), then_branch=branch(i), else_branch=chain(i + 1))
        outs = _pairs(sub, [outs] if isinstance(outs, str) else outs, types)
        return _graph(b, sub, "branch", [], outs, types)

    pick = b.op("Equal", index, b.scalar(0, itype))
    outs = b.op("If", pick, outs=len(types), then_branch=branch(0), else_branch=chain(1))
    return _pairs(b, [outs] if isinstance(outs, str) else outs, types)


@rule("shard_map")
def _shard_map(b, node, xs):
    mesh = node.attrs["mesh"]
    sizes = dict(zip(mesh.get("axis_names"), mesh.get("axis_sizes")))
    axis = next((a for a in node.attrs["manual_axes"] if sizes.get(a, 1) > 1), None)
    if axis is None:
        raise Refused("a shard_map on a 1-device mesh: trace the model again (the frontend inlines it)")
    raise Refused(f"shard_map over the mesh axis {axis!r} of {sizes.get(axis)} devices: ONNX graphs "
                  "run on one device; trace with a 1-device mesh to inline it")
