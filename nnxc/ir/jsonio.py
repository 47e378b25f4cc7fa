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
import re
from typing import Any

import numpy as np

from ..errors import NnxcError, VerifyError
from .attrs import DType, EnumVal, Record, SymDim, format_float
from .graph import Elided, Graph, Node, Region, Value, Variable
from .parser import _MAX_DIGITS, MAX_DIM, MAX_NESTING, dim_expression, scalar_array
from .printer import DENSE_LIMIT, _Namer, format_tree, is_inline_const, prints_full_constants
from .types import DTYPE_NAMES, DimError, TensorType
from .verify import verify

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
#
# The document is checked as it is read, field by field, against the schema above and
# against what the text form can say, so that every graph ``from_json`` returns prints,
# parses back to the same text, and passes ``verify(graph, check_types=False)``. An
# IRJsonError names the place (``nodes[3].attrs.axes[1]``) and what is wrong there.

_MISSING = object()
_OP = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # op and graph names
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # attribute names, Variable types, enum parts
_RESERVED_WORDS = frozenset({"None", "True", "False"})
_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer",
          float: "a number", bool: "true or false", type(None): "null"}


def _bad(where: str, why: str):
    raise IRJsonError(f"{where or 'the document'}: {why}")


def _show(x) -> str:
    try:
        text = json.dumps(x, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        text = f"a {type(x).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _get(obj, key: str, where: str, types, default=_MISSING):
    """``obj[key]`` checked to be one of ``types`` (bool is not an int here)."""
    if not isinstance(obj, dict):
        _bad(where, f"expected an object, got {_show(obj)}")
    if key not in obj:
        if default is _MISSING:
            _bad(where, f"missing field {key!r}")
        return default
    x = obj[key]
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(x, types) or (isinstance(x, bool) and bool not in types):
        kinds = " or ".join(_KINDS.get(t, t.__name__) for t in types)
        _bad(f"{where}.{key}" if where else key, f"expected {kinds}, got {_show(x)}")
    return x


_FIELDS = {  # the fields of each kind of object
    "document": {"schema", "version", "name", "inputs", "variables", "consts", "nodes",
                 "updates", "outputs", "out_tree"},
    "input": {"id", "name", "type"}, "variable": {"id", "path", "kind", "type", "meta"},
    "const": {"id", "type", "data", "digest"}, "value": {"id", "type"},
    "node": {"op", "inputs", "outputs", "attrs", "path", "loc", "regions"},
    "region": {"args", "nodes", "results"}, "update": {"path", "value"},
}


def _fields(obj, kind: str, where: str) -> dict:
    """``obj``, checked to be an object with no field a ``kind`` object does not have."""
    if not isinstance(obj, dict):
        _bad(where, f"expected an object, got {_show(obj)}")
    unknown = sorted(set(obj) - _FIELDS[kind])
    if unknown:
        _bad(where, f"unknown field {unknown[0]!r} in {'an' if kind[0] in 'aeiou' else 'a'} "
                    f"{kind} (fields: {', '.join(sorted(_FIELDS[kind]))})")
    return obj


def _each(obj, key: str, where: str) -> list:
    """(place, item) for each item of the list ``obj[key]`` (none when it is left out)."""
    prefix = f"{where}.{key}" if where else key
    return [(f"{prefix}[{i}]", x) for i, x in enumerate(_get(obj, key, where, list, []))]


def _text(x, pattern: re.Pattern, where: str, what: str) -> str:
    if not isinstance(x, str) or not pattern.fullmatch(x):
        _bad(where, f"expected {what}, got {_show(x)}")
    return x


def _dim(d, where: str):
    if isinstance(d, str):
        d = _dim_expr(d, where)
    elif isinstance(d, bool) or not isinstance(d, int):
        _bad(where, f"expected an integer or a dim expression, got {_show(d)}")
    if isinstance(d, int) and not 0 <= d <= MAX_DIM:
        _bad(where, f"dim {_show(d)} is not a size (0 .. 2**63-1)")
    return d


def _dim_expr(text: str, where: str):
    """The canonical form of the dim expression ``text``."""
    try:
        return dim_expression(text)
    except DimError as e:
        _bad(where, f"bad dim {_show(text)}: {e.msg}")


def _dtype(x, where: str) -> str:
    if not isinstance(x, str) or x not in DTYPE_NAMES:
        _bad(where, f"unknown dtype {_show(x)}")
    return x


def _unfloat(x, where: str):
    """A JSON scalar as Python: ``{"float": "nan"}`` -> nan, a number as itself."""
    if isinstance(x, dict):
        if set(x) != {"float"} or x["float"] not in ("nan", "inf", "-inf"):
            _bad(where, f"expected a number, got {_show(x)}")
        return float(x["float"])
    if isinstance(x, int) and not isinstance(x, bool) and len(str(abs(x))) > _MAX_DIGITS:
        _bad(where, f"integer with {len(str(abs(x)))} digits: no dtype holds it")
    return x


def decode_attr(x, where: str = "attr", depth: int = 0):
    """The attribute value of its JSON form (inverse of ``encode_attr``); refuses what the
    text form could not print and parse back."""
    if depth > MAX_NESTING:
        _bad(where, f"attribute nests deeper than {MAX_NESTING} levels")
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)):
        return _unfloat(x, where)
    if isinstance(x, list):
        return tuple(decode_attr(y, f"{where}[{i}]", depth + 1) for i, y in enumerate(x))
    if isinstance(x, dict):
        keys = set(x)
        if keys == {"float"}:
            return _unfloat(x, where)
        if keys == {"dtype"}:
            return DType(_dtype(x["dtype"], f"{where}.dtype"))
        if keys == {"dim"}:
            return SymDim(_sym_dim(x["dim"], f"{where}.dim"))
        if keys == {"enum", "member"}:
            return EnumVal(_class_name(x["enum"], f"{where}.enum"),
                           _text(x["member"], _IDENT, f"{where}.member", "an identifier"))
        if keys == {"record", "fields"}:
            return Record(_class_name(x["record"], f"{where}.record"),
                          _record_fields(x["fields"], f"{where}.fields", depth))
    _bad(where, f"not an attribute value: {_show(x)}")


