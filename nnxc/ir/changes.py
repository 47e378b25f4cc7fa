"""What changed between two graphs, by module: nodes removed, added and fused.

    d = nnxc.ir.diff(before, after)
    print(d)          # fold-constants-style report: per module, ops removed/added
    d.changed         # False when the graphs have the same nodes, variables and constants

Nodes are matched by what they are (op, attributes, input and output types, module path),
not by identity or value names, so renumbering is no change and a pass that rebuilds the
graph reports only what it really changed. Counting uses multisets: linear in nodes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .attrs import format_attr
from .graph import Graph, Node


def node_key(node: Node) -> tuple:
    """What a node is, without value names: op, attributes, types, module path, regions."""
    attrs = ",".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items())
    return (node.op, attrs, tuple(str(v.type) for v in node.inputs),
            tuple(str(v.type) for v in node.outputs), node.path, len(node.regions))


def node_line(node: Node) -> str:
    """One readable line for a node: ``add(f32[B,8], f32[1,8]) -> f32[B,8] {..}``."""
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items())
    if len(attrs) > 120:
        attrs = attrs[:117] + "..."
    return f"{node.op}({ins}) -> {outs}" + (f" {{{attrs}}}" if attrs else "")


@dataclass
class ModuleChange:
    module: str  # "" for top-level nodes
    removed: Counter = field(default_factory=Counter)  # op -> count
    added: Counter = field(default_factory=Counter)

    @property
    def fused_into(self) -> list[str]:
        """Higher-level ops (``nnxc.*``) that replaced removed nodes in this module."""
        return sorted(op for op in self.added if op.startswith("nnxc.")) if self.removed else []

    def describe(self) -> str:
        def ops(c: Counter) -> str:
            return ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in c.most_common())
        parts = []
        if self.fused_into:
            parts.append(f"fused {sum(self.removed.values())} node(s) into {', '.join(self.fused_into)}")
        if self.removed:
            parts.append(f"-{sum(self.removed.values())} {ops(self.removed)}")
        if self.added:
            parts.append(f"+{sum(self.added.values())} {ops(self.added)}")
        return "; ".join(parts)


@dataclass
class GraphDiff:
    nodes_before: int
    nodes_after: int
    modules: list[ModuleChange]
    variables_removed: list[str]
    variables_added: list[str]
    consts_before: int
    consts_after: int
    updates_removed: list[str]
    outputs_changed: bool

    @property
    def changed(self) -> bool:
        return bool(self.modules or self.variables_removed or self.variables_added or self.updates_removed
                    or self.consts_before != self.consts_after or self.outputs_changed)

    def summary(self) -> str:
        delta = self.nodes_after - self.nodes_before
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({delta:+d})" if delta else f"{self.nodes_after} nodes"

    def lines(self) -> list[str]:
        out = []
        width = max((len(m.module or "<top>") for m in self.modules), default=5)
        for m in self.modules:
            out.append(f"{m.module or '<top>':<{width}}  {m.describe()}")
        if self.variables_removed:
            out.append(f"variables removed ({len(self.variables_removed)}): {_some(self.variables_removed)}")
        if self.variables_added:
            out.append(f"variables added ({len(self.variables_added)}): {_some(self.variables_added)}")
        if self.consts_before != self.consts_after:
            out.append(f"constants: {self.consts_before} -> {self.consts_after}")
        if self.updates_removed:
            out.append(f"updates dropped ({len(self.updates_removed)}): {_some(self.updates_removed)}")
        if self.outputs_changed:
            out.append("outputs changed")
        return out

    def __str__(self) -> str:
        return "\n".join([self.summary()] + ["  " + x for x in self.lines()] if self.changed else ["no change"])


def _some(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit})" if len(items) > limit else "")


def diff(before: Graph, after: Graph) -> GraphDiff:
    """Nodes removed/added (fused) by module, variables, constants and updates changed."""
    a = Counter(node_key(n) for n in before.walk())
    b = Counter(node_key(n) for n in after.walk())
    modules: dict[str, ModuleChange] = {}
    for key, count in (a - b).items():
        modules.setdefault(key[4], ModuleChange(key[4])).removed[key[0]] += count
    for key, count in (b - a).items():
        modules.setdefault(key[4], ModuleChange(key[4])).added[key[0]] += count
    va = {v.path for v in before.variables}
    vb = {v.path for v in after.variables}
    ua = [p for p, _ in before.updates]
    ub = {p for p, _ in after.updates}
    return GraphDiff(
        nodes_before=sum(a.values()), nodes_after=sum(b.values()),
        modules=[modules[k] for k in sorted(modules)],
        variables_removed=[v.path for v in before.variables if v.path not in vb],
        variables_added=[v.path for v in after.variables if v.path not in va],
        consts_before=len(before.consts), consts_after=len(after.consts),
        updates_removed=[p for p in ua if p not in ub],
        outputs_changed=[str(v.type) for v in before.outputs] != [str(v.type) for v in after.outputs],
    )
