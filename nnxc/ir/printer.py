"""Text form of a Graph: one line per node, MLIR-like, stable, and parsed back by parser.py.

    graph @MLP(%x: f32[B,4]) {
      var %l1.kernel: f32[4,8] Param
      %0: f32[B,8] = dot_general(%x, %l1.kernel) {dimension_numbers=(((1,),(0,)),((),()))} @l1
      return %0
    }
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np

from .attrs import format_attr, format_float
from .graph import Elided, Graph, Node, Region, Value
from .types import to_dtype

DENSE_LIMIT = 16  # with constants elided, those with more elements print as elided<hash>
FULL_CONSTANTS_LIMIT = 64 * 1024  # graphs whose constants take at most this many bytes
# print them all by default, so their text is the whole program
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


def format_const(v: Value, full: bool = False) -> str:
    """``dense<[...]>`` with every value (exact: each reads back to the same bits, NaN
    payloads aside), or ``elided<hash>`` for data over DENSE_LIMIT elements unless ``full``."""
    if isinstance(v.data, Elided):
        return f"elided<{v.data.digest}>"
    flat = np.asarray(v.data).reshape(-1)
    if flat.size > DENSE_LIMIT and not full:
        return f"elided<{Elided.of(v.data).digest}>"
    return "dense<[" + ",".join(_format_values(flat, v.type.dtype)) + "]>"


def _format_values(flat: np.ndarray, dtype: str) -> list[str]:
    if flat.size <= DENSE_LIMIT:
        return [format_scalar(x, dtype) for x in flat]
    if dtype == "bool":
        return ["True" if x else "False" for x in flat.tolist()]
    if dtype.startswith(("i", "u")):
        return [str(x) for x in flat.tolist()]
    if dtype in ("f32", "f16"):  # numpy's shortest round-trip text, like format_scalar
        return [s if any(c in s for c in ".en") else s + ".0"
                for s in flat.astype(to_dtype(dtype)).astype(str).tolist()]
    if dtype == "f64":
        return [format_float(x) for x in flat.astype(np.float64).tolist()]
    return [format_scalar(x, dtype) for x in flat]


def const_bytes(g: Graph) -> int:
    """Bytes of the graph's constants that have data (elided ones count nothing)."""
    return sum(_nbytes(c.data) for c in g.consts if not isinstance(c.data, Elided))


def _nbytes(x) -> int:
    n = getattr(x, "nbytes", None)
    return int(n) if n is not None else np.asarray(x).nbytes


def prints_full_constants(g: Graph, full_constants: bool | None = None) -> bool:
    """Whether the text shows every constant's data: as asked, or by default when they
    take at most FULL_CONSTANTS_LIMIT bytes."""
    if full_constants is not None:
        return bool(full_constants)
    return const_bytes(g) <= FULL_CONSTANTS_LIMIT


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


def print_graph(g: Graph, locs: bool = True, full_constants: bool | None = None) -> str:
    """The text form of ``g``; ``locs=False`` leaves out source locations.

    ``full_constants``: True prints every constant's data, so that ``parse`` gives back a
    graph that runs; False prints constants of more than DENSE_LIMIT elements as
    ``elided<hash>`` (short text; the data can go to a sidecar, see ``write_text``); None
    (the default) prints them in full when together they take at most
    FULL_CONSTANTS_LIMIT (64 KiB), else elides them.
    """
    full = prints_full_constants(g, full_constants)
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
        lines.append(f"  const %c{i}: {c.type} = {format_const(c, full)}")
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


# -- writing text files, with a sidecar for the elided constants ------------------------

SIDECAR_SUFFIX = ".safetensors"
# dtypes safetensors cannot read back into numpy go in as their bytes (uint8)
_SIDECAR_NATIVE = frozenset({"bool", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64",
                             "f16", "bf16", "f32", "f64", "c64", "c128"})


def elided_arrays(g: Graph, full_constants: bool | None = False) -> dict[str, np.ndarray]:
    """The data of the constants ``print_graph(g, full_constants=...)`` elides, by hash."""
    if prints_full_constants(g, full_constants):
        return {}
    out = {}
    for c in g.consts:
        if isinstance(c.data, Elided):
            continue
        a = np.asarray(c.data)
        if a.size > DENSE_LIMIT:
            out[Elided.of(c.data).digest] = a  # c.data: the object whose digest is cached
    return out


def sidecar_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A safetensors file holding ``arrays`` (hash -> array); dtypes safetensors cannot
    hold natively (float8) are stored as their raw bytes, the IR type says what they are."""
    from safetensors.numpy import save
    from .types import dtype_name
    tensors = {}
    for key, a in sorted(arrays.items()):
        a = np.ascontiguousarray(a)
        if dtype_name(a.dtype) not in _SIDECAR_NATIVE:
            a = a.reshape(-1).view(np.uint8)
        tensors[key] = a
    return save(tensors, metadata={"format": "nnxc-ir-constants"})


def write_text(g: Graph, path, *, locs: bool = True, full_constants: bool | None = None,
               sidecar=None) -> str | None:
    """Write ``print_graph(g, locs, full_constants)`` to ``path`` atomically.

    ``sidecar``: True writes the data of the elided constants, keyed by their hash, to
    ``<path>.safetensors``; a path writes it there; None/False writes no sidecar. Returns
    the sidecar's path, or None. ``nnxc.ir.parse(text, sidecar=that_path)`` restores the
    constants, so the parsed graph runs.
    """
    from .._files import atomic_write
    path = os.fspath(path)
    text = print_graph(g, locs=locs, full_constants=full_constants)
    where = None
    if sidecar:
        where = path + SIDECAR_SUFFIX if sidecar is True else os.fspath(sidecar)
        if os.path.abspath(where) == os.path.abspath(path):
            raise ValueError("the sidecar needs a path other than the text's")
        atomic_write(where, sidecar_bytes(elided_arrays(g, full_constants)))
    atomic_write(path, text)
    return where
