"""The JSON form of a Graph: a versioned schema for tools (``from_json(to_json(g)) == g``).

Schema ``{"schema": "nnxc-ir", "version": 1}``. Values are named as the text form names
them (``x``, ``l1.kernel``, ``c0``, ``12``); an operand is such a name, or an inline
scalar constant ``{"value": SCALAR, "dtype": "f32"}``::

    {"schema": "nnxc-ir", "version": 1, "name": "MLP",
     "inputs":    [{"id": "x", "name": "x", "type": TYPE}],
     "variables": [{"id": "l1.kernel", "path": "l1.kernel", "kind": "Param", "type": TYPE,
                    "meta": {NAME: ATTR}}],
     "consts":    [{"id": "c0", "type": TYPE, "data": [SCALAR, ...]}      # the values, or
                   {"id": "c1", "type": TYPE, "digest": "3f9a..."}],      # content hash (elided,
                                                          # as the text form elides them)
     "nodes":     [NODE],
     "updates":   [{"path": "bn.mean", "value": OPERAND}],
     "outputs":   [OPERAND],
     "out_tree":  null | "{'logits': %3, 'aux': (%4, %5)}"}   # the text form's return line

    NODE   = {"op": "dot_general", "inputs": [OPERAND], "outputs": [{"id": "0", "type": TYPE}],
              "attrs": {NAME: ATTR}, "path": "l1", "loc": "model.py:12",
              "regions": [{"args": [{"id", "type"}], "nodes": [NODE], "results": [OPERAND]}]}
    TYPE   = {"dtype": "f32", "shape": ["B", 784]}          # a string dim is symbolic
    ATTR   = null | true | 3 | 2.5 | "text" | [ATTR, ...]   # a list is a tuple
           | {"float": "nan" | "inf" | "-inf"} | {"dtype": "bf16"} | {"dim": "2*B"}
           | {"enum": "Precision", "member": "HIGHEST"}
           | {"record": "ConvDimensionNumbers", "fields": [[NAME, ATTR], ...]}
    SCALAR = true | 3 | 2.5 | {"float": "nan"} | {"complex": [re, im]}

``attrs``, ``path``, ``loc``, ``regions`` and ``meta`` are left out when empty. Like the text
form, the JSON holds no variable values and no ``graph.meta``.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import NnxcError
from .attrs import DType, EnumVal, Record, SymDim, format_float
from .graph import Elided, Graph, Node, Region, Value, Variable
from .printer import DENSE_LIMIT, _Namer, format_tree, is_inline_const, prints_full_constants
from .types import TensorType, to_dtype

SCHEMA, VERSION = "nnxc-ir", 1


class IRJsonError(NnxcError, ValueError):
    """Malformed IR JSON; the message names the place (``nodes[3].inputs[1]``)."""


def value_names(graph: Graph) -> _Namer:
    """The names the text form gives every value (``namer.names[id(value)]``)."""
    namer = _Namer()
    for v in graph.inputs:
        namer.fixed(v, v.name or "arg")
    for var in graph.variables:
        namer.fixed(var.value, var.path)
    for i, c in enumerate(graph.consts):
        namer.names[id(c)] = f"c{i}"

    def visit(nodes):
        for node in nodes:
            for v in node.outputs:
                namer.fresh(v)
            for region in node.regions:
                for a in region.args:
                    namer.fresh(a)
                visit(region.nodes)

    visit(graph.nodes)
    return namer


# -- encoding --------------------------------------------------------------------------

def _type(t: TensorType) -> dict:
    return {"dtype": t.dtype, "shape": list(t.shape)}


def _float(x: float):
    return x if math.isfinite(x) else {"float": format_float(x)}


def _scalar(x, dtype: str):
    if dtype == "bool":
        return bool(x)
    if dtype.startswith(("i", "u")):
        return int(x)
    if dtype.startswith("c"):
        return {"complex": [_float(float(np.real(x))), _float(float(np.imag(x)))]}
    return _float(float(x))


def encode_attr(v: Any):
    """An attribute value as JSON (see the module docstring)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, DType):
        return {"dtype": v.name}
    if isinstance(v, SymDim):
        return {"dim": v.expr}
    if isinstance(v, EnumVal):
        return {"enum": v.cls, "member": v.member}
    if isinstance(v, Record):
        return {"record": v.cls, "fields": [[k, encode_attr(x)] for k, x in v.fields]}
    if isinstance(v, tuple):
        return [encode_attr(x) for x in v]
    raise TypeError(f"not an attribute value: {v!r} ({type(v).__name__})")


