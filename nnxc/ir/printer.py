"""Text form of a Graph: one line per node, MLIR-like, stable, and parsed back by parser.py.

    graph @MLP(%x: f32[B,4]) {
      var %l1.kernel: f32[4,8] Param
      %0: f32[B,8] = dot_general(%x, %l1.kernel) {dimension_numbers=(((1,),(0,)),((),()))} @l1
      return %0
    }
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from .attrs import format_attr, format_float
from .graph import Elided, Graph, Node, Region, Value
from .types import to_dtype

DENSE_LIMIT = 16  # constants with more elements print as elided<hash>
_RESERVED = re.compile(r"\d+|c\d+")
_IDENT = re.compile(r"[A-Za-z0-9_.\-]+")


def format_scalar(x, dtype: str) -> str:
    if dtype == "bool":
        return "True" if bool(x) else "False"
    if dtype.startswith(("i", "u")):
        return str(int(x))
    if dtype.startswith("c"):
        return f"({format_float(float(np.real(x)))},{format_float(float(np.imag(x)))})"
    if dtype in ("f32", "f16", "bf16"):  # the shortest text that reads back to the same value
        text = str(np.asarray(x).astype(to_dtype(dtype))[()])
        return text if text in ("inf", "-inf", "nan") or any(c in text for c in ".e") else text + ".0"
    return format_float(float(np.float64(x)))


def format_const(v: Value) -> str:
    if isinstance(v.data, Elided):
        return f"elided<{v.data.digest}>"
    flat = np.asarray(v.data).reshape(-1)
    if flat.size > DENSE_LIMIT:
        return f"elided<{Elided.of(v.data).digest}>"
    return "dense<[" + ",".join(format_scalar(x, v.type.dtype) for x in flat) + "]>"


def is_inline_const(v: Value) -> bool:
    return v.is_const and v.type.rank == 0 and not isinstance(v.data, Elided)


class _Namer:
    def __init__(self):
        self.names: dict[int, str] = {}
        self.count = 0

    def fixed(self, v: Value, name: str) -> None:
        if _RESERVED.fullmatch(name) or not _IDENT.fullmatch(name):
            name = "v_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
        self.names[id(v)] = name

    def fresh(self, v: Value) -> str:
        name = str(self.count)
        self.count += 1
        self.names[id(v)] = name
        return name

    def ref(self, v: Value) -> str:
        if is_inline_const(v):
            return f"{format_scalar(np.asarray(v.data).reshape(()), v.type.dtype)}:{v.type.dtype}"
        name = self.names.get(id(v))
        if name is None:
            return "%<undefined>"
        return "%" + name


def format_tree(tree, leaves: list[str]) -> str:
    """Render an output pytree with its leaves replaced by value names."""
    if tree is None:
        return ", ".join(leaves)
    skeleton = jax.tree_util.tree_unflatten(tree, [_Leaf(s) for s in leaves])
    return _format_obj(skeleton)


class _Leaf:
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _format_obj(o: Any) -> str:
    import dataclasses
    if isinstance(o, _Leaf):
        return o.text
    if o is None:
        return "None"
    if isinstance(o, tuple) and not hasattr(o, "_fields"):
        inner = ", ".join(_format_obj(x) for x in o)
        return f"({inner},)" if len(o) == 1 else f"({inner})"
    if isinstance(o, list):
        return "[" + ", ".join(_format_obj(x) for x in o) + "]"
    if isinstance(o, dict):
        return "{" + ", ".join(f"{format_attr(k)}: {_format_obj(x)}" for k, x in o.items()) + "}"
    if hasattr(o, "_fields"):  # namedtuple
        items = [(f, getattr(o, f)) for f in o._fields]
    elif dataclasses.is_dataclass(o):
        items = [(f.name, getattr(o, f.name)) for f in dataclasses.fields(o)]
    elif hasattr(o, "_nnxc_record"):  # parsed from text
        items = list(o.items)
        return o.cls + "{" + ", ".join(f"{k}={_format_obj(x)}" for k, x in items) + "}"
    else:
        leaves, _ = jax.tree_util.tree_flatten(o, is_leaf=lambda x: isinstance(x, _Leaf))
        items = [(str(i), x) for i, x in enumerate(leaves)]
    return type(o).__name__ + "{" + ", ".join(f"{k}={_format_obj(x)}" for k, x in items) + "}"


def print_graph(g: Graph, locs: bool = True) -> str:
    namer = _Namer()
    lines: list[str] = []
    for v in g.inputs:
        namer.fixed(v, v.name or "arg")
    for var in g.variables:
        namer.fixed(var.value, var.path)
    args = ", ".join(f"{namer.ref(v)}: {v.type}" for v in g.inputs)
    lines.append(f"graph @{g.name}({args}) {{")
    for var in g.variables:
        meta = ""
        if var.meta:
            meta = " {" + ", ".join(f"{k}={format_attr(x)}" for k, x in var.meta.items()) + "}"
        lines.append(f"  var {namer.ref(var.value)}: {var.value.type} {var.kind}{meta}")
    for i, c in enumerate(g.consts):
        namer.fixed(c, f"c{i}")
        namer.names[id(c)] = f"c{i}"
        lines.append(f"  const %c{i}: {c.type} = {format_const(c)}")
    _print_nodes(g.nodes, namer, lines, "  ", locs)
    for path, v in g.updates:
        lines.append(f"  update %{namer.names.get(id(g.variable(path).value), path)} = {namer.ref(v)}")
    lines.append(f"  return {format_tree(g.out_tree, [namer.ref(v) for v in g.outputs])}".rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_nodes(nodes: list[Node], namer: _Namer, lines: list[str], indent: str, locs: bool):
    for node in nodes:
        ins = ", ".join(namer.ref(v) for v in node.inputs)
        outs = ", ".join(f"%{namer.fresh(v)}: {v.type}" for v in node.outputs)
        text = f"{indent}{outs} = " if outs else indent
        text += f"{node.op}({ins})"
        if node.attrs:
            text += " {" + ", ".join(f"{k}={format_attr(x)}" for k, x in node.attrs.items()) + "}"
        if node.path:
            text += f" @{node.path}"
        if locs and node.loc:
            text += f" loc({format_attr(node.loc)})"
        if not node.regions:
            lines.append(text)
            continue
        lines.append(text + " {")
        for i, region in enumerate(node.regions):
            if i:
                lines.append(f"{indent}}} {{")
            _print_region(region, namer, lines, indent + "  ", locs)
        lines.append(f"{indent}}}")


def _print_region(region: Region, namer: _Namer, lines: list[str], indent: str, locs: bool):
    args = ", ".join(f"%{namer.fresh(v)}: {v.type}" for v in region.args)
    lines.append(f"{indent[:-2]}^({args}):")
    _print_nodes(region.nodes, namer, lines, indent, locs)
    lines.append((f"{indent}yield " + ", ".join(namer.ref(v) for v in region.results)).rstrip())
