"""The verifier: SSA order, types (every op's shape rule), region signatures, updates.

``verify(graph)`` raises VerifyError naming the offending node (op, module path, source
line) with the text of the node; run it between passes. Shape rules are pure functions of
a node's signature (op, attributes, input/output/region types), so each signature is
checked once per process: layers repeat, and a 32-layer model costs about what one does.
"""
from __future__ import annotations

from ..errors import VerifyError
from .attrs import check_attr, format_attr
from .graph import Graph, Node, Region, Value
from .ops import ShapeError, infer


def _describe(node: Node, problem: str) -> str:
    where = f" in module '{node.path}'" if node.path else ""
    loc = f" ({node.loc})" if node.loc else ""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    return f"{node.op}{where}{loc}: {problem}\n  node: ({outs}) = {node.op}({ins}) {node.attrs}"


_CHECKED: set = set()  # signatures whose types are known to be right
_LIMIT = 200_000


def _signature(node: Node) -> tuple:
    return (node.op, tuple((k, format_attr(a)) for k, a in node.attrs.items()),
            tuple(v.type for v in node.inputs), tuple(v.type for v in node.outputs),
            tuple((tuple(a.type for a in r.args), tuple(v.type for v in r.results))
                  for r in node.regions))


def verify(graph: Graph, check_types: bool = True) -> None:
    """Raise VerifyError on the first malformed node; return None when the graph is sound."""
    defined: set[int] = set()
    for v in graph.inputs:
        defined.add(id(v))
    paths = set()
    for var in graph.variables:
        if var.path in paths:
            raise VerifyError(f"variable {var.path!r} is declared twice")
        paths.add(var.path)
        if not var.meta.get("new"):
            defined.add(id(var.value))
    for c in graph.consts:
        if c.data is None:
            raise VerifyError(f"constant {c.type} has no data")
    env: dict = {}
    _block(graph.nodes, defined, env, check_types)

    def need(v: Value, what: str):
        if not v.is_const and id(v) not in defined:
            raise VerifyError(f"{what} uses a value that is not defined: {v!r}")

    for v in graph.outputs:
        need(v, "graph output")
    seen = set()
    for path, v in graph.updates:
        if path not in paths:
            raise VerifyError(f"update of unknown variable {path!r}")
        if path in seen:
            raise VerifyError(f"variable {path!r} is updated twice")
        seen.add(path)
        need(v, f"update of {path!r}")
        var = graph.variable(path)
        if v.type != var.value.type:
            raise VerifyError(f"update of {path!r} has type {v.type}, the variable is {var.value.type}")
    for var in graph.variables:
        if var.meta.get("new") and var.path not in seen:
            raise VerifyError(f"new variable {var.path!r} has no update")


def _block(nodes: list[Node], defined: set, env: dict, check_types: bool) -> None:
    for node in nodes:
        for i, v in enumerate(node.inputs):
            if not v.is_const and id(v) not in defined:
                raise VerifyError(_describe(node, f"input {i} is used before it is defined "
                                                  "(or comes from another region)"))
        for k, a in node.attrs.items():
            try:
                check_attr(a)
            except TypeError as e:
                raise VerifyError(_describe(node, f"attribute {k}: {e}")) from None
        if check_types:  # the node's own rule first: it checks regions
            _check_types(node, env)
        for region in node.regions:
            _region(node, region, defined, env, check_types)
        for v in node.outputs:
            if id(v) in defined:
                raise VerifyError(_describe(node, "an output value is defined twice"))
            if v.producer is not node:
                raise VerifyError(_describe(node, "an output's producer is another node"))
            defined.add(id(v))


def _check_types(node: Node, env: dict) -> None:
    """The node's output types are what its op's shape rule gives (once per signature)."""
    sig = _signature(node)
    if sig in _CHECKED:
        return
    try:
        want = infer(node, [v.type for v in node.inputs], env)
    except ShapeError as e:
        raise VerifyError(_describe(node, str(e))) from None
    except Exception as e:  # noqa: BLE001 - a rule meeting a malformed node (a missing or
        # mistyped attribute, a wrong number of regions, a bad dim) fails in its own way
        raise VerifyError(_describe(node, f"malformed {node.op} node ({_reason(e)})")) from None
    got = [v.type for v in node.outputs]
    if want != got:
        raise VerifyError(_describe(node, "output types (" + ", ".join(map(str, got))
                                    + ") but the op's rule gives ("
                                    + ", ".join(map(str, want)) + ")"))
    if len(_CHECKED) > _LIMIT:
        _CHECKED.clear()
    _CHECKED.add(sig)


def _reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing attribute {e.args[0]!r}" if e.args else "a missing attribute"
    return f"{type(e).__name__}: {e}"


def _region(node: Node, region: Region, outer: set, env: dict, check_types: bool) -> None:
    # a region sees its own arguments and values and the graph's constants, nothing else
    defined = {id(v) for v in region.args}
    _block(region.nodes, defined, env, check_types)
    for v in region.results:
        if not v.is_const and id(v) not in defined:
            raise VerifyError(_describe(node, "a region result is not defined in the region"))
