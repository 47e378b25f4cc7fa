"""Tensor types of the IR: a shape of ints or symbolic dims, and a short dtype name."""
from __future__ import annotations

import re
from functools import cmp_to_key
from typing import NamedTuple, Union

import numpy as np

from ..errors import NnxcError

Dim = Union[int, str]  # a symbolic dim is a DimExpr: its canonical text, e.g. "B" or "2*B"

# short name <-> numpy dtype name; the short names are what the text form shows
_SHORT = {
    "bool": "bool", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
    "complex64": "c64", "complex128": "c128",
    "float8_e4m3fn": "f8e4m3fn", "float8_e5m2": "f8e5m2", "float0": "float0",
}
_LONG = {v: k for k, v in _SHORT.items()}
DTYPE_NAMES = frozenset(_LONG) | {"key<fry>", "key<rbg>", "key<urbg>"}
_KEY_IMPLS = {"fry": "threefry2x32", "rbg": "rbg", "urbg": "unsafe_rbg"}
_SYM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def dtype_name(dtype) -> str:
    """Short IR name of a numpy / JAX dtype (``float32`` -> ``f32``, keys -> ``key<fry>``)."""
    try:
        return _NAMES[dtype]
    except (KeyError, TypeError):
        pass
    name = _dtype_name(dtype)
    try:
        _NAMES[dtype] = name
    except TypeError:  # unhashable
        pass
    return name


_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    text = str(dtype)
    if text.startswith("key<"):
        return text
    try:
        return _SHORT[np.dtype(dtype).name]
    except (KeyError, TypeError) as e:
        raise ValueError(f"dtype {dtype!r} has no IR name") from e


def to_dtype(name: str):
    """The numpy (or JAX key) dtype for a short IR name."""
    if name.startswith("key<"):
        import jax
        return jax.random.key(0, impl=_KEY_IMPLS[name[4:-1]]).dtype
    if name == "float0":
        from jax import dtypes
        return dtypes.float0
    long = _LONG.get(name)
    if long is None:
        raise ValueError(f"unknown dtype {name!r}")
    if long in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, long))
    return np.dtype(long)


def is_symbolic(dim: Dim) -> bool:
    return isinstance(dim, str)


