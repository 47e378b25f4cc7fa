"""Verification between passes, fast enough to stay on: the full structural check of
``ir.verify`` every time, and each op's type rule once per distinct signature.

A signature is (op, attributes, input types, region types, output types); shape rules are
pure functions of it, so a cached answer is the answer. Layers repeat, so a 32-layer model
has about as many distinct signatures as a 1-layer one.
"""
from __future__ import annotations

from ..errors import VerifyError
from ..ir.attrs import format_attr
from ..ir.graph import Graph, Node
from ..ir.ops import ShapeError, infer
from ..ir.verify import verify

_KNOWN: set = set()
LIMIT = 200_000  # signatures remembered across calls


def _signature(node: Node) -> tuple:
    return (node.op, tuple((k, format_attr(a)) for k, a in node.attrs.items()),
            tuple(v.type for v in node.inputs), tuple(v.type for v in node.outputs),
            tuple((tuple(a.type for a in r.args), tuple(v.type for v in r.results))
                  for r in node.regions))


def verify_fast(graph: Graph) -> None:
    """Raise VerifyError like ``ir.verify`` does, checking each op signature's types once."""
    verify(graph, check_types=False)
    for node in graph.walk():
        sig = _signature(node)
        if sig in _KNOWN:
            continue
        try:
            want = infer(node, [v.type for v in node.inputs], {})
        except ShapeError as e:
            raise VerifyError(_where(node, str(e))) from None
        got = [v.type for v in node.outputs]
        if want != got:
            raise VerifyError(_where(node, f"output types ({', '.join(map(str, got))}) but the "
                                           f"op's rule gives ({', '.join(map(str, want))})"))
        if len(_KNOWN) > LIMIT:
            _KNOWN.clear()
        _KNOWN.add(sig)


def _where(node: Node, problem: str) -> str:
    where = f" in module '{node.path}'" if node.path else ""
    loc = f" ({node.loc})" if node.loc else ""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    return f"{node.op}{where}{loc}: {problem}\n  node: ({outs}) = {node.op}({ins}) {node.attrs}"