def _sym_dim(expr, where: str) -> str:
    if not isinstance(expr, str):
        _bad(where, f"expected a dim expression, got {_show(expr)}")
    _dim_expr(expr, where)
    return expr


def _class_name(x, where: str) -> str:
    """An enum or record class name: an identifier the text form does not read otherwise."""
    name = _text(x, _IDENT, where, "an identifier")
    if name in _RESERVED_WORDS or name == "dim":
        _bad(where, f"{name!r} cannot name a class (the text form reads it as something else)")
    return name


def _record_fields(fields, where: str, depth: int) -> tuple:
    if not isinstance(fields, list):
        _bad(where, f"expected a list of [name, value] pairs, got {_show(fields)}")
    out = []
    for i, f in enumerate(fields):
        if not (isinstance(f, list) and len(f) == 2):
            _bad(f"{where}[{i}]", f"expected [name, value], got {_show(f)}")
        name = _text(f[0], _IDENT, f"{where}[{i}][0]", "a field name")
        out.append((name, decode_attr(f[1], f"{where}.{name}", depth + 1)))
    return tuple(out)


def _attrs(x, where: str) -> dict:
    if not isinstance(x, dict):
        _bad(where, f"expected an object, got {_show(x)}")
    return {_text(k, _IDENT, f"{where}.{k}", "an attribute name"): decode_attr(v, f"{where}.{k}")
            for k, v in x.items()}


def _scalars(items, dtype: str, where: str) -> np.ndarray:
    """A list of JSON scalars as an array of ``dtype`` (ValueError names a bad one)."""
    flat = []
    for i, x in enumerate(items):
        if isinstance(x, dict) and "complex" in x:
            c = x["complex"]
            if set(x) != {"complex"} or not (isinstance(c, list) and len(c) == 2) or \
                    any(isinstance(p, bool) or not isinstance(p, (int, float, dict)) for p in c):
                _bad(f"{where}[{i}]", f"expected {{\"complex\": [re, im]}}, got {_show(x)}")
            flat.append(complex(_unfloat(c[0], f"{where}[{i}]"), _unfloat(c[1], f"{where}[{i}]")))
        elif isinstance(x, (bool, int, float, dict)):
            flat.append(_unfloat(x, f"{where}[{i}]"))
        else:
            _bad(f"{where}[{i}]", f"expected a number or a bool, got {_show(x)}")
    try:
        return scalar_array(flat, dtype)
    except ValueError as e:
        _bad(where, f"bad constant: {e}")


