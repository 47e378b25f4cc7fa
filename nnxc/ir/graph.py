"""The graph IR: Values, Nodes, Regions (nested blocks) and the Graph that holds a model.

Shaped like a jaxpr: a flat, ordered SSA list of nodes per block. Values have no names
until printed, except graph inputs (the user's argument names) and variables (their path
in the module tree).
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .types import TensorType


class Value:
    """An SSA value. ``data`` is set for constants only (an array or an ``Elided`` summary)."""

    __slots__ = ("type", "name", "producer", "data")

    def __init__(self, type: TensorType, name: str | None = None, data: Any = None):
        self.type = type
        self.name = name
        self.producer: Node | None = None
        self.data = data

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def __repr__(self) -> str:
        return f"Value({self.name or hex(id(self))}: {self.type})"


@dataclass(frozen=True)
class Elided:
    """A large constant as the text form shows it: its content hash, not its data."""

    digest: str

    @staticmethod
    def of(array: np.ndarray) -> "Elided":
        return Elided(content_hash(array))


def content_hash(array) -> str:
    """A short digest of an array's dtype, shape and bytes (what ``elided<..>`` shows).

    Digests of arrays of CACHE_MIN_BYTES or more are cached per array object, so printing
    or comparing a graph with big weights hashes each weight once. Constant data is never
    changed in place (passes make new arrays), so a cached digest stays right; the entry
    goes when its array is freed.
    """
    if getattr(array, "nbytes", 0) < CACHE_MIN_BYTES:
        return _sha(array)
    hit = _DIGESTS.get(id(array))
    if hit is not None and hit[0]() is array:
        return hit[1]
    digest = _sha(array)
    try:
        ref = weakref.ref(array, _forget(id(array)))
    except TypeError:  # not weakly referenceable: not cached
        return digest
    _DIGESTS[id(array)] = (ref, digest)
    return digest


CACHE_MIN_BYTES = 1 << 16
_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}  # id(array) -> (weak ref to it, digest)


def _forget(key: int):
    def drop(ref):
        entry = _DIGESTS.get(key)
        if entry is not None and entry[0] is ref:
            del _DIGESTS[key]
    return drop


def _sha(array) -> str:
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()[:16]


class Node:
    """One operation: ``outputs = op(inputs) {attrs}`` with optional nested regions."""

    __slots__ = ("op", "inputs", "outputs", "attrs", "regions", "path", "loc")

    def __init__(self, op: str, inputs, out_types, attrs=None, regions=(), path: str = "",
                 loc: str | None = None):
        self.op = op
        self.inputs: list[Value] = list(inputs)
        self.outputs: list[Value] = [Value(t) for t in out_types]
        for v in self.outputs:
            v.producer = self
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.regions: list[Region] = list(regions)
        self.path = path
        self.loc = loc

    def __repr__(self) -> str:
        return f"Node({self.op} @{self.path})"


class Region:
    """A nested block (a scan/while body, a cond branch): arguments, nodes, results."""

    __slots__ = ("args", "nodes", "results")

    def __init__(self, args, nodes=None, results=None):
        self.args: list[Value] = list(args)
        self.nodes: list[Node] = list(nodes or [])
        self.results: list[Value] = list(results or [])


@dataclass
class Variable:
    """A model variable: its graph input value, path in the module tree, Variable type."""

    value: Value
    path: str
    kind: str  # the Variable type name: Param, BatchStat, RngKey, RngCount, user subclasses
    meta: dict = field(default_factory=dict)  # printable metadata (sharding names, tag, ...)
    data: Any = None  # the traced value (an array); None for graphs parsed from text


@dataclass
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    consts: list[Value] = field(default_factory=list)  # non-scalar constants, in order
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    out_tree: Any = None  # PyTreeDef of the outputs (None: a flat tuple)
    updates: list[tuple[str, Value]] = field(default_factory=list)  # (variable path, new value)
    in_tree: Any = None  # PyTreeDef of the user's positional arguments (None: flat)
    meta: dict = field(default_factory=dict)  # provenance: frontend, graphdef, kwargs

    # -- lookups -----------------------------------------------------------------
    def variable(self, path: str) -> Variable:
        for v in self.variables:
            if v.path == path:
                return v
        raise KeyError(path)

    def walk(self) -> Iterator[Node]:
        """Every node, regions included, in program order."""
        stack = [iter(self.nodes)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            yield node
            for region in reversed(node.regions):
                stack.append(iter(region.nodes))

    def state(self) -> dict[str, Any]:
        """The traced variable values by path."""
        return {v.path: v.data for v in self.variables}

    def to_networkx(self):
        from .nx import to_networkx
        return to_networkx(self)

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def text(self, locs: bool = True, full_constants: bool | None = None) -> str:
        """The IR text; ``full_constants``: print every constant's data (True), elide large
        ones as ``elided<hash>`` (False), or print them when they total <= 64 KiB (None)."""
        from .printer import print_graph
        return print_graph(self, locs=locs, full_constants=full_constants)

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self.text() == other.text()

    __hash__ = None  # type: ignore[assignment]
