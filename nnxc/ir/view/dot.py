"""Graphviz DOT of a Graph: nodes coloured by op family, clustered by module path.

    dot -Tsvg model.dot > model.svg

Inputs, outputs and updates are ovals, variables notes (in their module's cluster),
constants plain boxes; a node with regions (scan, while, cond) is a cluster holding its
bodies. The text is deterministic (no source locations unless ``locs=True``).
"""
from __future__ import annotations

from ..graph import Graph, Node
from ..jsonio import value_names
from ..printer import is_inline_const
from .families import COLORS, op_family

_HEAD = """\
  graph [rankdir=TB, fontname="Helvetica", fontsize=11, labeljust=l, nodesep=0.25, ranksep=0.35];
  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, penwidth=1.2, margin="0.12,0.04"];
  edge [color="#8a94a3", arrowsize=0.6, penwidth=0.9];"""


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _types(values, limit: int = 2) -> str:
    text = ", ".join(str(v.type) for v in values[:limit])
    return text + (f", +{len(values) - limit}" if len(values) > limit else "")


class _Trie:
    __slots__ = ("children", "lines")

    def __init__(self):
        self.children: dict[str, _Trie] = {}
        self.lines: list[str] = []

    def add(self, path: str, line: str) -> None:
        t = self
        for part in path.split(".") if path else ():
            t = t.children.setdefault(part, _Trie())
        t.lines.append(line)


class _Dot:
    def __init__(self, graph: Graph, locs: bool):
        self.graph, self.locs = graph, locs
        self.names = value_names(graph).names
        self.src: dict[int, str] = {}  # id(value) -> DOT id of what defines it
        self.edges: list[str] = []
        self.count = 0  # clusters
        self.n = -1  # nodes

    def cluster(self) -> str:
        self.count += 1
        return f"cluster_{self.count}"

    def emit_trie(self, t: _Trie, out: list[str], indent: str, label: str = "") -> None:
        for part, child in t.children.items():
            name = part
            while not child.lines and len(child.children) == 1:  # merge a.b.c chains
                (sub, child), = child.children.items()
                name += "." + sub
            out.append(f"{indent}subgraph {self.cluster()} {{")
            out.append(f'{indent}  label={_q(name)}; style="rounded"; color="#b9c2cf"; fontcolor="#3d4a5c";')
            self.emit_trie(child, out, indent + "  ")
            out.append(f"{indent}}}")
        out.extend(indent + text for line in t.lines for text in line.split("\n"))

    def edge(self, v, dst: str) -> None:
        if is_inline_const(v):
            return
        src = self.src.get(id(v))
        if src is not None:
            self.edges.append(f"  {src} -> {dst};")

    def nodes(self, nodes: list[Node], trie: _Trie) -> None:
        for node in nodes:
            nid = _q(f"n{self.count_node()}")
            fill, accent = COLORS[op_family(node.op)]
            label = node.op + ("\n" + _types(node.outputs) if node.outputs else "")
            tip = node.path + (f" {node.loc}" if self.locs and node.loc else "")
            line = f"{nid} [label={_q(label)}, fillcolor={_q(fill)}, color={_q(accent)}, tooltip={_q(tip)}];"
            for v in node.inputs:
                self.edge(v, nid)
            if not node.regions:
                trie.add(node.path, line)
            else:
                trie.add(node.path, "\n".join(self.region_cluster(node, line)))
            for v in node.outputs:
                self.src[id(v)] = nid

    def count_node(self) -> int:
        self.n += 1
        return self.n

    def region_cluster(self, node: Node, line: str) -> list[str]:
        out = [f"subgraph {self.cluster()} {{",
               f'  label={_q(node.op)}; style="rounded,dashed"; color="#11829a"; fontcolor="#11829a";', "  " + line]
        for i, region in enumerate(node.regions):
            trie = _Trie()
            for a in region.args:
                aid = _q("%" + self.names[id(a)])
                self.src[id(a)] = aid
                trie.lines.append(f'{aid} [label={_q(str(a.type))}, shape=ellipse, style="filled", '
                                  f'fillcolor="#ffffff", color="#b9c2cf", fontsize=9];')
            self.nodes(region.nodes, trie)
            yid = _q(f"yield{self.count_node()}")
            trie.lines.append(f'{yid} [label="yield", shape=ellipse, style="filled", fillcolor="#ffffff", '
                              f'color="#11829a", fontsize=9];')
            for v in region.results:
                self.edge(v, yid)
            out.append(f"  subgraph {self.cluster()} {{")
            out.append(f'    label={_q(f"region {i}")}; style="rounded"; color="#cfe6ea";')
            body: list[str] = []
            self.emit_trie(trie, body, "")
            out.extend("    " + text for text in body)
            out.append("  }")
        out.append("}")
        return out

    def render(self) -> str:
        g, trie = self.graph, _Trie()
        io = 'shape=ellipse, style="filled", fillcolor="#2b3440", fontcolor="#ffffff", color="#2b3440"'
        for v in g.inputs:
            vid = _q("%" + self.names[id(v)])
            self.src[id(v)] = vid
            label = _q(f"{self.names[id(v)]}\n{v.type}")
            trie.lines.append(f"{vid} [label={label}, {io}];")
        for var in g.variables:
            vid = _q("%" + var.path)
            self.src[id(var.value)] = vid
            module, _, leaf = var.path.rpartition(".")
            label = _q(f"{leaf}\n{var.value.type}\n{var.kind}")
            trie.add(module, f'{vid} [label={label}, shape=note, '
                             f'style="filled", fillcolor="#fffdf5", color="#c9b37a", fontsize=9];')
        for i, c in enumerate(g.consts):
            cid = _q(f"%c{i}")
            self.src[id(c)] = cid
            label = _q(f"c{i}\n{c.type}")
            trie.lines.append(f'{cid} [label={label}, shape=box, style="filled", '
                              f'fillcolor="#f7f7f7", color="#c4c4c4", fontsize=9];')
        self.nodes(g.nodes, trie)
        for i, v in enumerate(g.outputs):
            oid = _q(f"out{i}")
            label = _q(f"output {i}\n{v.type}")
            trie.lines.append(f"{oid} [label={label}, {io}];")
            self.edge(v, oid)
        for path, v in g.updates:
            uid = _q(f"update:{path}")
            trie.lines.append(f'{uid} [label={_q(f"update {path}")}, shape=ellipse, style="filled", '
                              f'fillcolor="#ffffff", color="#c9b37a", fontsize=9];')
            self.edge(v, uid)
        body: list[str] = []
        self.emit_trie(trie, body, "  ")
        return "\n".join([f"digraph {_q(g.name)} {{", _HEAD, *body, *self.edges, "}"]) + "\n"


def to_dot(graph: Graph, locs: bool = False) -> str:
    """Graphviz DOT text of ``graph`` (deterministic; ``locs=True`` adds source lines as tooltips)."""
    return _Dot(graph, locs).render()
