"""``XLA_RULES``: the ops whose XLA lowering is more than binding the JAX primitive of the
same name. Rule modules (lower.py for regions and dims, fused.py for ``nnxc.*`` ops) add to it
with ``@rule("op")``; the interpreter in lower.py looks ops up here."""
from __future__ import annotations

from typing import Callable

from ..._registry import registrar
from ...ir.graph import Node
from ...ir.params import decode_param

Rule = Callable[[Node, list, dict], list]
XLA_RULES: dict[str, Rule] = {}
rule = registrar(XLA_RULES)


def attrs_of(node: Node, dims: dict) -> dict:
    """The node's attributes as JAX params, symbolic dims evaluated in ``dims``."""
    return {k: decode_param(v, dims) for k, v in node.attrs.items()}
