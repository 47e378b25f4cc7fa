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


# -- the tokenizer -------------------------------------------------------------------------
# One regex reads every token of the text (types, dims, attributes, records, constants,
# output trees). The parser asks a line (a _Cursor) for its next token and never looks at
# characters itself, except for a node's module path, which the grammar makes any run of
# non-blanks. Tokens are read one at a time as the parser asks, so a line with a million
# dense values is never turned into a list. Blanks are spaces; any other character that
# starts no token is an "other" token of its own, which the parser refuses ("expected ...").
_TOKEN = re.compile(r"""
    (?P<char>    [(){}\[\],:=@^*+] )                          # punctuation
  | (?P<value>   %[A-Za-z0-9_.\-]+ )                        # %x  %0  %blocks.0.attn.kernel
  | (?P<string>  "(?:[^"\\]|\\.)*" )                        # "m.py:12"  "a\"b\n"
  | (?P<open_string> ".* )                                  # a string the line ends inside
  | (?P<dense>   dense<\[ )                                 # dense<[1.0,2.0]>
  | (?P<elided>  elided<[0-9a-f]+> )                        # elided<9f86d081884c7d65>
  | (?P<key>     key<[a-z]+> )                              # key<fry> (the other dtypes are words)
  | (?P<number>  -?(?:(?:inf|nan)(?![A-Za-z0-9_])|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?) )
  | (?P<word>    [A-Za-z_][A-Za-z0-9_.\-]* )                # f32 Param nnxc.linear Precision.HIGH
  | (?P<other>   . )                                        # - < > % ... and stray characters
""", re.VERBOSE | re.DOTALL)
_BLANKS = re.compile(r" *")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # attribute names, record and enum names
_FIELD = re.compile(r"[A-Za-z0-9_]+")  # record fields (an unknown pytree's are 0, 1, ...)
_INT = re.compile(r"-?[0-9]+")
_PATH = re.compile(r"\S+")  # a node's module path: any run of non-blanks
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_NUMBER = ("number",)
_NO_STOPS: frozenset = frozenset()
_DIM_STOPS = frozenset({",", "]"})
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
    """One line of IR text read as tokens (see ``_TOKEN``); ``pos`` is where reading goes on.

    Looking at the next token skips the blanks before it, so an error raised after a look
    points at the token that was not wanted."""

    def __init__(self, text: str, lineno: int):
        self.text, self.lineno, self.pos = text, lineno, 0
        self._tok: re.Match | None = None  # the token at ``_at`` (None: the end of the line)
        self._at = -1

    def error(self, msg: str, pos: int | None = None):
        col = (self.pos if pos is None else pos) + 1
        raise IRParseError(msg, self.lineno, col, self.text)

    def peek(self) -> re.Match | None:
        """The next token (``.lastgroup`` is its kind), or None at the end of the line."""
        if self._at == self.pos:
            return self._tok
        if self.text.startswith(" ", self.pos):
            self.pos = _BLANKS.match(self.text, self.pos).end()
            if self._at == self.pos:
                return self._tok
        self._at = self.pos
        # _TOKEN always matches a character (see "other"); the end of the line is no token
        self._tok = _TOKEN.match(self.text, self.pos) if self.pos < len(self.text) else None
        return self._tok

    def here(self) -> int:
        """Where the next token starts."""
        self.peek()
        return self.pos

    def kind(self) -> str:
        tok = self.peek()
        return "end" if tok is None else tok.lastgroup

    def is_(self, text: str) -> bool:
        tok = self._tok if self._at == self.pos else self.peek()
        return tok is not None and tok.group() == text

    def next(self) -> re.Match:
        tok = self.peek()
        if tok is None:
            self.error("unexpected end of line")
        self.pos = tok.end()
        return tok

    def accept(self, text: str) -> bool:
        tok = self._tok if self._at == self.pos else self.peek()
        if tok is not None and tok.group() == text:
            self.pos = tok.end()
            return True
        return False

    def expect(self, text: str):
        if not self.accept(text):
            self.error(f"expected {text!r}, found {self.found()!r}")

    def found(self) -> str:
        return self.text[self.pos:self.pos + 12] or "end of line"

    def take(self, kinds: tuple, what: str, pattern: re.Pattern | None = None) -> str:
        """The next token's text if its kind is one of ``kinds`` (and it matches all of
        ``pattern``); else the error "expected ``what``"."""
        tok = self.peek()
        if tok is None or tok.lastgroup not in kinds or \
                (pattern is not None and not pattern.fullmatch(tok.group())):
            self.error(f"expected {what}")
        self.pos = tok.end()
        return tok.group()

    def keyword(self, word: str) -> bool:
        """Read ``word`` if it comes next and no "(" follows it (that would be an op)."""
        if not self.is_(word):
            return False
        start, self.pos = self.pos, self._tok.end()
        if self.is_("("):
            self.pos = start
            return False
        return True

    def path(self) -> str:
        """A module path: the run of non-blanks that comes next."""
        m = _PATH.match(self.text, self.here())
        if not m:
            self.error("expected a module path")
        self.pos = m.end()
        return m.group()

    def at_end(self) -> bool:
        return self.peek() is None

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

    # -- lists and records: the two shapes every bracket of the text holds ---------------------
    def comma_list(self, cur: _Cursor, close: str | None, item, trailing: bool = False):
        """``[ item { "," item } ] close``, read after the opening bracket; ``close`` None
        reads to the end of the line. ``trailing``: a "," may come last. Returns the items
        and whether a "," came last."""
        items = []
        if self.closes(cur, close):
            return items, False
        while True:
            items.append(item(cur))
            if self.closes(cur, close):
                return items, False
            if not cur.accept(","):
                want = "the end of the line" if close is None else repr(close)
                cur.error(f"expected ',' or {want}, found {cur.found()!r}")
            if trailing and self.closes(cur, close):
                return items, True

    @staticmethod
    def closes(cur: _Cursor, close: str | None) -> bool:
        return cur.at_end() if close is None else cur.accept(close)

    def fields(self, cur: _Cursor, close: str, value, what: str = "field",
               names: re.Pattern = _FIELD) -> dict:
        """``[ name "=" value { "," name "=" value } [ "," ] ] close``: the fields of a
        record, or a node's or variable's attributes (``what="attribute"``)."""
        out: dict = {}
        article = "an" if what == "attribute" else "a"

        def field(cur: _Cursor):
            pos = cur.here()
            key = cur.take(("word", "number"), f"{article} {what} name", names)
            if key in out:
                cur.error(f"{what} {key!r} is given twice", pos)
            cur.expect("=")
            out[key] = value(cur)

        self.comma_list(cur, close, field, trailing=True)
        return out

    def record(self, cur: _Cursor, value) -> list:
        """A record's fields, read after its class name: ``(name=value, ...)`` or
        ``{name=value, ...}``. (The printer writes the first in attributes and the second in
        output trees, and golden files hold both; either reads in both places.)"""
        if cur.accept("("):
            return list(self.fields(cur, ")", value).items())
        if cur.accept("{"):
            return list(self.fields(cur, "}", value).items())
        cur.error(f"expected '(' or '{{', found {cur.found()!r}")

    def attr_dict(self, cur: _Cursor) -> dict:
        cur.expect("{")
        return self.fields(cur, "}", self.attr, "attribute", _IDENT)

    def nested(self, cur: _Cursor) -> "_Nesting":
        """``with self.nested(cur):`` around a nested structure; refuses MAX_NESTING+1 levels."""
        return _Nesting(self, cur)

    # -- types -----------------------------------------------------------------
    def type(self, cur: _Cursor) -> TensorType:
        dtype = self.dtype(cur)
        cur.expect("[")
        dims, _ = self.comma_list(cur, "]", self.dim)
        return TensorType(tuple(dims), dtype)

    def dtype(self, cur: _Cursor) -> str:
        start = cur.here()
        name = cur.take(("word", "key"), "a dtype")
        if name not in DTYPE_NAMES:
            cur.error(f"unknown dtype {name!r}", start)
        return name

    def dim(self, cur: _Cursor):
        """One dim: an integer or an expression (commas inside parentheses belong to it)."""
        start = cur.here()
        tok = cur.text[start:self.dim_tokens(cur, _DIM_STOPS)]
        if not tok:
            cur.error("expected a dim (an integer or a symbolic expression) then ',' or ']'")
        if _INT.fullmatch(tok):
            if tok.startswith("-") or len(tok) > 19 or int(tok) > MAX_DIM:
                cur.error(f"dim {_show_token(tok)} is not a size (0 .. 2**63-1)", start)
            return int(tok)
        d = self.dim_expr(cur, tok, start)
        if isinstance(d, int) and not 0 <= d <= MAX_DIM:
            cur.error(f"dim {_show_token(tok)} = {d} is not a size (0 .. 2**63-1)", start)
        return d

    @staticmethod
    def dim_tokens(cur: _Cursor, stops: frozenset) -> int:
        """Read the tokens of a dim expression, up to a token in ``stops`` outside
        parentheses, a ")" that closes none, or the end of the line; returns where the last
        one read ends (its text goes to ``dim_expression``, the one dim parser)."""
        depth, end = 0, cur.here()
        while True:
            tok = cur.peek()
            if tok is None:
                return end
            t = tok.group()
            if t == "(":
                depth += 1
            elif t == ")":
                if not depth:
                    return end
                depth -= 1
            elif not depth and t in stops:
                return end
            cur.pos = end = tok.end()

    def dim_expr(self, cur: _Cursor, tok: str, start: int):
        """The canonical form of the dim expression ``tok`` (at column ``start`` + 1)."""
        try:
            return dim_expression(tok)
        except DimError as e:
            cur.error(f"bad dim {_show_token(tok)}: {e.msg}", start + (e.col or 1) - 1)

    def typed_name(self, cur: _Cursor) -> tuple[str, int, TensorType]:
        pos = cur.here()
        name = cur.take(("value",), "a value name like %x")[1:]
        cur.expect(":")
        return name, pos, self.type(cur)

    # -- literals --------------------------------------------------------------
    def scalar(self, cur: _Cursor):
        if cur.kind() == "number":
            return self.number(cur)
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
        start = cur.here()
        tok = cur.take(_NUMBER, "a number")
        if _INT.fullmatch(tok):
            if len(tok) > _MAX_DIGITS:
                cur.error(f"integer {_show_token(tok)} has {len(tok)} digits: no dtype holds it",
                          start)
            return int(tok)
        return float(tok)

    def string(self, cur: _Cursor) -> str:
        kind = cur.kind()
        if kind == "open_string":
            cur.pos = len(cur.text)
            cur.error("unterminated string")
        if kind != "string":
            cur.error(f"expected '\"', found {cur.found()!r}")
        body = cur.next().group()[1:-1]
        return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), body)

    def attr(self, cur: _Cursor):
        tok = cur.peek()
        kind = "end" if tok is None else tok.lastgroup
        if kind == "string":
            return self.string(cur)
        if kind == "number":
            return self.number(cur)
        if kind == "key":
            return DType(cur.next().group())
        if kind == "char" and tok.group() == "(":  # a tuple
            cur.next()
            with self.nested(cur):
                return tuple(self.comma_list(cur, ")", self.attr, trailing=True)[0])
        if kind != "word":
            cur.error("expected an attribute value")
        start, word = cur.pos, cur.next().group()
        if word in ("None", "True", "False"):
            return None if word == "None" else word == "True"
        if "." in word or "-" in word:  # an enum member
            cls, _, member = word.partition(".")
            if not _IDENT.fullmatch(cls):
                cur.error("expected an attribute value", start)
            if not _IDENT.fullmatch(member):
                cur.error("expected an enum member", start + len(cls) + 1)
            return EnumVal(cls, member)
        if word == "dim" and cur.is_("("):
            return self.sym_dim(cur)
        if cur.is_("(") or cur.is_("{"):
            with self.nested(cur):
                return Record(word, tuple(self.record(cur, self.attr)))
        if word in DTYPE_NAMES:
            return DType(word)
        return SymDim(word)

    def sym_dim(self, cur: _Cursor) -> SymDim:
        """``dim(expr)`` after ``dim``: the expression's text as written, checked."""
        cur.expect("(")
        start = cur.pos
        self.dim_tokens(cur, _NO_STOPS)
        close = cur.peek()
        if close is None:
            cur.error("unclosed dim(", start)
        expr = cur.text[start:close.start()]
        self.dim_expr(cur, expr, start)
        cur.next()
        return SymDim(expr)

    def operand(self, cur: _Cursor) -> Value:
        pos = cur.here()
        if cur.kind() == "value":
            return self.lookup(cur, cur.next().group()[1:], pos)
        if cur.is_("%"):
            cur.error("expected a value name like %x")
        x = self.scalar(cur)
        cur.expect(":")
        dtype = self.dtype(cur)
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
        g = Graph(cur.take(("word",), "a graph name"))
        cur.expect("(")
        g.inputs, _ = self.comma_list(cur, ")", lambda cur: self.define_typed(cur, True))
        cur.expect("{")
        cur.end()
        while True:
            cur = self.line()
            if cur.keyword("var"):
                name, pos, t = self.typed_name(cur)
                kind = cur.take(("word",), "a Variable type", _IDENT)
                meta = self.attr_dict(cur) if cur.is_("{") else {}
                cur.end()
                v = Value(t, name)
                self.define(cur, name, v, pos)
                g.variables.append(Variable(v, name, kind, meta))
            elif cur.keyword("const"):
                name, pos, t = self.typed_name(cur)
                cur.expect("=")
                v = Value(t, name, data=self.const_data(cur, t))
                cur.end()
                self.define(cur, name, v, pos)
                g.consts.append(v)
            elif cur.keyword("update"):
                pos = cur.here()
                name = cur.take(("value",), "a variable")[1:]
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

    def define_typed(self, cur: _Cursor, named: bool) -> Value:
        """``%name: type``, defined as a new value (named: a graph input keeps its name)."""
        name, pos, t = self.typed_name(cur)
        v = Value(t, name) if named else Value(t)
        self.define(cur, name, v, pos)
        return v

    def const_data(self, cur: _Cursor, t: TensorType):
        start = cur.here()
        kind = cur.kind()
        if kind == "elided":
            digest = cur.next().group()[len("elided<"):-1]
            if self.sidecar is None:
                return Elided(digest)
            return self.restore(cur, digest, t, start + len("elided<"))
        if kind != "dense":
            cur.error(f"expected 'dense<[' or 'elided<' and a hex digest, found {cur.found()!r}")
        cur.next()
        vals, _ = self.comma_list(cur, "]", self.scalar)
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
        if cur.kind() == "value" or cur.is_("%"):
            outs, _ = self.comma_list(cur, "=", self.typed_name)
        op = cur.take(("word",), "an op name")
        cur.expect("(")
        inputs, _ = self.comma_list(cur, ")", self.operand)
        attrs = {}
        tok = cur.peek()
        if tok is not None and tok.group() == "{" and cur.text[tok.end():].strip():
            attrs = self.attr_dict(cur)  # a "{" that ends the line opens regions
        path = cur.path() if cur.accept("@") else ""
        loc = None
        if cur.accept("loc"):
            cur.expect("(")
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
        cur.expect("^")
        cur.expect("(")
        with self.nested(cur):
            return self.region_body(cur)

    def region_body(self, cur: _Cursor) -> Region:
        self.scopes.append({})
        args, _ = self.comma_list(cur, ")", lambda cur: self.define_typed(cur, False))
        cur.expect(":")
        cur.end()
        region = Region(args)
        while True:
            cur = self.line()
            if cur.accept("yield"):
                region.results, _ = self.comma_list(cur, None, self.operand)
                break
            region.nodes.append(self.node(cur))
        self.scopes.pop()
        return region

    # -- the returned values ---------------------------------------------------------------
    def out_tree(self, cur: _Cursor):
        if cur.at_end():
            return [], jax.tree_util.tree_structure(())
        start = cur.pos
        items, _ = self.comma_list(cur, None, self.tree_expr)
        if len(items) == 1:
            try:
                leaves, tree = jax.tree_util.tree_flatten(
                    items[0], is_leaf=lambda x: isinstance(x, _Leaf))
            except (TypeError, ValueError) as e:  # e.g. dict keys that do not sort
                cur.error(f"cannot build the output tree: {e}", start)
            return [x.value for x in leaves], tree
        if not all(isinstance(x, _Leaf) for x in items):
            cur.error("a flat return lists values only")
        return [x.value for x in items], None

    def tree_expr(self, cur: _Cursor):
        with self.nested(cur):
            return self.tree_node(cur)

    def tree_node(self, cur: _Cursor):
        tok = cur.peek()
        kind = "end" if tok is None else tok.lastgroup
        if kind in ("value", "number") or cur.is_("%") or cur.is_("True") or cur.is_("False") \
                or self.complex_next(cur):
            return _Leaf(self.operand(cur))
        if cur.accept("None"):
            return None
        if cur.accept("("):
            items, trailing = self.comma_list(cur, ")", self.tree_expr, trailing=True)
            if len(items) == 1 and not trailing:
                cur.error("a 1-tuple needs a trailing comma")
            return tuple(items)
        if cur.accept("["):
            return self.comma_list(cur, "]", self.tree_expr, trailing=True)[0]
        if cur.accept("{"):
            out = {}

            def entry(cur: _Cursor):
                pos = cur.here()
                key = self.attr(cur)
                if key in out:
                    cur.error(f"key {format_attr(key)} is given twice", pos)
                cur.expect(":")
                out[key] = self.tree_expr(cur)

            self.comma_list(cur, "}", entry, trailing=True)
            return out
        cls = cur.take(("word",), "an output value or structure", _IDENT)
        return _Record(cls, self.record(cur, self.tree_expr))

    @staticmethod
    def complex_next(cur: _Cursor) -> bool:
        """Whether a complex scalar ``(re,im):c64`` comes next: ``(``, a number, ``,``, a
        number, ``)``, ``:`` (a tuple of outputs such as ``(0.0:f32, %0)`` is not one)."""
        if not cur.is_("("):
            return False
        start = cur.pos
        try:
            for want in ("(", "number", ",", "number", ")", ":"):
                if (cur.kind() != "number") if want == "number" else not cur.is_(want):
                    return False
                cur.pos = cur._tok.end()
            return True
        finally:
            cur.pos = start


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