def dim_text(dim) -> Dim:
    """Normalize a JAX dim (int or symbolic expression, or a SymDim) to an IR dim."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    if isinstance(getattr(dim, "expr", None), str):  # a SymDim attribute
        return canonical_dim(dim.expr)
    try:
        return int(dim)
    except Exception:  # noqa: BLE001 - a symbolic expression refuses int()
        return canonical_dim(str(dim))


def is_plain_symbol(dim: Dim) -> bool:
    return isinstance(dim, str) and _SYM.fullmatch(dim) is not None


class _TensorType(NamedTuple):
    shape: tuple
    dtype: str


class TensorType(_TensorType):
    """A shape (ints and canonical ``DimExpr`` dims) and a short dtype name."""

    __slots__ = ()

    def __new__(cls, shape, dtype: str):
        return _TensorType.__new__(cls, _canonical_shape(shape), dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def size(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    @staticmethod
    def of(x) -> "TensorType":
        """The type of an array, ShapedArray or ShapeDtypeStruct."""
        return TensorType(tuple(dim_text(d) for d in x.shape), dtype_name(x.dtype))


# -- symbolic dims --------------------------------------------------------------------
#
# A symbolic dim is an integer polynomial in named symbols, whose "factors" may also be
# floordiv(a,b), mod(a,b), max(a,b) or min(a,b) of such expressions. ``parse_dim`` reads
# any spelling of one (``1+B``, ``B + 1``, ``non_negative(B-2)``) and returns its
# ``DimExpr``: the canonical text of the expression, a ``str`` subclass, interned, so that
# equal expressions are one object, print one way and compare equal by value. The
# canonical order of terms is JAX's own (larger terms first, the constant last), so a dim
# JAX computes prints as JAX prints it, without spaces, and exponents written out
# (``B*B``, not ``B^2``).


class DimError(NnxcError, ValueError):
    """A malformed dim expression; ``col`` is the 1-based column of the problem."""

    def __init__(self, msg: str, expr: str = "", col: int | None = None):
        self.msg, self.expr, self.col = msg, expr, col
        where = f" at column {col}" if col is not None else ""
        super().__init__(f"bad dim {expr!r}{where}: {msg}" if expr else msg)


def _cmp(a, b) -> int:
    return (a > b) - (a < b)


def _cmp_seq(s1, s2, elem) -> int:
    for x, y in zip(s1, s2):
        c = elem(x, y)
        if c:
            return c
    return _cmp(len(s1), len(s2))


class _Factor:
    """A symbol, or an operation (floordiv, mod, max, min) of polynomials."""

    __slots__ = ("var", "op", "args", "size", "key")

    def __init__(self, var: str | None = None, op: str | None = None, args: tuple = ()):
        self.var, self.op, self.args = var, op, args
        self.size = 1 if var is not None else 1 + sum(a.size for a in args)
        self.key = ("v", var) if var is not None else ("f", op, tuple(a.key for a in args))

    def text(self) -> str:
        if self.var is not None:
            return self.var
        return f"{self.op}({','.join(a.text() for a in self.args)})"


def _cmp_factor(a: _Factor, b: _Factor) -> int:
    c = _cmp(a.size, b.size)
    if c:
        return c
    if a.var is not None or b.var is not None:
        return _cmp(a.var or "", b.var or "")
    return _cmp(a.op, b.op) or _cmp_seq(a.args, b.args, _cmp_poly)


def _cmp_fe(x, y) -> int:
    return _cmp_factor(x[0], y[0]) or _cmp(x[1], y[1])


class _Term:
    """A product of factors with exponents, largest factor first; () is the constant 1."""

    __slots__ = ("factors", "size", "key")

    def __init__(self, factors: tuple):
        self.factors = factors
        self.size = sum(1 + e * f.size for f, e in factors)
        self.key = tuple((f.key, e) for f, e in factors)

    def text(self) -> str:
        return "*".join(f.text() for f, e in reversed(self.factors) for _ in range(e))


def _cmp_term(a: _Term, b: _Term) -> int:
    return _cmp(a.size, b.size) or _cmp_seq(a.factors, b.factors, _cmp_fe)


def _make_term(factors: dict) -> _Term:
    """A term from {factor key: (factor, exponent)}."""
    items = sorted(factors.values(), key=cmp_to_key(_cmp_fe), reverse=True)
    return _Term(tuple(items))


_ONE = _Term(())
_TERM_KEY = cmp_to_key(_cmp_term)


class _Poly:
    """A sum of terms with nonzero integer coefficients, largest term first."""

    __slots__ = ("terms", "size", "key")

    def __init__(self, terms: dict):  # {term key: (term, coefficient)}
        items = [(t, k) for t, k in terms.values() if k != 0]
        items.sort(key=lambda tk: _TERM_KEY(tk[0]), reverse=True)
        self.terms = tuple(items)
        self.size = sum(1 + abs(k) * t.size for t, k in self.terms)
        self.key = tuple((t.key, k) for t, k in self.terms)

    @staticmethod
    def const(k: int) -> "_Poly":
        return _Poly({(): (_ONE, k)})

    @staticmethod
    def factor(f: _Factor) -> "_Poly":
        t = _Term(((f, 1),))
        return _Poly({t.key: (t, 1)})

    def constant(self) -> int | None:
        if not self.terms:
            return 0
        if len(self.terms) == 1 and not self.terms[0][0].factors:
            return self.terms[0][1]
        return None

    def text(self) -> str:
        out = []
        for t, k in self.terms:
            body = str(abs(k)) if not t.factors else t.text() if abs(k) == 1 else f"{abs(k)}*{t.text()}"
            out.append(("-" if k < 0 else "+") + body)
        return "".join(out).lstrip("+") or "0"

    def add(self, other: "_Poly", sign: int = 1) -> "_Poly":
        acc = {t.key: (t, k) for t, k in self.terms}
        for t, k in other.terms:
            old = acc.get(t.key, (t, 0))[1]
            acc[t.key] = (t, old + sign * k)
        return _Poly(acc)

    def mul(self, other: "_Poly") -> "_Poly":
        acc: dict = {}
        for t1, k1 in self.terms:
            for t2, k2 in other.terms:
                fs = {f.key: (f, e) for f, e in t1.factors}
                for f, e in t2.factors:
                    fs[f.key] = (f, fs.get(f.key, (f, 0))[1] + e)
                t = _make_term(fs)
                acc[t.key] = (t, acc.get(t.key, (t, 0))[1] + k1 * k2)
        return _Poly(acc)

    def symbols(self) -> set:
        out = set()
        for t, _ in self.terms:
            for f, _ in t.factors:
                if f.var is not None:
                    out.add(f.var)
                else:
                    for a in f.args:
                        out |= a.symbols()
        return out


def _cmp_poly(a: _Poly, b: _Poly) -> int:
    c = _cmp(a.size, b.size)
    if c:
        return c
    return _cmp_seq(a.terms, b.terms, lambda x, y: _cmp_term(x[0], y[0]) or _cmp(x[1], y[1]))


def _operation(name: str, args: list) -> _Poly:
    """``name(*args)`` simplified where the value is certain, else an opaque factor."""
    if name == "non_negative":
        name, args = "max", [args[0], _Poly.const(0)]
    a, b = args
    ka, kb = a.constant(), b.constant()
    if name in ("floordiv", "mod"):
        if kb == 0:
            raise ZeroDivisionError(f"{name} by zero")
        if ka is not None and kb is not None:
            return _Poly.const(ka // kb if name == "floordiv" else ka % kb)
        if kb is not None and all(k % kb == 0 for _, k in a.terms):  # b divides a exactly
            if name == "mod":
                return _Poly.const(0)
            return _Poly({t.key: (t, k // kb) for t, k in a.terms})
    else:  # max, min
        if ka is not None and kb is not None:
            return _Poly.const(max(ka, kb) if name == "max" else min(ka, kb))
        if a.key == b.key:
            return a
        # commutative: one order of the operands, the larger first (max(B,2), max(B-2,0)),
        # then alphabetical (min(B,T))
        if a.size < b.size or (a.size == b.size and _cmp_poly(a, b) > 0):
            a, b = b, a
    return _Poly.factor(_Factor(op=name, args=(a, b)))


_FUNCS = {"floordiv": 2, "mod": 2, "max": 2, "min": 2, "non_negative": 1}
_TOKENS = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(\S))")


class _DimReader:
    """Recursive descent over ``+ - * ^ ( ) ,``, integers, symbols and the functions."""

    def __init__(self, text: str):
        self.text = text
        self.toks = []
        pos = 0
        while pos < len(text):
            m = _TOKENS.match(text, pos)
            if m is None:  # trailing blanks
                break
            self.toks.append((m.group(1), m.group(2), m.group(3), m.start(m.lastindex)))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str, at: int | None = None):
        if at is None:
            at = self.toks[self.i][3] if self.i < len(self.toks) else len(self.text)
        raise DimError(msg, self.text, at + 1)

    def peek(self) -> str | None:
        if self.i >= len(self.toks):
            return None
        t = self.toks[self.i]
        return t[2] if t[2] is not None else ""

    def take(self):
        if self.i >= len(self.toks):
            self.fail("unexpected end of the expression")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, ch: str):
        if self.peek() != ch:
            self.fail(f"expected {ch!r}")
        self.i += 1

    def read(self) -> _Poly:
        if not self.toks:
            self.fail("empty expression", 0)
        out = self.sum()
        if self.i != len(self.toks):
            self.fail(f"unexpected {self.toks[self.i][0] or self.toks[self.i][1] or self.toks[self.i][2]!r}")
        return out

    def sum(self) -> _Poly:
        acc = self.product()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take()[2] == "+" else -1
            acc = acc.add(self.product(), sign)
        return acc

    def product(self) -> _Poly:
        acc = self.unary()
        while self.peek() == "*":
            self.take()
            acc = acc.mul(self.unary())
        return acc

    def unary(self) -> _Poly:
        if self.peek() == "-":
            self.take()
            return _Poly.const(0).add(self.unary(), -1)
        if self.peek() == "+":
            self.take()
            return self.unary()
        base = self.atom()
        if self.peek() == "^":
            self.take()
            num, _, _, at = self.take()
            if num is None:
                self.fail("expected an integer exponent", at)
            out = _Poly.const(1)
            for _ in range(int(num)):
                out = out.mul(base)
            return out
        return base

    def atom(self) -> _Poly:
        num, name, ch, at = self.take()
        if num is not None:
            return _Poly.const(int(num))
        if name is not None:
            if self.peek() != "(":
                return _Poly.factor(_Factor(var=name))
            arity = _FUNCS.get(name)
            if arity is None:
                self.fail(f"unknown function {name!r} (known: {', '.join(_FUNCS)})", at)
            self.take()
            args = [self.sum()]
            while self.peek() == ",":
                self.take()
                args.append(self.sum())
            self.expect(")")
            if len(args) != arity:
                self.fail(f"{name} takes {arity} argument(s), got {len(args)}", at)
            try:
                return _operation(name, args)
            except ZeroDivisionError as e:
                self.fail(str(e), at)
        if ch == "(":
            inner = self.sum()
            self.expect(")")
            return inner
        self.fail(f"unexpected {ch!r}", at)


class DimOps:
    """How ``DimExpr.evaluate`` computes: with Python numbers by default. Subclass it to
    build something else from a dim (JAX symbolic dims, ONNX shape nodes)."""

    def symbol(self, name: str, env):
        try:
            return env[name]
        except KeyError:
            raise DimError(f"no value for symbol {name!r}") from None

    def const(self, k: int):
        return k

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def floordiv(self, a, b):
        return a // b

    def mod(self, a, b):
        return a % b

    def max(self, a, b):
        return max(a, b)

    def min(self, a, b):
        return min(a, b)


_INT_OPS = DimOps()


class DimExpr(str):
    """A symbolic dim in canonical form (see ``parse_dim``): its text is the canonical text.

    ``symbols`` is the set of symbol names in it; ``evaluate(env)`` its value for the symbol
    values in ``env``; ``linear(name)`` splits it as ``coeff*name + rest`` when it can.
    """

    _poly: _Poly
    symbols: frozenset

    def __new__(cls, text: str):
        return parse_dim(text)

    def __getnewargs__(self):
        return (str(self),)

    def __reduce__(self):
        return (parse_dim, (str(self),))

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    @property
    def is_symbol(self) -> bool:
        """A single symbol (``B``), not an expression of one."""
        return _SYM.fullmatch(self) is not None

    @property
    def constant(self) -> int | None:
        """The value of an expression without symbols, else None."""
        return self._poly.constant()

    def evaluate(self, env, ops: DimOps | None = None):
        """The value with symbols from ``env`` (a mapping; ``ops`` says how to compute)."""
        return _evaluate(self._poly, env, ops or _INT_OPS)

    def linear(self, name: str):
        """``(coeff, rest)`` with ``self == coeff*name + rest`` where neither mentions
        ``name`` (each an int or a DimExpr), or None when ``name`` is not linear here."""
        coeff: dict = {}
        rest: dict = {}
        for t, k in self._poly.terms:
            if any(f.var is None and any(name in a.symbols() for a in f.args) for f, _ in t.factors):
                return None  # inside floordiv/mod/max/min
            mine = [(f, e) for f, e in t.factors if f.var == name]
            if not mine:
                rest[t.key] = (t, k)
            elif mine[0][1] != 1:
                return None
            else:
                other = _make_term({f.key: (f, e) for f, e in t.factors if f.var != name})
                coeff[other.key] = (other, coeff.get(other.key, (other, 0))[1] + k)
        if not coeff:
            return None
        return _from_poly(_Poly(coeff)), _from_poly(_Poly(rest))


def _evaluate(p: _Poly, env, ops: DimOps):
    acc = None
    for t, k in p.terms:
        if not t.factors:
            v = ops.const(k)
        else:
            v = None
            for f, e in reversed(t.factors):
                fv = _evaluate_factor(f, env, ops)
                for _ in range(e):
                    v = fv if v is None else ops.mul(v, fv)
            if k != 1:
                v = ops.mul(ops.const(k), v)
        acc = v if acc is None else ops.add(acc, v)
    return ops.const(0) if acc is None else acc


def _evaluate_factor(f: _Factor, env, ops: DimOps):
    if f.var is not None:
        return ops.symbol(f.var, env)
    a, b = (_evaluate(x, env, ops) for x in f.args)
    return getattr(ops, f.op)(a, b)


_INTERNED: dict[str, DimExpr] = {}
_PARSED: dict[str, DimExpr] = {}
_CACHE_LIMIT = 100_000


def _from_poly(p: _Poly):
    """An int for a constant, else the interned DimExpr."""
    k = p.constant()
    return k if k is not None else _intern(p)


def _intern(p: _Poly) -> DimExpr:
    text = p.text()
    d = _INTERNED.get(text)
    if d is None:
        d = str.__new__(DimExpr, text)
        d._poly = p
        d.symbols = frozenset(p.symbols())
        if len(_INTERNED) > _CACHE_LIMIT:
            _INTERNED.clear()
        _INTERNED[text] = d
    return d


def parse_dim(text) -> DimExpr:
    """The canonical ``DimExpr`` of a dim expression (``"2*B+1"``, ``"floordiv(B,2)"``, an int).

    The grammar: integers, symbols, ``+ - *``, ``^`` with an integer exponent, parentheses,
    and floordiv(a,b), mod(a,b), max(a,b), min(a,b), non_negative(a) (= max(a,0)), with
    Python's floor semantics. Raises DimError naming the column of the first problem.
    """
    if isinstance(text, DimExpr):
        return text
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return _intern(_Poly.const(int(text)))
    if not isinstance(text, str):
        raise DimError(f"expected a dim expression, got {type(text).__name__}")
    d = _PARSED.get(text)
    if d is None:
        d = _intern(_DimReader(text).read())
        if len(_PARSED) > _CACHE_LIMIT:
            _PARSED.clear()
        _PARSED[text] = d
    return d


def canonical_dim(d) -> Dim:
    """A dim as the IR keeps it: an int, or the canonical ``DimExpr`` of a symbolic one."""
    if type(d) is int or type(d) is DimExpr:
        return d
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return int(d)
    e = parse_dim(str(d) if not isinstance(d, str) else d)
    k = e.constant
    return k if k is not None else e


def solve_dims(pairs, strict: bool = True) -> dict[str, int]:
    """Values of the symbols that make each ``(dim, size)`` pair hold, sizes being ints.

    A symbol is found from a dim that is linear in it once the other symbols of that dim
    are known (``B``, ``2*K``, ``K+1``, ``B*T``); no symbol may be negative. Raises
    DimError saying which pair cannot hold or which symbol cannot be found (with
    ``strict=False``, dims with symbols that cannot be found are skipped instead).
    """
    items = [(canonical_dim(d), int(n)) for d, n in pairs]
    env: dict[str, int] = {}
    progress = True
    while progress:
        progress = False
        for d, n in items:
            if isinstance(d, int):
                continue
            unknown = d.symbols - env.keys()
            if len(unknown) != 1:
                continue
            (name,) = unknown
            split = d.linear(name)
            if split is None:
                continue
            coeff, rest = (x if isinstance(x, int) else x.evaluate(env) for x in split)
            if coeff == 0 or (n - rest) % coeff:
                raise DimError(f"size {n} is not {d} for any integer {name}")
            value = (n - rest) // coeff
            if value < 0:
                raise DimError(f"size {n} would make {name}={value}, but sizes are >= 0")
            env[name] = value
            progress = True
    for d, n in items:
        if isinstance(d, int):
            if d != n:
                raise DimError(f"size {n} is not {d}")
            continue
        missing = d.symbols - env.keys()
        if missing and not strict:
            continue
        if missing:
            raise DimError(f"cannot tell {', '.join(sorted(missing))} from the sizes: no input "
                           f"dim is that symbol alone or linear in it (like 2*K or K+1); {d} is not")
        want = d.evaluate(env)
        if want != n:
            raise DimError(f"size {n} is not {d} (= {want} with "
                           + ", ".join(f"{s}={env[s]}" for s in sorted(d.symbols)) + ")")
    return env


def solvable_symbols(dims) -> set:
    """The symbols ``solve_dims`` can find from sizes of ``dims``."""
    known: set = set()
    exprs = [d for d in (canonical_dim(x) for x in dims) if not isinstance(d, int)]
    progress = True
    while progress:
        progress = False
        for d in exprs:
            unknown = d.symbols - known
            if len(unknown) == 1 and d.linear(next(iter(unknown))) is not None:
                known |= unknown
                progress = True
    return known


def _canonical_shape(shape) -> tuple:
    out = []
    for d in shape:
        if type(d) is not int and type(d) is not DimExpr:
            try:
                d = canonical_dim(d)
            except DimError:  # not an expression: kept as written, the verifier reports it
                d = str(d)
        out.append(d)
    return tuple(out)


def is_float(dtype: str) -> bool:
    """Whether an IR dtype is a real floating-point type (f16, bf16, f32, f64, float8)."""
    return (dtype[0] == "f" and dtype != "float0") or dtype == "bf16"
