"""Parse the text form back into a Graph: ``print(parse(text)) == text``."""
from __future__ import annotations

import math
import os
import re
import stat

import jax
import numpy as np

from ..errors import NnxcError
from .attrs import DType, EnumVal, Record, SymDim, format_attr
from .graph import Elided, Graph, Node, Region, Value, Variable, content_hash
from .types import DTYPE_NAMES, DimError, TensorType, canonical_dim, to_dtype


class IRParseError(NnxcError, ValueError):
    """Malformed IR text; ``line`` and ``col`` are 1-based."""

    def __init__(self, msg: str, line: int, col: int, text: str = ""):
        self.msg, self.line, self.col = msg, line, col
        where = f"line {line}, col {col}: {msg}"
        if text:
            shown, caret = _excerpt(text, col)
            where += f"\n  {shown}\n  {' ' * caret}^"
        super().__init__(where)


def _excerpt(text: str, col: int, width: int = 100) -> tuple[str, int]:
    """(at most ``width`` characters of ``text`` around column ``col``, the caret's offset)."""
    if len(text) <= width:
        return text, col - 1
    start = max(0, min(col - 1 - width // 2, len(text) - width))
    shown = ("..." if start else "") + text[start:start + width] + \
        ("..." if start + width < len(text) else "")
    return shown, col - 1 - start + (3 if start else 0)


class ElidedConstantError(NnxcError, ValueError):
    """A graph whose constant is ``elided<hash>`` (IR text holds its hash, not its data) was
    asked to run or export."""

    @classmethod
    def of(cls, v: Value, more: int = 0) -> "ElidedConstantError":
        name = f"%{v.name} " if v.name else ""
        others = f" (and {more} more)" if more else ""
        return cls(
            f"constant {name}({v.type}){others} was elided in the IR text: the text has its "
            f"hash (elided<{v.data.digest}>), not its data, so the graph cannot run. Print the "
            "graph with its constants -- nnxc.ir.print_graph(graph, full_constants=True), or "
            "the --full-constants flag of `nnxc ir` / --dump-ir -- or write the text with a "
            "sidecar (nnxc.ir.printer.write_text(graph, path, sidecar=True)) and parse it with "
            "nnxc.ir.parse(text, sidecar=path + '.safetensors')")


def elided_constants(graph: Graph) -> list[Value]:
    """The graph's constants that have no data (``elided<hash>`` in the text it came from)."""
    return [c for c in graph.consts if isinstance(c.data, Elided)]


def require_constant_data(graph: Graph) -> None:
    """Raise ElidedConstantError when a constant of ``graph`` has no data."""
    missing = elided_constants(graph)
    if missing:
        raise ElidedConstantError.of(missing[0], len(missing) - 1)


_NAME = re.compile(r"%([A-Za-z0-9_.\-]+)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER = re.compile(r"-?(inf|nan|[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?)")  # ASCII digits only
MAX_NESTING = 100  # regions, attribute tuples and output trees nest at most this deep
MAX_DIM = 2 ** 63 - 1  # dims are int64 in XLA and ONNX
_MAX_DIGITS = 400  # longer integers are no dim and no value of any dtype


def scalar_array(values: list, dtype: str) -> np.ndarray:
    """The values (Python bools, ints, floats, complexes) as an array of the IR dtype
    ``dtype``; ValueError says which value does not fit it (a float for an integer type,
    an integer out of range, a finite value that overflows a float type, ...)."""
    if dtype.startswith("key<") or dtype == "float0":
        raise ValueError(f"{dtype} constants cannot be written as values")
    want = to_dtype(dtype)
    for x in values:
        _check_scalar(x, dtype, want)
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=want)


def _check_scalar(x, dtype: str, want) -> None:
    if dtype == "bool":
        if not isinstance(x, bool):
            raise ValueError(f"{_show(x)} is not a bool (True or False)")
        return
    if isinstance(x, bool):
        raise ValueError(f"{x} is not a {dtype} value")
    if dtype.startswith(("i", "u")):
        if not isinstance(x, int):
            raise ValueError(f"{_show(x)} is not an integer ({dtype})")
        info = np.iinfo(want)
        if not info.min <= x <= info.max:
            raise ValueError(f"{_show(x)} is out of the range of {dtype} [{info.min}, {info.max}]")
        return
    parts = (x.real, x.imag) if isinstance(x, complex) else (x,)
    if isinstance(x, complex) and not dtype.startswith("c"):
        raise ValueError(f"{x} is complex, not a {dtype} value")
    part_dtype = np.float64 if dtype == "c128" else np.float32 if dtype == "c64" else want
    for part in parts:
        try:
            f = float(part)
        except OverflowError:
            raise ValueError(f"{_show(part)} overflows {dtype}") from None
        with np.errstate(over="ignore"):
            if math.isfinite(f) and not np.isfinite(np.asarray(f, dtype=part_dtype)):
                raise ValueError(f"{_show(part)} overflows {dtype}")


def dim_expression(text: str):
    """The canonical form of the dim expression ``text``; DimError (with the column) when
    it is malformed, nests deeper than MAX_NESTING or holds an integer no dim can be."""
    if paren_depth(text) > MAX_NESTING:
        raise DimError(f"nests deeper than {MAX_NESTING} levels", text, 1)
    big = re.search(r"[0-9]{20,}", text)
    if big:
        raise DimError(f"an integer of {len(big.group())} digits", text, big.start() + 1)
    try:
        return canonical_dim(text)
    except RecursionError:
        raise DimError("nested too deeply", text, 1) from None


def paren_depth(text: str) -> int:
    """How deep the parentheses of ``text`` nest."""
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def _show(x) -> str:
    """A value for a message, long ones cut short."""
    text = str(x)
    return text if len(text) <= 40 else text[:37] + "..."


_DTYPE = re.compile(r"key<[a-z]+>|[a-z][a-z0-9]*")


class _Record:
    """An output-tree node of a class the parser cannot import: keeps its name and fields."""

    _nnxc_record = True

    def __init__(self, cls: str, items: list):
        self.cls, self.items = cls, items


jax.tree_util.register_pytree_node(
    _Record,
    lambda r: ([v for _, v in r.items], (r.cls, tuple(k for k, _ in r.items))),
    lambda aux, children: _Record(aux[0], list(zip(aux[1], children))),
)


class _Leaf:
    def __init__(self, value):
        self.value = value


class _Cursor:
    def __init__(self, text: str, lineno: int):
        self.text, self.lineno, self.pos = text, lineno, 0

    def error(self, msg: str, pos: int | None = None):
        col = (self.pos if pos is None else pos) + 1
        raise IRParseError(msg, self.lineno, col, self.text)

    def ws(self):
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str):
        if not self.accept(s):
            found = self.text[self.pos:self.pos + 12] or "end of line"
            self.error(f"expected {s!r}, found {found!r}")

    def match(self, pattern: re.Pattern, what: str) -> str:
        self.ws()
        m = pattern.match(self.text, self.pos)
        if not m:
            self.error(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def at_end(self) -> bool:
        self.ws()
        return self.pos >= len(self.text)

    def end(self):
        if not self.at_end():
            self.error(f"unexpected {self.text[self.pos:self.pos + 12]!r}")


def _show_token(tok: str) -> str:
    return repr(tok if len(tok) <= 40 else tok[:37] + "...")


class _Nesting:
    """One level of nesting (see ``_Parser.nested``)."""

    def __init__(self, parser: "_Parser", cur: _Cursor):
        self.parser, self.cur = parser, cur

    def __enter__(self):
        self.parser.depth += 1
        if self.parser.depth > MAX_NESTING:
            self.cur.error(f"nesting deeper than {MAX_NESTING} levels")

    def __exit__(self, *exc):
        self.parser.depth -= 1


class _Parser:
    def __init__(self, text: str, sidecar=None):
        self.lines = text.split("\n")
        self.i = 0
        self.depth = 0  # nesting of regions, attribute tuples and output trees
        self.scopes: list[dict[str, Value]] = [{}]
        self.sidecar = sidecar  # hash -> array (a Mapping, or a _Sidecar file)

    # -- values ----------------------------------------------------------------
    def define(self, cur: _Cursor, name: str, v: Value, pos: int):
        if any(name in s for s in self.scopes):
            cur.error(f"value %{name} is defined twice", pos)
        self.scopes[-1][name] = v

    def lookup(self, cur: _Cursor, name: str, pos: int) -> Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        cur.error(f"undefined value %{name}", pos)

    def line(self) -> _Cursor:
        while self.i < len(self.lines) and not self.lines[self.i].strip():
            self.i += 1
        if self.i >= len(self.lines):
            raise IRParseError("unexpected end of input", len(self.lines), 1)
        cur = _Cursor(self.lines[self.i], self.i + 1)
        self.i += 1
        return cur

    # -- types -----------------------------------------------------------------
    def type(self, cur: _Cursor) -> TensorType:
        cur.ws()
        start = cur.pos
        dtype = cur.match(_DTYPE, "a dtype")
        if dtype not in DTYPE_NAMES:
            cur.error(f"unknown dtype {dtype!r}", start)
        cur.expect("[")
        dims = []
        if not cur.accept("]"):
            while True:
                dims.append(self.dim(cur))
                if cur.accept("]"):
                    break
                cur.expect(",")
        return TensorType(tuple(dims), dtype)

    def dim(self, cur: _Cursor):
        """One dim: an integer or an expression (commas inside parentheses belong to it)."""
        cur.ws()
        start = j = cur.pos
        depth = 0
        while j < len(cur.text) and (depth or cur.text[j] not in ",]"):
            depth += {"(": 1, ")": -1}.get(cur.text[j], 0)
            if depth < 0:
                break
            j += 1
        tok = cur.text[start:j].strip()
        if not tok:
            cur.error("expected a dim (an integer or a symbolic expression) then ',' or ']'")
        if re.fullmatch(r"-?[0-9]+", tok):
            if tok.startswith("-") or len(tok) > 19 or int(tok) > MAX_DIM:
                cur.error(f"dim {_show_token(tok)} is not a size (0 .. 2**63-1)", start)
            cur.pos = j
            return int(tok)
        d = self.dim_expr(cur, tok, start)
        if isinstance(d, int) and not 0 <= d <= MAX_DIM:
            cur.error(f"dim {_show_token(tok)} = {d} is not a size (0 .. 2**63-1)", start)
        cur.pos = j
        return d

    def dim_expr(self, cur: _Cursor, tok: str, start: int):
        """The canonical form of the dim expression ``tok`` (at column ``start`` + 1)."""
        try:
            return dim_expression(tok)
        except DimError as e:
            cur.error(f"bad dim {_show_token(tok)}: {e.msg}", start + (e.col or 1) - 1)

    def typed_name(self, cur: _Cursor) -> tuple[str, int, TensorType]:
        cur.ws()
        pos = cur.pos
        name = cur.match(_NAME, "a value name like %x")[1:]
        cur.expect(":")
        return name, pos, self.type(cur)

    # -- literals --------------------------------------------------------------
    def scalar(self, cur: _Cursor):
        if cur.accept("True"):
            return True
        if cur.accept("False"):
            return False
        if cur.accept("("):
            re_ = self.number(cur)
            cur.expect(",")
            im = self.number(cur)
            cur.expect(")")
            return complex(re_, im)
        return self.number(cur)

    def number(self, cur: _Cursor):
        start = cur.pos
        tok = cur.match(_NUMBER, "a number")
        if re.fullmatch(r"-?[0-9]+", tok):
            if len(tok) > _MAX_DIGITS:
                cur.error(f"integer {_show_token(tok)} has {len(tok)} digits: no dtype holds it",
                          start)
            return int(tok)
        return float(tok)

    def attr(self, cur: _Cursor):
        cur.ws()
        c = cur.text[cur.pos:cur.pos + 1]
        if c == '"':
            return self.string(cur)
        if c == "(":
            cur.pos += 1
            with self.nested(cur):
                return self.attr_tuple(cur)
        if c == "-" or c.isdigit() or cur.peek("inf") or cur.peek("nan"):
            return self.number(cur)
        start = cur.pos
        ident = cur.match(_IDENT, "an attribute value")
        if ident == "None":
            return None
        if ident in ("True", "False"):
            return ident == "True"
        if ident == "dim" and cur.peek("("):
            cur.expect("(")
            j = cur.text.find(")", cur.pos)
            depth, j = 1, cur.pos
            while j < len(cur.text) and depth:
                depth += {"(": 1, ")": -1}.get(cur.text[j], 0)
                j += 1
            if depth:
                cur.error("unclosed dim(")
            expr = cur.text[cur.pos:j - 1]
            self.dim_expr(cur, expr, cur.pos)
            cur.pos = j
            return SymDim(expr)
        if ident == "key" and cur.peek("<"):
            cur.pos = start
            return DType(cur.match(_DTYPE, "a dtype"))
        if cur.text.startswith(".", cur.pos):
            cur.pos += 1
            return EnumVal(ident, cur.match(_IDENT, "an enum member"))
        if cur.text.startswith("(", cur.pos):
            cur.pos += 1
            fields = []
            with self.nested(cur):
                if not cur.accept(")"):
                    while True:
                        key = cur.match(_IDENT, "a field name")
                        cur.expect("=")
                        fields.append((key, self.attr(cur)))
                        if cur.accept(")"):
                            break
                        cur.expect(",")
            return Record(ident, tuple(fields))
        if ident in DTYPE_NAMES:
            return DType(ident)
        return SymDim(ident)

    def attr_tuple(self, cur: _Cursor) -> tuple:
        items = []
        if cur.accept(")"):
            return ()
        while True:
            items.append(self.attr(cur))
            if cur.accept(")"):
                return tuple(items)
            cur.expect(",")
            if cur.accept(")"):
                return tuple(items)

    def nested(self, cur: _Cursor) -> "_Nesting":
        """``with self.nested(cur):`` around a nested structure; refuses MAX_NESTING+1 levels."""
        return _Nesting(self, cur)

    def string(self, cur: _Cursor) -> str:
        cur.expect('"')
        out = []
        while True:
            if cur.pos >= len(cur.text):
                cur.error("unterminated string")
            ch = cur.text[cur.pos]
            cur.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\\":
                nxt = cur.text[cur.pos:cur.pos + 1]
                cur.pos += 1
                out.append("\n" if nxt == "n" else nxt)
            else:
                out.append(ch)

    def attr_dict(self, cur: _Cursor) -> dict:
        out = {}
        cur.expect("{")
        if cur.accept("}"):
            return out
        while True:
            cur.ws()
            pos = cur.pos
            key = cur.match(_IDENT, "an attribute name")
            if key in out:
                cur.error(f"attribute {key!r} is given twice", pos)
            cur.expect("=")
            out[key] = self.attr(cur)
            if cur.accept("}"):
                return out
            cur.expect(",")

    def operand(self, cur: _Cursor) -> Value:
        cur.ws()
        pos = cur.pos
        if cur.peek("%"):
            return self.lookup(cur, cur.match(_NAME, "a value")[1:], pos)
        x = self.scalar(cur)
        cur.expect(":")
        start = cur.pos
        dtype = cur.match(_DTYPE, "a dtype")
        if dtype not in DTYPE_NAMES:
            cur.error(f"unknown dtype {dtype!r}", start)
        try:
            data = scalar_array([x], dtype).reshape(())
        except ValueError as e:
            cur.error(f"bad constant: {e}", pos)
        return Value(TensorType((), dtype), data=data)

    # -- graph -----------------------------------------------------------------
    def graph(self) -> Graph:
        cur = self.line()
        cur.expect("graph")
        cur.expect("@")
        g = Graph(cur.match(_OPNAME, "a graph name"))
        cur.expect("(")
        if not cur.accept(")"):
            while True:
                name, pos, t = self.typed_name(cur)
                v = Value(t, name)
                self.define(cur, name, v, pos)
                g.inputs.append(v)
                if cur.accept(")"):
                    break
                cur.expect(",")
        cur.expect("{")
        cur.end()
        while True:
            cur = self.line()
            cur.ws()
            if cur.accept("var "):
                name, pos, t = self.typed_name(cur)
                kind = cur.match(_IDENT, "a Variable type")
                meta = self.attr_dict(cur) if cur.peek("{") else {}
                cur.end()
                v = Value(t, name)
                self.define(cur, name, v, pos)
                g.variables.append(Variable(v, name, kind, meta))
            elif cur.accept("const "):
                name, pos, t = self.typed_name(cur)
                cur.expect("=")
                v = Value(t, name, data=self.const_data(cur, t))
                cur.end()
                self.define(cur, name, v, pos)
                g.consts.append(v)
            elif cur.accept("update "):
                pos = cur.pos
                name = cur.match(_NAME, "a variable")[1:]
                var = next((x for x in g.variables if x.value.name == name), None)
                if var is None:
                    cur.error(f"%{name} is not a variable", pos)
                cur.expect("=")
                g.updates.append((var.path, self.operand(cur)))
                cur.end()
            elif cur.accept("return"):
                g.outputs, g.out_tree = self.out_tree(cur)
                cur.end()
                close = self.line()
                close.expect("}")
                close.end()
                return g
            else:
                g.nodes.append(self.node(cur))

    def const_data(self, cur: _Cursor, t: TensorType):
        cur.ws()
        start = cur.pos
        if cur.accept("elided<"):
            pos = cur.pos
            digest = cur.match(re.compile(r"[0-9a-f]+"), "a hex digest")
            cur.expect(">")
            if self.sidecar is None:
                return Elided(digest)
            return self.restore(cur, digest, t, pos)
        cur.expect("dense<[")
        vals = []
        if not cur.accept("]"):
            while True:
                vals.append(self.scalar(cur))
                if cur.accept("]"):
                    break
                cur.expect(",")
        cur.expect(">")
        size = math.prod(d for d in t.shape if isinstance(d, int))
        if len(vals) != size or not t.is_static:
            cur.error(f"dense constant has {len(vals)} values for type {t}")
        try:
            return scalar_array(vals, t.dtype).reshape(t.shape)
        except ValueError as e:
            cur.error(f"bad constant: {e}", start)

    def restore(self, cur: _Cursor, digest: str, t: TensorType, pos: int):
        """The data of ``elided<digest>`` from the sidecar, checked against type and hash."""
        try:
            a = self.sidecar[digest]
        except KeyError:
            cur.error(f"elided<{digest}> is not in the sidecar", pos)
        a = np.asarray(a)
        want = to_dtype(t.dtype)
        size = math.prod(t.shape) if t.is_static else -1
        if a.dtype != want and a.dtype == np.uint8 and t.is_static:  # stored as its bytes
            if a.size == want.itemsize * size:
                a = np.ascontiguousarray(a).reshape(-1).view(want)
        if a.dtype != want or not t.is_static or a.size != size:
            cur.error(f"the sidecar holds {a.dtype}{list(a.shape)} for elided<{digest}>, "
                      f"the constant is {t}", pos)
        a = a.reshape(t.shape)
        if content_hash(a) != digest:
            cur.error(f"the sidecar's data for elided<{digest}> has another hash "
                      f"({content_hash(a)}): it belongs to other text", pos)
        return a

    def node(self, cur: _Cursor) -> Node:
        outs: list[tuple[str, int, TensorType]] = []
        if cur.peek("%"):
            while True:
                outs.append(self.typed_name(cur))
                if cur.accept("="):
                    break
                cur.expect(",")
        op = cur.match(_OPNAME, "an op name")
        cur.expect("(")
        inputs = []
        if not cur.accept(")"):
            while True:
                inputs.append(self.operand(cur))
                if cur.accept(")"):
                    break
                cur.expect(",")
        attrs = {}
        if cur.peek("{") and cur.text[cur.pos + 1:].strip():  # a lone "{" opens regions
            attrs = self.attr_dict(cur)
        path = ""
        if cur.accept("@"):
            path = cur.match(re.compile(r"[^\s]+"), "a module path")
        loc = None
        if cur.accept("loc("):
            loc = self.string(cur)
            cur.expect(")")
        node = Node(op, inputs, [t for _, _, t in outs], attrs, path=path, loc=loc)
        for (name, pos, _), v in zip(outs, node.outputs):
            self.define(cur, name, v, pos)
        if cur.accept("{"):
            cur.end()
            while True:
                node.regions.append(self.region())
                close = self.line()
                close.expect("}")
                if close.at_end():
                    break
                close.expect("{")
                close.end()
        else:
            cur.end()
        return node

    def region(self) -> Region:
        cur = self.line()
        cur.expect("^(")
        with self.nested(cur):
            return self.region_body(cur)

    def region_body(self, cur: _Cursor) -> Region:
        self.scopes.append({})
        args = []
        if not cur.accept(")"):
            while True:
                name, pos, t = self.typed_name(cur)
                v = Value(t)
                self.define(cur, name, v, pos)
                args.append(v)
                if cur.accept(")"):
                    break
                cur.expect(",")
        cur.expect(":")
        cur.end()
        region = Region(args)
        while True:
            cur = self.line()
            if cur.accept("yield"):
                if not cur.at_end():
                    while True:
                        region.results.append(self.operand(cur))
                        if cur.at_end():
                            break
                        cur.expect(",")
                break
            region.nodes.append(self.node(cur))
        self.scopes.pop()
        return region

    def out_tree(self, cur: _Cursor):
        if cur.at_end():
            return [], jax.tree_util.tree_structure(())
        start = cur.pos
        first = self.tree_expr(cur)
        if cur.at_end():
            try:
                leaves, tree = jax.tree_util.tree_flatten(
                    first, is_leaf=lambda x: isinstance(x, _Leaf))
            except (TypeError, ValueError) as e:  # e.g. dict keys that do not sort
                cur.error(f"cannot build the output tree: {e}", start)
            return [x.value for x in leaves], tree
        items = [first]
        while cur.accept(","):
            items.append(self.tree_expr(cur))
        if not all(isinstance(x, _Leaf) for x in items):
            cur.error("a flat return lists values only")
        return [x.value for x in items], None

    def tree_expr(self, cur: _Cursor):
        with self.nested(cur):
            return self.tree_node(cur)

    def tree_node(self, cur: _Cursor):
        cur.ws()
        if cur.peek("%") or _NUMBER.match(cur.text, cur.pos) or re.match(r"(True|False):", cur.text[cur.pos:]):
            return _Leaf(self.operand(cur))
        if cur.accept("None"):
            return None
        for open_, close, kind in (("(", ")", tuple), ("[", "]", list)):
            if cur.accept(open_):
                items, trailing = [], False
                while not cur.accept(close):
                    items.append(self.tree_expr(cur))
                    trailing = cur.accept(",")
                    if not trailing:
                        cur.expect(close)
                        break
                if kind is tuple and len(items) == 1 and not trailing:
                    cur.error("a 1-tuple needs a trailing comma")
                return kind(items)
        if cur.accept("{"):
            out = {}
            while not cur.accept("}"):
                cur.ws()
                pos = cur.pos
                key = self.attr(cur)
                if key in out:
                    cur.error(f"key {format_attr(key)} is given twice", pos)
                cur.expect(":")
                out[key] = self.tree_expr(cur)
                if not cur.accept(","):
                    cur.expect("}")
                    break
            return out
        cls = cur.match(_IDENT, "an output value or structure")
        cur.expect("{")
        items = []
        while not cur.accept("}"):
            key = cur.match(re.compile(r"[A-Za-z0-9_]+"), "a field name")
            cur.expect("=")
            items.append((key, self.tree_expr(cur)))
            if not cur.accept(","):
                cur.expect("}")
                break
        return _Record(cls, items)


class _Sidecar:
    """The tensors of a safetensors sidecar file (hash -> array), read and checked once.

    The file is opened without blocking and checked on the open descriptor (a regular
    file), so a FIFO or a device is refused rather than waited on."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self.tensors = _read_safetensors(self.path)
        except NnxcError:
            raise
        except Exception as e:  # noqa: BLE001 - OS errors, safetensors' own error types
            raise NnxcError(f"cannot read the constants sidecar {self.path}: {e}") from None

    def __getitem__(self, key: str):
        return self.tensors[key]


def _read_safetensors(path: str) -> dict:
    from safetensors.numpy import load
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NnxcError(f"cannot read the constants sidecar {path}: not a regular file")
        return load(f.read())


def parse(text: str, sidecar=None) -> Graph:
    """Parse IR text. Raises IRParseError with the line and column of the first problem.

    ``sidecar``: the safetensors file ``write_text(..., sidecar=...)`` wrote (a path), or a
    mapping hash -> array; each ``elided<hash>`` constant then gets its data back (checked
    against its type and hash), so the graph runs. Without it they stay ``Elided``.
    """
    if sidecar is not None and isinstance(sidecar, (str, os.PathLike)):
        sidecar = _Sidecar(sidecar)
    p = _Parser(text, sidecar)
    g = p.graph()
    while p.i < len(p.lines):
        if p.lines[p.i].strip():
            raise IRParseError("text after the end of the graph", p.i + 1, 1, p.lines[p.i])
        p.i += 1
    return g
