"""dce: remove nodes nothing uses and unused region arguments and results;
dce-variables: also remove the variables nothing reads or writes.

    before:  %0: f32[B,4] = exp(%x)      after:  %1: f32[B,4] = neg(%x)
             %1: f32[B,4] = neg(%x)              return %1
             return %1

Regions: unused ``scan`` consts, xs and ys, unused ``while`` consts and unused ``cond``
operands and results are removed; loop carries are always kept.

Variables: ``dce`` keeps every variable, so a graph keeps the model's state interface
(``exe.state`` round-trips through ``nnx_state`` / ``nnx.update``; an unused variable costs
nothing in XLA, and ONNX export drops unused initializers). ``dce-variables`` (in the
``inference`` preset, where freezing already changed that interface) also removes the
variables that no node reads and that have no update, such as the RNG state of Dropout
layers in eval mode.
"""
from __future__ import annotations

from ..ir.graph import Graph, Node
from .rewrite import Rebuild

EFFECTS = frozenset({"io_callback", "debug_callback", "debug_print"})  # never removed


class _Plan:
    """How to shrink a region node: kept inputs, outputs, per-region args/results, new attrs."""

    __slots__ = ("keep_in", "keep_out", "args", "results", "attrs")

    def __init__(self, keep_in, keep_out, args, results, attrs):
        self.keep_in, self.keep_out, self.args, self.results, self.attrs = \
            keep_in, keep_out, args, results, attrs


class _Shrink(Rebuild):
    def __init__(self, graph, dead, plans):
        super().__init__(graph, drop=dead)
        self.plans = plans

    def copy(self, node, keep_in=None, keep_out=None, attrs=None, regions=None):
        plan = self.plans.get(node)
        if plan is None:
            return super().copy(node)
        regions = [self.region(r, a, res) for r, a, res in zip(node.regions, plan.args, plan.results)]
        return super().copy(node, plan.keep_in, plan.keep_out, plan.attrs, regions)


def eliminate_dead_code(graph: Graph, variables: bool = False) -> Graph:
    live = set(graph.outputs) | {v for _, v in graph.updates}
    dead: set[Node] = set()
    plans: dict[Node, _Plan] = {}
    _mark(graph.nodes, live, dead, plans)
    updated = {p for p, _ in graph.updates}
    unused = {var.path for var in graph.variables if variables and not var.meta.get("new")
              and var.value not in live and var.path not in updated}
    if not dead and not plans and not unused:
        return graph
    new = _Shrink(graph, dead, plans).run()
    new.variables = [v for v in new.variables if v.path not in unused]
    return new


def eliminate_dead_variables(graph: Graph) -> Graph:
    return eliminate_dead_code(graph, variables=True)


def _mark(nodes: list[Node], live: set, dead: set, plans: dict) -> None:
    for node in reversed(nodes):
        outs = [v in live for v in node.outputs]
        if not any(outs) and node.op not in EFFECTS:
            dead.add(node)
            continue
        if not node.regions:
            live.update(node.inputs)
            continue
        shrink = _SHRINK.get(node.op, _keep_all)
        plan = shrink(node, outs, dead, plans)
        keep_in = range(len(node.inputs)) if plan is None else plan.keep_in
        live.update(node.inputs[i] for i in keep_in)
        if plan is not None and _shrinks(node, plan):
            plans[node] = plan


def _shrinks(node: Node, p: _Plan) -> bool:
    return (len(p.keep_in) < len(node.inputs) or len(p.keep_out) < len(node.outputs)
            or any(len(a) < len(r.args) for a, r in zip(p.args, node.regions)))


def _body(region, keep_results, dead, plans) -> set:
    """Mark a region given which results are kept; returns the values it uses."""
    inner = {region.results[i] for i in keep_results}
    _mark(region.nodes, inner, dead, plans)
    return inner


def _keep_all(node, outs, dead, plans):
    for r in node.regions:
        _body(r, range(len(r.results)), dead, plans)
    return None


def _scan(node, outs, dead, plans):
    a = node.attrs
    nc, ncarry = a["num_consts"], a["num_carry"]
    (body,) = node.regions
    keep_out = list(range(ncarry)) + [i for i in range(ncarry, len(outs)) if outs[i]]
    used = _body(body, keep_out, dead, plans)
    keep = [i for i in range(len(body.args))
            if nc <= i < nc + ncarry or body.args[i] in used]
    attrs = dict(a, num_consts=sum(1 for i in keep if i < nc))
    return _Plan(keep, keep_out, [keep], [keep_out], attrs)


def _while(node, outs, dead, plans):
    a = node.attrs
    cn, bn = a["cond_nconsts"], a["body_nconsts"]
    cond, body = node.regions
    ncarry = len(node.outputs)
    cused = _body(cond, [0], dead, plans)
    bused = _body(body, range(ncarry), dead, plans)
    ckeep = [i for i in range(cn) if cond.args[i] in cused]
    bkeep = [i for i in range(bn) if body.args[i] in bused]
    keep_in = ckeep + [cn + i for i in bkeep] + list(range(cn + bn, cn + bn + ncarry))
    cargs = ckeep + list(range(cn, cn + ncarry))
    bargs = bkeep + list(range(bn, bn + ncarry))
    attrs = dict(a, cond_nconsts=len(ckeep), body_nconsts=len(bkeep))
    return _Plan(keep_in, list(range(ncarry)), [cargs, bargs], [[0], list(range(ncarry))], attrs)


def _cond(node, outs, dead, plans):
    keep_out = [i for i, o in enumerate(outs) if o]
    used: set = set()
    for r in node.regions:
        used |= _body(r, keep_out, dead, plans)
    nops = len(node.inputs) - 1
    keep_ops = [i for i in range(nops) if any(r.args[i] in used for r in node.regions)]
    n = len(node.regions)
    return _Plan([0] + [i + 1 for i in keep_ops], keep_out, [keep_ops] * n, [keep_out] * n,
                 dict(node.attrs))


_SHRINK = {"scan": _scan, "while": _while, "cond": _cond}