def to_json(graph: Graph, indent: int | None = 1, full_constants: bool | None = None) -> str:
    """The graph as JSON text (schema ``nnxc-ir`` version 1, see the module docstring).

    ``full_constants`` as in ``print_graph``: True gives every constant's data, False a
    digest for those over 16 elements, None (default) the data when all constants
    together take at most 64 KiB.
    """
    namer = value_names(graph)
    full = prints_full_constants(graph, full_constants)

    def ref(v: Value):
        if is_inline_const(v):
            return {"value": _scalar(np.asarray(v.data).reshape(()), v.type.dtype), "dtype": v.type.dtype}
        return namer.names.get(id(v), "<undefined>")

    def defs(values):
        return [{"id": namer.names[id(v)], "type": _type(v.type)} for v in values]

    def node(n: Node) -> dict:
        out = {"op": n.op, "inputs": [ref(v) for v in n.inputs], "outputs": defs(n.outputs)}
        if n.attrs:
            out["attrs"] = {k: encode_attr(x) for k, x in n.attrs.items()}
        if n.path:
            out["path"] = n.path
        if n.loc:
            out["loc"] = n.loc
        if n.regions:
            out["regions"] = [{"args": defs(r.args), "nodes": [node(x) for x in r.nodes],
                               "results": [ref(v) for v in r.results]} for r in n.regions]
        return out

    def const(i: int, c: Value) -> dict:
        out = {"id": f"c{i}", "type": _type(c.type)}
        if isinstance(c.data, Elided) or (not full and np.asarray(c.data).size > DENSE_LIMIT):
            out["digest"] = c.data.digest if isinstance(c.data, Elided) else Elided.of(c.data).digest
        else:
            out["data"] = [_scalar(x, c.type.dtype) for x in np.asarray(c.data).reshape(-1)]
        return out

    def variable(var: Variable) -> dict:
        out = {"id": namer.names[id(var.value)], "path": var.path, "kind": var.kind,
               "type": _type(var.value.type)}
        if var.meta:
            out["meta"] = {k: encode_attr(x) for k, x in var.meta.items()}
        return out

    outputs = [ref(v) for v in graph.outputs]
    doc = {
        "schema": SCHEMA, "version": VERSION, "name": graph.name,
        "inputs": [{"id": namer.names[id(v)], "name": v.name, "type": _type(v.type)} for v in graph.inputs],
        "variables": [variable(var) for var in graph.variables],
        "consts": [const(i, c) for i, c in enumerate(graph.consts)],
        "nodes": [node(n) for n in graph.nodes],
        "updates": [{"path": p, "value": ref(v)} for p, v in graph.updates],
        "outputs": outputs,
        "out_tree": None if graph.out_tree is None else format_tree(graph.out_tree, [namer.ref(v) for v in graph.outputs]),
    }
    return json.dumps(doc, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


# -- decoding --------------------------------------------------------------------------

def _unfloat(x, where: str):
    if isinstance(x, dict):
        if set(x) != {"float"} or x["float"] not in ("nan", "inf", "-inf"):
            raise IRJsonError(f"{where}: expected a number, got {x!r}")
        return float(x["float"])
    return x


def decode_attr(x, where: str = "attr"):
    """The attribute value of its JSON form (inverse of ``encode_attr``)."""
    if x is None or isinstance(x, (bool, str, int, float)):
        return x
    if isinstance(x, list):
        return tuple(decode_attr(y, f"{where}[{i}]") for i, y in enumerate(x))
    if isinstance(x, dict):
        keys = set(x)
        if keys == {"float"}:
            return _unfloat(x, where)
        if keys == {"dtype"}:
            return DType(x["dtype"])
        if keys == {"dim"}:
            return SymDim(x["dim"])
        if keys == {"enum", "member"}:
            return EnumVal(x["enum"], x["member"])
        if keys == {"record", "fields"}:
            return Record(x["record"], tuple((k, decode_attr(v, f"{where}.{k}")) for k, v in x["fields"]))
    raise IRJsonError(f"{where}: not an attribute value: {x!r}")


class _Reader:
    def __init__(self):
        self.values: dict[str, Value] = {}

    def type(self, x, where: str) -> TensorType:
        try:
            return TensorType(tuple(x["shape"]), x["dtype"])
        except (KeyError, TypeError):
            raise IRJsonError(f"{where}: expected a type {{\"dtype\": ..., \"shape\": [...]}}, got {x!r}") from None

    def scalar_array(self, items, t: TensorType, where: str):
        flat = []
        for i, x in enumerate(items):
            if isinstance(x, dict) and "complex" in x:
                flat.append(complex(_unfloat(x["complex"][0], where), _unfloat(x["complex"][1], where)))
            else:
                flat.append(_unfloat(x, f"{where}[{i}]"))
        return np.asarray(flat, dtype=to_dtype(t.dtype))

    def define(self, name: str, v: Value, where: str) -> Value:
        if name in self.values:
            raise IRJsonError(f"{where}: value {name!r} is defined twice")
        self.values[name] = v
        return v

    def ref(self, x, where: str) -> Value:
        if isinstance(x, str):
            v = self.values.get(x)
            if v is None:
                raise IRJsonError(f"{where}: undefined value {x!r}")
            return v
        if isinstance(x, dict) and set(x) == {"value", "dtype"}:
            t = TensorType((), x["dtype"])
            return Value(t, data=self.scalar_array([x["value"]], t, where).reshape(()))
        raise IRJsonError(f"{where}: expected a value name or an inline constant, got {x!r}")

    def node(self, x: dict, where: str) -> Node:
        ins = [self.ref(v, f"{where}.inputs[{i}]") for i, v in enumerate(x.get("inputs", []))]
        outs = x.get("outputs", [])
        attrs = {k: decode_attr(v, f"{where}.attrs.{k}") for k, v in x.get("attrs", {}).items()}
        node = Node(x["op"], ins, [self.type(o["type"], f"{where}.outputs[{i}]") for i, o in enumerate(outs)],
                    attrs, path=x.get("path", ""), loc=x.get("loc"))
        for i, (o, v) in enumerate(zip(outs, node.outputs)):
            self.define(o["id"], v, f"{where}.outputs[{i}]")
        for r, reg in enumerate(x.get("regions", [])):
            at = f"{where}.regions[{r}]"
            args = [self.define(a["id"], Value(self.type(a["type"], at)), f"{at}.args[{i}]")
                    for i, a in enumerate(reg.get("args", []))]
            nodes = [self.node(n, f"{at}.nodes[{i}]") for i, n in enumerate(reg.get("nodes", []))]
            results = [self.ref(v, f"{at}.results[{i}]") for i, v in enumerate(reg.get("results", []))]
            node.regions.append(Region(args, nodes, results))
        return node


def from_json(text: str) -> Graph:
    """The Graph of a JSON form made by ``to_json``; IRJsonError names a malformed place."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRJsonError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise IRJsonError(f"not an nnxc IR document (expected \"schema\": \"{SCHEMA}\")")
    if doc.get("version") != VERSION:
        raise IRJsonError(f"IR JSON version {doc.get('version')!r} is not supported (this nnxc reads {VERSION})")
    r = _Reader()
    g = Graph(doc["name"])
    try:
        for i, x in enumerate(doc.get("inputs", [])):
            g.inputs.append(r.define(x["id"], Value(r.type(x["type"], f"inputs[{i}]"), x.get("name")), f"inputs[{i}]"))
        for i, x in enumerate(doc.get("variables", [])):
            v = r.define(x["id"], Value(r.type(x["type"], f"variables[{i}]"), x["id"]), f"variables[{i}]")
            meta = {k: decode_attr(m, f"variables[{i}].meta.{k}") for k, m in x.get("meta", {}).items()}
            g.variables.append(Variable(v, x["path"], x["kind"], meta))
        for i, x in enumerate(doc.get("consts", [])):
            t = r.type(x["type"], f"consts[{i}]")
            data = Elided(x["digest"]) if "digest" in x else r.scalar_array(x["data"], t, f"consts[{i}]").reshape(t.shape)
            g.consts.append(r.define(x["id"], Value(t, x["id"], data=data), f"consts[{i}]"))
        g.nodes = [r.node(x, f"nodes[{i}]") for i, x in enumerate(doc.get("nodes", []))]
        for i, x in enumerate(doc.get("updates", [])):
            g.updates.append((x["path"], r.ref(x["value"], f"updates[{i}]")))
        g.outputs = [r.ref(x, f"outputs[{i}]") for i, x in enumerate(doc.get("outputs", []))]
    except (KeyError, TypeError) as e:
        raise IRJsonError(f"malformed IR JSON: missing or bad field {e}") from None
    if doc.get("out_tree") is not None:
        g.outputs, g.out_tree = _parse_tree(doc["out_tree"], r.values)
    return g


def _parse_tree(text: str, values: dict[str, Value]):
    from .parser import IRParseError, _Cursor, _Parser
    p = _Parser("")
    p.scopes = [values]
    cur = _Cursor(text, 1)
    try:
        outputs, tree = p.out_tree(cur)
        cur.end()
    except IRParseError as e:
        raise IRJsonError(f"out_tree: {e}") from None
    return outputs, tree
