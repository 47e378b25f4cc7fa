"""The HTML view's model: the graph as nested boxes (module paths, regions) with a layout.

Every drawable thing is an *item*: a node (``n``), a node with regions (``x``, a box
holding one ``r`` box per region), a module box (``m``), or a terminal: graph input
(``i``), output (``o``), update (``u``), region argument (``a``), region yield (``y``).
Variables and constants are not items: they are *chips* on the nodes that use them
(also through scan/while/cond arguments bound to them), so the drawing stays small.

Each box's children get a layer and an order here, in Python, in linear time: edges are
lifted to the children of their lowest common box, layered by longest path in program
order (edges pointing back in program order are drawn but not layered: collapsing
modules can make cycles), sources pulled down next to their users, and each layer
ordered by the barycentre of its predecessors. The browser only sizes and places the
boxes a person has expanded.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from ..graph import Graph, Node
from ..printer import is_inline_const
from .families import op_family

BIG = 1 << 40


class PageModel:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.kind: list[str] = []
        self.parent: list[int] = []
        self.label: list[str] = []
        self.raw: list[str] = []  # the last path part of a module box (for merging chains)
        self.path: list[str] = []
        self.children: list[list[int]] = []
        self.chips: list[list[int]] = []  # variable index v as v, constant index c as -1 - c
        self.node: list[Node | None] = []
        self.obj: list = []  # the Value of a terminal, the Region of an ``r`` box or a yield
        self.seq: list[int] = []
        self.layer: list[int] = []
        self.edges: list[tuple[int, int, object]] = []  # (src item, dst item, value)
        self.src: dict[int, int] = {}  # id(value) -> item defining it
        self.chip_of: dict[int, int] = {}  # id(value) -> chip code
        self.boxes: dict[tuple[int, str], int] = {}
        self.count = 0
        self.build()
        self.merge_chains()
        self.compact()
        self.lay_out()

    # -- building ------------------------------------------------------------------------
    def add(self, kind: str, parent: int, label: str, path: str = "", node: Node | None = None,
            obj=None) -> int:
        i = len(self.kind)
        for lst, x in ((self.kind, kind), (self.parent, parent), (self.label, label), (self.raw, label),
                       (self.path, path), (self.node, node), (self.obj, obj), (self.seq, BIG), (self.layer, 0)):
            lst.append(x)
        self.children.append([])
        self.chips.append([])
        if parent >= 0:
            self.children[parent].append(i)
        return i

    def stamp(self, i: int) -> int:
        self.seq[i] = self.count
        self.count += 1
        return i

    def module_box(self, block: int, path: str) -> int:
        if not path:
            return block
        box = self.boxes.get((block, path))
        if box is None:
            head, _, part = path.rpartition(".")
            label = f"{head.rpartition('.')[2]}.{part}" if part.isdigit() and head else part
            box = self.add("m", self.module_box(block, head), label, path)
            self.raw[box] = part
            self.boxes[(block, path)] = box
        return box

    def use(self, v, i: int) -> None:
        if is_inline_const(v):
            return
        chip = self.chip_of.get(id(v))
        if chip is not None:
            if chip not in self.chips[i]:
                self.chips[i].append(chip)
        elif id(v) in self.src:
            self.edges.append((self.src[id(v)], i, v))

    def build(self) -> None:
        g = self.graph
        root = self.add("root", -1, g.name)
        for k, var in enumerate(g.variables):
            self.chip_of[id(var.value)] = k
        for k, c in enumerate(g.consts):
            self.chip_of[id(c)] = -1 - k
        for v in g.inputs:
            self.src[id(v)] = self.stamp(self.add("i", root, v.name or "arg", obj=v))
        self.visit(g.nodes, root)
        for k, v in enumerate(g.outputs):
            self.use(v, self.stamp(self.add("o", root, f"output {k}" if len(g.outputs) > 1 else "output", obj=v)))
        for path, v in g.updates:
            self.use(v, self.stamp(self.add("u", root, path, obj=v)))

    def visit(self, nodes: list[Node], block: int) -> None:
        for node in nodes:
            box = self.module_box(block, node.path)
            i = self.stamp(self.add("x" if node.regions else "n", box, node.op, node.path, node))
            bound: set[int] = set()  # inputs that flow into region arguments
            plans = []
            for r, region in enumerate(node.regions):
                outer = region_operands(node, r)
                ri = self.add("r", i, region_label(node, r), obj=region)
                plans.append((region, ri, outer))
                for a, o in zip(region.args, outer):
                    chip = None if o is None else self.chip_of.get(id(o))
                    if chip is not None:
                        self.chip_of[id(a)] = chip
                    else:
                        ai = self.stamp(self.add("a", ri, "arg", obj=a))
                        self.src[id(a)] = ai
                        if o is not None:
                            self.use(o, ai)
                            bound.add(id(o))
            for v in node.inputs:
                if id(v) not in bound:
                    self.use(v, i)
            for region, ri, _ in plans:
                self.visit(region.nodes, ri)
                yi = self.stamp(self.add("y", ri, "yield", obj=region))
                for v in region.results:
                    self.use(v, yi)
            for v in node.outputs:
                self.src[id(v)] = i

    def merge_chains(self) -> None:
        """A module box whose only child is a module box becomes one box (``a.b``)."""
        for b in range(len(self.kind)):
            while self.kind[b] == "m" and len(self.children[b]) == 1 and self.kind[self.children[b][0]] == "m":
                c = self.children[b][0]
                self.label[b] = f"{self.label[b]}.{self.raw[c]}"
                self.path[b] = self.path[c]
                self.children[b] = self.children[c]
                for k in self.children[b]:
                    self.parent[k] = b
                self.kind[c], self.children[c] = "dead", []

    def compact(self) -> None:
        keep = [i for i, k in enumerate(self.kind) if k != "dead"]
        new = {old: n for n, old in enumerate(keep)}
        for name in ("kind", "label", "path", "chips", "node", "obj", "seq", "layer"):
            lst = getattr(self, name)
            setattr(self, name, [lst[i] for i in keep])
        self.parent = [new.get(self.parent[i], -1) for i in keep]
        self.children = [[new[k] for k in self.children[i]] for i in keep]
        self.edges = [(new[s], new[d], v) for s, d, v in self.edges]
        self.src = {v: new[i] for v, i in self.src.items()}
        del self.raw, self.boxes

    # -- layout -------------------------------------------------------------------------
    def lay_out(self) -> None:
        n = len(self.kind)
        depth = [0] * n
        for i in range(1, n):  # parents come before their children
            depth[i] = depth[self.parent[i]] + 1
        for i in range(n - 1, 0, -1):
            p = self.parent[i]
            self.seq[p] = min(self.seq[p], self.seq[i])
        local: dict[int, set] = defaultdict(set)
        for s, d, _ in self.edges:
            while depth[s] > depth[d]:
                s = self.parent[s]
            while depth[d] > depth[s]:
                d = self.parent[d]
            if s == d:
                continue
            while self.parent[s] != self.parent[d]:
                s, d = self.parent[s], self.parent[d]
            local[self.parent[s]].add((s, d))
        for box in range(n):
            if self.children[box]:
                self.lay_out_box(box, local.get(box, ()))

    def lay_out_box(self, box: int, edges) -> None:
        kids = sorted(self.children[box], key=self.seq.__getitem__)
        pos = {k: j for j, k in enumerate(kids)}
        preds: dict[int, list[int]] = defaultdict(list)
        succs: dict[int, list[int]] = defaultdict(list)
        for s, d in sorted(edges):
            if pos[s] < pos[d]:  # a back edge (possible once modules are collapsed) is not layered
                preds[d].append(s)
                succs[s].append(d)
        layer = {}
        for k in kids:
            layer[k] = max((layer[p] + 1 for p in preds[k]), default=0)
        for k in reversed(kids):  # pull sources (constants, masks, inputs) down to their users
            if not preds[k] and succs[k]:
                layer[k] = max(layer[k], min(layer[d] for d in succs[k]) - 1)
        rank = {x: j for j, x in enumerate(sorted(set(layer.values())))}
        by_layer: dict[int, list[int]] = defaultdict(list)
        for k in kids:
            self.layer[k] = rank[layer[k]]
            by_layer[self.layer[k]].append(k)
        order: dict[int, float] = {}
        out = []
        for r in sorted(by_layer):
            row = by_layer[r]
            keyed = sorted(row, key=lambda k: (sum(order[p] for p in preds[k]) / len(preds[k]) if preds[k]
                                               else -1.0, pos[k]))
            for j, k in enumerate(keyed):
                order[k] = j - (len(keyed) - 1) / 2  # centred, so rows of different widths line up
            out.extend(keyed)
        self.children[box] = out

    # -- totals -------------------------------------------------------------------------
    def totals(self, flops_of) -> tuple[list[int], list[int], list[int], list[dict]]:
        """Per item: node count, parameters, FLOPs and op-family counts (boxes roll up)."""
        n = len(self.kind)
        nops, flops, params = [0] * n, [0] * n, [0] * n
        mix: list[Counter | None] = [Counter() if self.children[i] else None for i in range(n)]
        sizes = [var.value.type.size() or 0 for var in self.graph.variables]
        by_module: Counter = Counter()
        for var, size in zip(self.graph.variables, sizes):
            parts = var.path.split(".")
            for j in range(len(parts)):
                by_module[".".join(parts[:j])] += size
        trips = [1] * n  # how often an item runs: scan bodies run ``length`` times
        for i in range(1, n):
            p, k = self.parent[i], self.kind[i]
            trips[i] = trips[p]
            if k == "r" and self.node[p].op == "scan":
                trips[i] *= int(self.node[p].attrs.get("length", 1))
            if k in ("n", "x"):
                nops[i] = 1
                if k == "n":
                    flops[i] = trips[i] * flops_of(self.node[i])
                else:
                    mix[i][op_family(self.node[i].op)] += 1
            if k == "m":
                params[i] = by_module[self.path[i]]
            elif k == "x":
                params[i] = sum(sizes[c] for c in self.chips[i] if c >= 0)
        params[0] = sum(sizes)
        for i in range(n - 1, 0, -1):
            p = self.parent[i]
            nops[p] += nops[i]
            flops[p] += flops[i]
            if mix[i] is not None:
                mix[p].update(mix[i])
            elif self.kind[i] == "n":
                mix[p][op_family(self.node[i].op)] += 1
        return nops, params, flops, [dict(m) if m is not None else None for m in mix]


def region_operands(node: Node, r: int) -> list:
    """The outer values bound to region ``r``'s arguments (``None`` where unknown)."""
    ins, n = node.inputs, len(node.regions[r].args)
    if node.op == "while":
        cn, bn = node.attrs.get("cond_nconsts", 0), node.attrs.get("body_nconsts", 0)
        outer = (ins[:cn] if r == 0 else ins[cn:cn + bn]) + ins[cn + bn:]
    elif node.op == "cond":
        outer = ins[1:]
    elif node.op in ("reduce", "reduce_window"):  # (accumulators..., elements...) <- (inits, operands)
        outer = ins[len(ins) // 2:] + ins[:len(ins) // 2]
    else:
        outer = ins
    return list(outer) if len(outer) == n else [None] * n


def region_label(node: Node, r: int) -> str:
    if node.op == "while":
        return ("cond", "body")[r] if r < 2 else f"region {r}"
    if node.op == "cond":
        return f"branch {r}"
    if node.op in ("reduce", "reduce_window"):
        return "reducer"
    return "body" if len(node.regions) == 1 else f"region {r}"
