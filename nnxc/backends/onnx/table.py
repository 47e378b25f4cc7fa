"""``ONNX_RULES``: IR op name -> emitter. Each family module registers its rules here.

An emitter is ``fn(b: Builder, node: Node, xs: list[str]) -> str | list[str]``: it reads the
node's attributes and IR types, emits ONNX nodes through ``b`` on the input names ``xs``,
and returns the ONNX names of the node's outputs. It raises ``Refused(reason)`` when the
chosen opset (``b.opset``) or the node's attributes are out of its reach.
"""
from __future__ import annotations

from typing import Callable

from ..._registry import registrar

Rule = Callable[..., object]
ONNX_RULES: dict[str, Rule] = {}


class Refused(Exception):
    """A rule cannot lower this node (the message says why and how to avoid it).

    ``opset``: set when a newer opset would lower it (the default opset is raised to it)."""

    def __init__(self, message: str, opset: int | None = None):
        super().__init__(message)
        self.opset = opset


rule = registrar(ONNX_RULES)


def need(b, opset: int, what: str) -> None:
    """Refuse unless the export opset is at least ``opset``."""
    if b.opset < opset:
        raise Refused(f"{what} needs opset >= {opset} (exporting at opset {b.opset})", opset)