class _Reader:
    def __init__(self):
        self.values: dict[str, Value] = {}
        self.depth = 0  # nesting of regions

    def type(self, x, where: str) -> TensorType:
        if not isinstance(x, dict) or set(x) != {"dtype", "shape"}:
            _bad(where, f"expected a type {{\"dtype\": ..., \"shape\": [...]}}, got {_show(x)}")
        dtype = _dtype(x["dtype"], f"{where}.dtype")
        shape = _get(x, "shape", where, list)
        return TensorType(tuple(_dim(d, f"{where}.shape[{i}]") for i, d in enumerate(shape)), dtype)

    def define(self, x, where: str, make, kind: str = "value") -> Value:
        """The value ``make(type)`` for the definition ``{"id": ..., "type": ...}``."""
        name = _get(_fields(x, kind, where), "id", where, str)
        if name in self.values:
            _bad(f"{where}.id", f"value {name!r} is defined twice")
        v = make(self.type(_get(x, "type", where, dict), f"{where}.type"))
        self.values[name] = v
        return v

    def ref(self, x, where: str) -> Value:
        if isinstance(x, str):
            v = self.values.get(x)
            if v is None:
                _bad(where, f"undefined value {x if len(x) <= 60 else x[:57] + '...'!r}")
            return v
        if isinstance(x, dict) and set(x) == {"value", "dtype"}:
            dtype = _dtype(x["dtype"], f"{where}.dtype")
            return Value(TensorType((), dtype),
                         data=_scalars([x["value"]], dtype, f"{where}.value").reshape(()))
        _bad(where, f"expected a value name or an inline constant, got {_show(x)}")

    def node(self, x, where: str) -> Node:
        _fields(x, "node", where)
        op = _text(_get(x, "op", where, str), _OP, f"{where}.op", "an op name")
        ins = [self.ref(v, at) for at, v in _each(x, "inputs", where)]
        attrs = _attrs(_get(x, "attrs", where, dict, {}), f"{where}.attrs")
        path = _get(x, "path", where, str, "")
        if path and re.search(r"\s", path):
            _bad(f"{where}.path", f"a module path has no whitespace, got {_show(path)}")
        loc = _get(x, "loc", where, (str, type(None)), None)
        outs = _each(x, "outputs", where)
        types = [self.type(_get(_fields(o, "value", at), "type", at, dict), f"{at}.type")
                 for at, o in outs]
        node = Node(op, ins, types, attrs, path=path, loc=loc)
        for (at, o), v in zip(outs, node.outputs):
            self.name(o, v, at)  # after the inputs: no node reads its own output
        regions = _each(x, "regions", where)
        if regions:
            self.depth += 1
            if self.depth > MAX_NESTING:
                _bad(f"{where}.regions", f"regions nest deeper than {MAX_NESTING} levels")
            node.regions = [self.region(r, at) for at, r in regions]
            self.depth -= 1
        return node

    def name(self, x, v: Value, where: str) -> None:
        name = _get(x, "id", where, str)
        if name in self.values:
            _bad(f"{where}.id", f"value {name!r} is defined twice")
        self.values[name] = v

    def region(self, x, where: str) -> Region:
        _fields(x, "region", where)
        args = [self.define(a, at, Value) for at, a in _each(x, "args", where)]
        nodes = [self.node(n, at) for at, n in _each(x, "nodes", where)]
        results = [self.ref(v, at) for at, v in _each(x, "results", where)]
        return Region(args, nodes, results)

    def variable(self, x, where: str) -> Variable:
        _fields(x, "variable", where)
        path = _get(x, "path", where, str)
        kind = _text(_get(x, "kind", where, str), _IDENT, f"{where}.kind", "a Variable type name")
        meta = _attrs(_get(x, "meta", where, dict, {}), f"{where}.meta")
        v = self.define(x, where, lambda t: Value(t, x["id"]), "variable")
        return Variable(v, path, kind, meta)

    def const(self, x, where: str) -> Value:
        if "digest" in _fields(x, "const", where) and "data" in x:
            _bad(where, "a constant has either data or a digest, not both")

        def make(t: TensorType) -> Value:
            if "digest" in x:
                data = Elided(_text(x["digest"], re.compile(r"[0-9a-f]+"), f"{where}.digest",
                                    "a hex digest"))
            else:
                items = _get(x, "data", where, list)
                if not t.is_static or len(items) != math.prod(t.shape):
                    _bad(f"{where}.data", f"{len(items)} values for type {t}")
                data = _scalars(items, t.dtype, f"{where}.data").reshape(t.shape)
            return Value(t, x["id"], data=data)
        return self.define(x, where, make, "const")


