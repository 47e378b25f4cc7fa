"""Fusion by pattern: a rule is a pattern, a check and a rewrite.

Patterns are written with the same builder calls as the replacement: ``p.mul(x, 0.5)`` is a
pattern when ``p`` is a ``PatternBuilder`` and a node when it is the rewrite's ``Builder``.
Matching backtracks over alternatives (``p.any``) and the operand order of commutative ops.
Chains of ``add`` / ``mul`` are order-free: ``p.mul(0.5, x, y)`` (or ``p.mul(0.5, p.mul(x, y))``)
matches ``0.5*x*y`` in every association and operand order, because a chain of the same op
is seen as the multiset of its operands on both sides. A rule fires when the pattern
matches, no value inside it is used outside it, and its check returns None; otherwise
``why_not`` tells the reason.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

from ..ir.graph import Graph, Node, Value
from .dce import eliminate_dead_code
from .rewrite import Rebuild, fired, splat, use_counts

COMMUTATIVE = frozenset({"add", "mul", "max", "min", "and", "or", "eq", "ne"})
CHAINS = frozenset({"add", "mul"})  # commutative and associative: matched as operand multisets


class Pat:
    pass


@dataclasses.dataclass(eq=False)
class Var(Pat):
    name: str
    const: bool = True  # may bind a constant


@dataclasses.dataclass(eq=False)
class Const(Pat):
    value: float | None = None  # None: any constant, bound under ``name``
    name: str | None = None
    rtol: float = 1e-6


@dataclasses.dataclass(eq=False)
class Op(Pat):
    op: str
    args: tuple
    attrs: dict
    leaves: list | None = dataclasses.field(default=None, repr=False)  # chains: see _chain_leaves


@dataclasses.dataclass(eq=False)
class Alt(Pat):
    alts: tuple


@dataclasses.dataclass(eq=False)
class Named(Pat):
    name: str
    pat: Pat


@dataclasses.dataclass(eq=False)
class Custom(Pat):
    """A matcher written as code: ``fn(value, match)`` binds into the match and returns None,
    or returns why it does not match. ``roots``: the ops a match can end in."""
    roots: frozenset
    fn: Callable


@dataclasses.dataclass(frozen=True)
class Bind:
    """An attribute bound under a name: every use of the name must see the same value."""
    name: str


def _lift(x) -> Pat:
    if isinstance(x, Pat):
        return x
    if isinstance(x, (int, float)):
        return Const(float(x))
    raise TypeError(f"not a pattern: {x!r}")


class PatternBuilder:
    """``p.<op>(*args, **attrs)`` is a pattern for a node; numbers are constants."""

    def op(self, op: str, *args, **attrs) -> Pat:
        """``add`` and ``mul`` take any number of operands (a chain, in any association)."""
        if len(args) > 2 and op not in CHAINS:
            raise TypeError(f"only {' and '.join(sorted(CHAINS))} patterns take more than two operands")
        return Op(op, tuple(_lift(a) for a in args), attrs)

    def __getattr__(self, op: str):
        return lambda *args, **attrs: self.op(op, *args, **attrs)

    def var(self, name: str, const: bool = True) -> Pat:
        """Any value (the same one wherever ``name`` appears); ``const=False``: not a constant."""
        return Var(name, const)

    def const(self, name: str, value: float | None = None) -> Pat:
        return Const(value, name)

    def bind(self, name: str, pat) -> Pat:
        """``pat``, with the value it matched bound under ``name``."""
        return Named(name, _lift(pat))

    def any(self, *alts) -> Pat:
        return Alt(tuple(_lift(a) for a in alts))

    def opt(self, op: str, x, **attrs) -> Pat:
        """``op(x)`` or just ``x`` (an optional unary node such as a keepdims reshape)."""
        return Alt((self.op(op, x, **attrs), _lift(x)))


class Match:
    def __init__(self, root: Value):
        self.root = root
        self.values: dict[str, Value] = {}
        self.attrs: dict[str, Any] = {}
        self.consts: dict[str, float] = {}
        self.nodes: list[Node] = []
        self.why, self._depth, self._whys = "no match", -1, []
        self.under = ""  # the op whose operand is being matched, for failure messages

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def fail(self, why: str) -> None:
        """Remember why matching failed: the failures of the attempts that got furthest
        ("expected reshape, got add" and "expected reduce_sum, got add" read as one)."""
        why = f"{self.under}: {why}" if self.under else why
        if len(self.nodes) > self._depth:
            self._whys, self._depth = [], len(self.nodes)
        if len(self.nodes) == self._depth and why not in self._whys:
            head, sep, tail = why.partition(", got ")
            for i, old in enumerate(self._whys):
                ohead, osep, otail = old.partition(", got ")
                if sep and osep and otail == tail and ohead.rsplit(" ", 1)[0] == head.rsplit(" ", 1)[0]:
                    self._whys[i] = f"{ohead}|{head.rsplit(' ', 1)[1]}, got {tail}"
                    break
            else:
                self._whys.append(why)
        self.why = "; or ".join(self._whys[:4])

    def frozen(self) -> "Match":
        m = Match(self.root)
        m.values, m.attrs, m.consts = dict(self.values), dict(self.attrs), dict(self.consts)
        m.nodes = list(dict.fromkeys(self.nodes))
        return m


def _bind(table: dict, key: str, value, same=lambda a, b: a is b) -> Iterator[None]:
    if key in table:
        if same(table[key], value):
            yield
        return
    table[key] = value
    yield
    del table[key]


def _match(pat: Pat, v: Value, m: Match) -> Iterator[None]:
    """Yield once per way ``pat`` matches ``v`` (bindings in ``m``), restoring ``m`` after."""
    if isinstance(pat, Var):
        seen = m.values.get(pat.name)
        if not pat.const and v.is_const:
            m.fail(f"a constant where {pat.name} should be")
        elif seen is not None and seen is not v:
            m.fail(f"not the same {pat.name} as elsewhere in the pattern ({v.type})")
        else:
            yield from _bind(m.values, pat.name, v)
    elif isinstance(pat, Const):
        c = splat(v)
        if c is None:
            m.fail(f"{v.type} value is not a constant")
        elif pat.value is not None and not math.isclose(c, pat.value, rel_tol=pat.rtol, abs_tol=1e-30):
            m.fail(f"constant {c:g} is not {pat.value:g}")
        elif pat.name is None:
            yield
        else:
            yield from _bind(m.consts, pat.name, c, lambda a, b: math.isclose(a, b, rel_tol=1e-6))
    elif isinstance(pat, Alt):
        for alt in pat.alts:
            yield from _match(alt, v, m)
    elif isinstance(pat, Named):
        for _ in _match(pat.pat, v, m):
            yield from _bind(m.values, pat.name, v)
    elif isinstance(pat, Custom):
        saved = dict(m.values), dict(m.attrs), dict(m.consts), len(m.nodes)
        why = pat.fn(v, m)
        if why is None:
            yield
        else:
            m.fail(why)
        m.values, m.attrs, m.consts = saved[:3]
        del m.nodes[saved[3]:]
    else:
        node = v.producer
        if node is None or node.op != pat.op or len(node.outputs) != 1:
            m.fail(f"expected {pat.op}, got {node.op if node else 'an input'} ({v.type})")
            return
        if pat.op in CHAINS and len(node.inputs) == 2:
            yield from _match_chain(pat, node, m)
            return
        if len(node.inputs) != len(pat.args):
            m.fail(f"{pat.op} with {len(node.inputs)} operands")
            return
        m.nodes.append(node)
        orders = [node.inputs]
        if pat.op in COMMUTATIVE and len(node.inputs) == 2:
            orders.append(node.inputs[::-1])
        for ins in orders:
            for _ in _attrs(pat, node, m, list(pat.attrs.items())):
                yield from _seq(pat.args, ins, m, pat.op)
        m.nodes.pop()


def _match_chain(pat: Op, node: Node, m: Match) -> Iterator[None]:
    """Match a chain pattern at ``node``: every way of seeing the value's chain of the same
    op as k operands (``_cuts``), against each k-operand form of the pattern, in any order."""
    m.nodes.append(node)
    for _ in _attrs(pat, node, m, list(pat.attrs.items())):
        most, fits = 0, False
        for leaves in _chain_leaves(pat):
            for values, inner in _cuts(node, len(leaves)):
                most = max(most, len(values))
                if len(values) != len(leaves):
                    continue
                fits = True
                m.nodes.extend(inner)
                yield from _assign(leaves, values, m, pat.op)
                del m.nodes[len(m.nodes) - len(inner):]
        if not fits:
            want = " or ".join(sorted({str(len(f)) for f in _chain_leaves(pat)}))
            m.fail(f"a chain of {most} {pat.op} operands, not {want}")
    m.nodes.pop()


def _chain_leaves(pat: Op) -> list[tuple]:
    """The operand lists a chain pattern stands for: nested patterns of the same op (also
    inside ``p.any``) are flattened; constants first, then ops, then variables, so the
    specific operands bind before the free ones."""
    if pat.leaves is None:
        rank = lambda q: 0 if isinstance(q, Const) else 2 if isinstance(q, Var) else 1  # noqa: E731
        forms = list(dict.fromkeys(tuple(sorted(f, key=rank)) for f in _flatten(pat, pat.op)))
        pat.leaves = forms
    return pat.leaves


def _flatten(pat: Pat, op: str) -> list[tuple]:
    if isinstance(pat, Op) and pat.op == op and not pat.attrs:
        forms = [()]
        for a in pat.args:
            forms = [f + g for f in forms for g in _flatten(a, op)]
        return forms
    if isinstance(pat, Alt) and any(_is_chain(a, op) for a in pat.alts):
        return [f for a in pat.alts for f in _flatten(a, op)]
    return [(pat,)]


def _is_chain(pat: Pat, op: str) -> bool:
    if isinstance(pat, Alt):
        return any(_is_chain(a, op) for a in pat.alts)
    return isinstance(pat, Op) and pat.op == op and not pat.attrs


def _cuts(node: Node, k: int) -> Iterator[tuple[list, list]]:
    """``(operands, inner nodes)`` for each way to split ``node``'s chain into at most ``k``
    operands: each operand of a node of the chain is taken whole or, when the same op
    produced it, split further (``a*(b*c)`` is ``[a, b*c]`` or ``[a, b, c]``)."""
    def operands(i: int, budget: int, values: list, inner: list):
        if i == len(node.inputs):
            yield values, inner
            return
        rest = len(node.inputs) - i - 1  # the operands after this one take one each
        for vs, ns in _cut_value(node.inputs[i], node.op, budget - rest):
            yield from operands(i + 1, budget - len(vs), values + vs, inner + ns)

    yield from operands(0, k, [], [])


def _cut_value(v: Value, op: str, budget: int) -> Iterator[tuple[list, list]]:
    yield [v], []
    p = v.producer
    if budget >= 2 and p is not None and p.op == op and len(p.inputs) == 2 and len(p.outputs) == 1:
        for vs, ns in _cuts(p, budget):
            yield vs, [p] + ns


def _assign(pats: tuple, values: list, m: Match, under: str) -> Iterator[None]:
    """Match ``pats`` to ``values`` one to one, in any order."""
    if not pats:
        yield
        return
    outer, m.under = m.under, f"operand of {under}"
    tried: list[Value] = []
    for j, v in enumerate(values):
        if any(v is t for t in tried):  # the same value again (x*x*x): the same outcomes
            continue
        tried.append(v)
        for _ in _match(pats[0], v, m):
            m.under = outer
            yield from _assign(pats[1:], values[:j] + values[j + 1:], m, under)
            m.under = f"operand of {under}"
    m.under = outer


def _attrs(pat: Op, node: Node, m: Match, items: list) -> Iterator[None]:
    if not items:
        yield
        return
    (k, want), rest = items[0], items[1:]
    got = node.attrs.get(k)
    if isinstance(want, Bind):
        for _ in _bind(m.attrs, want.name, got, lambda a, b: a == b):
            yield from _attrs(pat, node, m, rest)
    elif (want(got) if callable(want) else got == want):
        yield from _attrs(pat, node, m, rest)
    else:
        m.fail(f"{pat.op} has {k}={got!r}")


def _seq(pats, values, m: Match, under: str) -> Iterator[None]:
    if not pats:
        yield
        return
    outer, m.under = m.under, f"operand of {under}"
    for _ in _match(pats[0], values[0], m):
        m.under = outer
        yield from _seq(pats[1:], values[1:], m, under)
        m.under = f"operand of {under}"
    m.under = outer


# -- rules ----------------------------------------------------------------------------------

Check = Callable[[Match], "str | None"]


@dataclasses.dataclass
class Rule:
    name: str
    pattern: Pat
    rewrite: Callable[["Builder", Match], Value]
    check: Check | None = None

    @property
    def roots(self) -> frozenset:
        return _roots(self.pattern)


def _roots(pat: Pat) -> frozenset:
    if isinstance(pat, Op):
        return frozenset({pat.op})
    if isinstance(pat, Alt):
        return frozenset().union(*(_roots(a) for a in pat.alts))
    if isinstance(pat, Named):
        return _roots(pat.pat)
    if isinstance(pat, Custom):
        return frozenset(pat.roots)
    return frozenset()


def try_rule(rule: Rule, v: Value, uses: dict, claimed=frozenset()) -> Match | str:
    """The first match of ``rule`` at ``v`` that passes its checks, or why there is none."""
    m, why = Match(v), None
    for _ in _match(rule.pattern, v, m):
        found = m.frozen()
        why = _contained(found, uses, claimed) or (rule.check(found) if rule.check else None)
        if why is None:
            return found
    return why or m.why


def _contained(m: Match, uses: dict, claimed) -> str | None:
    inside: dict[Value, int] = {}
    for n in m.nodes:
        if n in claimed:
            return f"{n.op} is already part of another fusion"
        for v in n.inputs:
            inside[v] = inside.get(v, 0) + 1
    for n in m.nodes:
        out = n.outputs[0]
        if out is not m.root and uses.get(out, 0) != inside.get(out, 0):
            return f"the {n.op} result inside the pattern is also used outside it"
    return None


class Builder:
    """Emits the replacement: ``b.<op>(*inputs, **attrs)``; numbers become scalar constants."""

    def __init__(self, rb: Rebuild, at: Node, dtype: str):
        self.rb, self.at, self.dtype = rb, at, dtype

    def op(self, op: str, *inputs, **attrs) -> Value:
        from .rewrite import const
        ins = [x if isinstance(x, Value) else const(x, self.dtype) for x in inputs]
        return self.rb.emit(op, ins, attrs, path=self.at.path, loc=self.at.loc)[0]

    def fused(self, op: str, *inputs, **attrs) -> Value:
        """The node replacing the match's root: it has the root's type (no shape rule run)."""
        from .rewrite import const
        ins = [x if isinstance(x, Value) else const(x, self.dtype) for x in inputs]
        return self.rb.emit(op, ins, attrs, [self.at.outputs[0].type], self.at.path, self.at.loc)[0]

    def __getattr__(self, op: str):
        return lambda *inputs, **attrs: self.op(op, *inputs, **attrs)


def fuse(graph: Graph, rules: list[Rule]) -> Graph:
    """Apply ``rules`` (in order, each over the whole graph) and remove what they replaced."""
    uses = use_counts(graph)
    plan: dict[Node, tuple[Rule, Match]] = {}
    claimed: set[Node] = set()
    order = list(graph.walk())[::-1]  # consumers first: the largest match claims its nodes
    for rule in rules:
        roots = rule.roots
        for node in order:
            if node.op not in roots or node in claimed or len(node.outputs) != 1:
                continue
            m = try_rule(rule, node.outputs[0], uses, claimed)
            if isinstance(m, Match):
                plan[node] = (rule, m)
                claimed.update(m.nodes)
    if not plan:
        return graph

    def visit(old, new, rb):
        if old not in plan:
            return None
        rule, m = plan[old]
        m.values = {k: rb.get(v) for k, v in m.values.items()}
        fired(rule.name)
        out = rule.rewrite(Builder(rb, old, old.outputs[0].type.dtype), m)
        return [out]

    return eliminate_dead_code(Rebuild(graph, visit).run())


def why_not(graph: Graph, rule: Rule) -> dict[Node, str]:
    """For every node where ``rule`` could be rooted, why it does not fire (tests, debugging)."""
    uses = use_counts(graph)
    out = {}
    for node in graph.walk():
        if node.op in rule.roots and len(node.outputs) == 1:
            m = try_rule(rule, node.outputs[0], uses)
            if not isinstance(m, Match):
                out[node] = m
    return out
