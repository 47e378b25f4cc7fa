"""NNX Filters matched against the IR's variables, through flax's own filter machinery.

A filter is anything ``nnx.state`` / ``nnx.split`` take: Variable types (``nnx.Param``, user
subclasses), tag strings, ``nnx.PathContains``, ``nnx.Any`` / ``nnx.All`` / ``nnx.Not``,
``...``, ``True`` / ``False``, predicates, lists/tuples. ``filterlib.to_predicate`` turns it
into ``predicate(path, value)``; we call it with the variable's path as a tuple (list indices
as ints, as NNX has them) and a Variable of the variable's type carrying its metadata.

``parse_filter`` reads the CLI's small filter syntax.
"""
from __future__ import annotations

import fnmatch
import re
import warnings

import numpy as np
from flax import nnx
from flax.nnx import filterlib

from ..errors import NnxcError, NnxcWarning
from ..ir.graph import Graph, Variable

from ..ir import kinds as _kinds  # stand-in Variable classes for unknown kinds live there
from ..ir.kinds import LINEN_KINDS, _subclasses, variable_class  # noqa: F401 - re-exported


def path_parts(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def stand_in(var: Variable):
    """A Variable of ``var``'s type holding its metadata, for filters that look at the value."""
    cls = variable_class(var.kind)
    meta = {k: v for k, v in var.meta.items() if k != "new"}
    for attempt in (meta, {k: v for k, v in meta.items() if k == "tag"}, {}):
        try:
            return cls(np.zeros((), np.float32), **attempt)
        except Exception:  # noqa: BLE001 - metadata such as shardings may need a mesh
            continue
    return cls.__new__(cls)


def matches(graph: Graph, filter) -> list[Variable]:
    """The graph's variables that ``filter`` selects."""
    try:
        pred = filterlib.to_predicate(filter)
    except TypeError as e:
        raise NnxcError(f"not an NNX filter: {filter!r} ({e})") from None
    return [var for var in graph.variables if pred(path_parts(var.path), stand_in(var))]


# -- the CLI's filter syntax ------------------------------------------------------------

_TYPE = re.compile(r"[A-Z][A-Za-z0-9_]*")


def known_types(graph: Graph | None = None) -> list[str]:
    """Variable type names a filter may use: flax's own, loaded subclasses, the graph's kinds."""
    names = {sub.__name__ for sub in _subclasses(nnx.Variable)
             if sub.__module__ != _kinds.__name__ and not sub.__name__.startswith("_")}
    if graph is not None:
        names |= {LINEN_KINDS.get(v.kind, v.kind) for v in graph.variables}
    return sorted(names)


def parse_filter(text: str, graph: Graph | None = None):
    """``BatchStat``, ``*.dropout.*``, ``dropout``, ``tag:default``, ``!Param``, ``a,b`` (any of).

    A capitalized word is a Variable type, a word with ``*``, ``?`` or ``.`` a glob over the
    dotted path, ``tag:NAME`` a tag, ``...`` / ``all`` everything, other words a path part.

    A Variable type that no loaded class (nor a variable of ``graph``) has, or a part that
    selects nothing to negate or no tag, is an ``NnxcError`` naming what exists. With
    ``graph``, each comma-separated part that selects none of its variables gets an
    ``NnxcWarning`` (a typo would otherwise freeze or prune nothing, silently).
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise NnxcError(f"empty filter {text!r}: write Variable types, path globs or path parts "
                        "separated by commas, e.g. BatchStat or *.dropout.*")
    types = None if graph is None else set(known_types(graph))
    filters = [_one(p, types) for p in parts]
    if graph is not None:
        for part, f in zip(parts, filters):
            if not matches(graph, f):
                warnings.warn(f"filter {part!r} selects no variable of {graph.name} "
                              f"({_inventory(graph)})", NnxcWarning, stacklevel=2)
    return filters[0] if len(filters) == 1 else nnx.Any(*filters)


def _inventory(graph: Graph, limit: int = 6) -> str:
    kinds = sorted({v.kind for v in graph.variables})
    paths = [v.path for v in graph.variables]
    if not paths:
        return "it has no variables"
    shown = ", ".join(paths[:limit]) + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")
    return f"its types: {', '.join(kinds)}; its variables: {shown}"


def _one(p: str, types: set | None = None):
    if p.startswith("!"):
        if not p[1:].strip():
            raise NnxcError(f"filter part {p!r} negates nothing: write !NAME, e.g. !Param or !*.bn*")
        return nnx.Not(_one(p[1:].strip(), types))
    if p in ("...", "all"):
        return ...
    if p.startswith("tag:"):
        if not p[4:]:
            raise NnxcError(f"filter part {p!r} names no tag: write tag:NAME")
        return p[4:]  # a str filter is WithTag
    if _TYPE.fullmatch(p):
        if types is not None and LINEN_KINDS.get(p, p) not in types and not _is_loaded_type(p):
            raise NnxcError(f"unknown Variable type {p!r}: known types are {', '.join(sorted(types))} "
                            "(a capitalized word is a type; write a path part in lower case or a "
                            "glob like *.Name.*)")
        return variable_class(p)
    if any(c in p for c in "*?."):
        return _Glob(p)
    return nnx.PathContains(int(p) if p.isdigit() else p)


def _is_loaded_type(name: str) -> bool:
    cls = getattr(nnx, name, None)
    if isinstance(cls, type) and issubclass(cls, nnx.Variable):
        return True
    return any(sub.__name__ == name and sub.__module__ != _kinds.__name__
               for sub in _subclasses(nnx.Variable))


class _Glob:
    def __init__(self, pattern: str):
        self.pattern = pattern

    def __call__(self, path, value) -> bool:
        return fnmatch.fnmatchcase(".".join(str(p) for p in path), self.pattern)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"