def _doc(text: str) -> dict:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRJsonError(f"not JSON: {e}") from None
    except RecursionError:
        raise IRJsonError("not JSON nnxc can read: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise IRJsonError(f"not JSON nnxc can read: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise IRJsonError(f"not an nnxc IR document (expected \"schema\": \"{SCHEMA}\")")
    if doc.get("version") != VERSION:
        raise IRJsonError(f"IR JSON version {_show(doc.get('version'))} is not supported "
                          f"(this nnxc reads {VERSION})")
    return doc


def from_json(text: str) -> Graph:
    """The Graph of a JSON form made by ``to_json``; IRJsonError names a malformed place.

    What it returns prints, parses back to the same text, and passes
    ``verify(graph, check_types=False)``; ``verify(graph)`` then checks the op types."""
    doc = _fields(_doc(text), "document", "")
    r = _Reader()
    g = Graph(_text(_get(doc, "name", "", str), _OP, "name", "a graph name"))
    for at, x in _each(doc, "inputs", ""):
        name = _get(x, "name", at, (str, type(None)), None)
        g.inputs.append(r.define(x, at, lambda t, name=name: Value(t, name), "input"))
    g.variables = [r.variable(x, at) for at, x in _each(doc, "variables", "")]
    g.consts = [r.const(x, at) for at, x in _each(doc, "consts", "")]
    g.nodes = [r.node(x, at) for at, x in _each(doc, "nodes", "")]
    for at, x in _each(doc, "updates", ""):
        path = _get(_fields(x, "update", at), "path", at, str)
        g.updates.append((path, r.ref(_get(x, "value", at, (str, dict)), f"{at}.value")))
    g.outputs = [r.ref(x, at) for at, x in _each(doc, "outputs", "")]
    tree = _get(doc, "out_tree", "", (str, type(None)), None)
    if tree is not None:
        outputs, g.out_tree = _parse_tree(tree, r.values)
        if len(outputs) != len(g.outputs) or not all(map(_same_operand, outputs, g.outputs)):
            _bad("out_tree", "names other values than \"outputs\"")
        g.outputs = outputs
    _check_names(g)
    try:
        verify(g, check_types=False)
    except VerifyError as e:
        raise IRJsonError(f"malformed graph: {e}") from None
    return g


def _same_operand(a: Value, b: Value) -> bool:
    """The same value, or inline constants of the same type and bits."""
    if a is b:
        return True
    return is_inline_const(a) and is_inline_const(b) and a.type == b.type and \
        np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes()


def _check_names(g: Graph) -> None:
    """Inputs and variables print under names (``%x``, ``%l1.kernel``) that must differ."""
    names = value_names(g).names
    seen: dict[str, str] = {}
    places = [(f"inputs[{i}]", v) for i, v in enumerate(g.inputs)] + \
        [(f"variables[{i}]", var.value) for i, var in enumerate(g.variables)]
    for where, v in places:
        name = names[id(v)]
        if name in seen:
            _bad(where, f"prints as %{name}, the name of {seen[name]} too")
        seen[name] = where


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
