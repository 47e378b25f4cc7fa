"""``to_html(graph)``: one self-contained HTML page to explore a graph (no network, file://).

The page holds the graph as JSON (items, edges and per-box layers from ``model.py``), the
class of each module box (``graph.meta["module_types"]``, when the frontend recorded it), the
details of every node and variable (attributes, types, source lines, weight statistics),
the module table of ``ir.summary``, and inline CSS/JS (``page.css``, ``page.js``,
``panel.js``) that draw the visible boxes as SVG.
"""
from __future__ import annotations

import gc
import html
import json
import re
from importlib import resources

import numpy as np

from ..attrs import format_attr
from ..graph import Graph
from ..jsonio import value_names
from ..printer import format_const, is_inline_const
from ..types import to_dtype
from .families import COLORS, op_family
from .model import PageModel

FAMILIES = list(COLORS)
ATTR_LIMIT = 4000  # characters of one attribute's text shown in the page


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def default_dims(graph: Graph, dims: dict | None = None) -> dict:
    """Sizes for the symbolic dims of the inputs (1 unless given), for FLOP counts."""
    out = dict(dims or {})
    for v in graph.inputs:
        for d in v.type.shape:
            if isinstance(d, str):
                for s in re.findall(r"[A-Za-z_]\w*", d):
                    out.setdefault(s, 1)
    return out


def value_stats(data) -> dict | None:
    """min/max/mean/std, share of zeros and a 24-bin histogram of an array (None if not numeric)."""
    if data is None:
        return None
    try:
        a = np.asarray(data)
        if a.dtype.kind not in "biuf":
            a = a.astype(np.float32)
    except Exception:  # noqa: BLE001 - PRNG keys and other opaque values have no statistics
        return None
    a = a.reshape(-1)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.size == 0:
        return None
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        a = a[np.isfinite(a)]
        if a.size == 0:
            return None
    sample = a[:: max(1, a.size // 1_000_000)].astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    counts, _ = np.histogram(sample, bins=24, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
    return {"min": lo, "max": hi, "mean": float(np.mean(a, dtype=np.float64)), "std": float(sample.std()),
            "zeros": float(np.count_nonzero(sample == 0) / sample.size), "hist": counts.tolist()}


def _itemsize(dtype: str) -> int:
    return 8 if dtype.startswith("key") else np.dtype(to_dtype(dtype)).itemsize


def page_data(graph: Graph, dims: dict | None = None, collectives: list | None = None) -> dict:
    """Everything the page shows, as JSON-ready lists (see page.js for the field names).

    ``collectives``: rows of ``Compiled.collectives()`` (a graph compiled on a mesh), shown
    per module."""
    from ..summary import module_table, node_flops
    dims = default_dims(graph, dims)
    m = PageModel(graph)
    names = value_names(graph)
    types: dict[str, int] = {}

    def ty(text: str) -> int:
        return types.setdefault(text, len(types))

    def flops_of(node) -> int:
        try:
            return node_flops(node, dims)
        except Exception:  # noqa: BLE001 - an op without a FLOP rule (or odd dims) counts 0
            return 0

    nops, params, flops, mix = m.totals(flops_of)
    n = len(m.kind)
    label, sub, detail, fam = list(m.label), [""] * n, [None] * n, [-1] * n
    users_v: list[list[int]] = [[] for _ in graph.variables]
    users_c: list[list[int]] = [[] for _ in graph.consts]
    for i in range(n):
        k, node, obj = m.kind[i], m.node[i], m.obj[i]
        for c in m.chips[i]:
            (users_v[c] if c >= 0 else users_c[-1 - c]).append(i)
        if node is not None:
            fam[i] = FAMILIES.index(op_family(node.op))
            outs = [str(v.type) for v in node.outputs]
            sub[i] = (outs[0] + (f" +{len(outs) - 1}" if len(outs) > 1 else "")) if outs else "()"
            ins = []
            for v in node.inputs:
                chip = m.chip_of.get(id(v)) if not is_inline_const(v) else None
                name = names.ref(v) if chip is None or chip < 0 else "%" + graph.variables[chip].path
                ins.append([name, ty(str(v.type)), m.src.get(id(v), -1), chip])
            attrs = [[a, format_attr(x)[:ATTR_LIMIT]] for a, x in node.attrs.items()]
            detail[i] = [node.op, node.path, node.loc or "", attrs, ins,
                         [["%" + names.names[id(v)], ty(str(v.type))] for v in node.outputs]]
        elif k == "m":
            detail[i] = m.path[i]
        elif k == "y":
            sub[i] = ", ".join(str(x.type) for x in obj.results)
            sub[i] = sub[i] if len(sub[i]) < 60 else sub[i][:57] + "..."
            detail[i] = ["yield", ty(sub[i])]
        elif k in ("i", "o", "u", "a"):
            if k == "a":
                label[i] = "%" + names.names[id(obj)]
            sub[i] = str(obj.type)
            detail[i] = [("update " if k == "u" else "") + label[i], ty(sub[i])]
    types_of = graph.meta.get("module_types")
    types_of = types_of if isinstance(types_of, dict) else {}
    classes = {str(i): str(types_of[m.path[i]]) for i in range(n)
               if m.kind[i] == "m" and types_of.get(m.path[i])}
    edges: list[int] = []
    for s, d, v in m.edges:
        edges += [s, d, ty(str(v.type))]
    variables = []
    for var, users in zip(graph.variables, users_v):
        t = var.value.type
        size = t.size()
        variables.append([var.path, var.kind, ty(str(t)), size, None if size is None else size * _itemsize(t.dtype),
                          [[k, format_attr(x)] for k, x in var.meta.items()], value_stats(var.data), users])
    consts = [[f"c{j}", ty(str(c.type)), format_const(c), users] for j, (c, users) in enumerate(zip(graph.consts, users_c))]
    return {
        "name": graph.name, "dims": ", ".join(f"{k}={v}" for k, v in dims.items()) or "static shapes",
        "fam": FAMILIES, "colors": COLORS,
        "K": "".join("R" if k == "root" else k for k in m.kind), "P": m.parent, "L": label, "T": sub, "F": fam,
        "C": m.children, "Y": m.layer, "H": m.chips, "N": nops, "PA": params, "FL": flops,
        "MX": [None if x is None else [[FAMILIES.index(f), c] for f, c in sorted(x.items())] for x in mix],
        "E": edges, "TY": list(types), "DT": detail, "MC": classes, "V": variables, "CN": consts,
        "MT": _module_rows(graph, module_table, dims),
        "CO": [[str(r["module"]), str(r["op"]), str(r["shape"]), int(r["bytes"]), str(r.get("axes", ""))]
               for r in collectives or ()],
        "MESH": collectives is not None,
    }


def _module_rows(graph: Graph, module_table, dims: dict) -> list:
    try:
        top, second = module_table(graph, dims, depth=1), module_table(graph, dims, depth=2)
    except Exception:  # noqa: BLE001 - the page still works without the table
        return []
    rows = [[r["module"], r["params"], r["bytes"], r["flops"], r["nodes"], r["top_ops"], 1, "", r.get("class", "")]
            for r in top]
    names = {r["module"] for r in top}
    for r in second:
        parent = next((p for p in names if r["module"].startswith(p + ".")), None)
        if parent is not None:
            rows.append([r["module"], r["params"], r["bytes"], r["flops"], r["nodes"], r["top_ops"], 2, parent,
                         r.get("class", "")])
    return rows


def _facts(data: dict, graph: Graph) -> str:
    from ..summary import _bytes
    total_bytes = sum(v[4] or 0 for v in data["V"])
    ins = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    outs = ", ".join(str(v.type) for v in graph.outputs)
    parts = [f"<b>{data['N'][0]:,}</b> ops", f"<b>{data['PA'][0]:,}</b> params ({_bytes(total_bytes)})",
             f"<b>{_si(data['FL'][0])}</b>FLOPs at {html.escape(data['dims'])}", f"{html.escape(ins)} → {html.escape(outs)}"]
    return " · ".join(parts)


def _si(x: float) -> str:
    for d, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if x >= d:
            return f"{x / d:.2f} {u}"
    return f"{x:g} "


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@ · nnxc IR</title>
<style>@CSS@</style></head>
<body>
<header><h1>@NAME@</h1><div class="facts">@FACTS@</div>
<div class="search"><svg viewBox="0 0 14 14"><circle cx="6" cy="6" r="4.5"/><path d="M9.5 9.5L13 13"/></svg>
<input id="q" type="search" placeholder="Search ops, modules, variables   ( / )" autocomplete="off" spellcheck="false">
<div id="results" class="results"></div></div></header>
<main><svg id="graph"><defs>
<marker id="ah" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L8,4L0,8z" fill="#9aa5b4"/></marker>
<marker id="ahot" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0L8,4L0,8z" fill="#ff9f1c"/></marker>
<filter id="shadow" x="-10%" y="-20%" width="120%" height="150%"><feDropShadow dx="0" dy="1.5" stdDeviation="2" flood-color="#1a2a40" flood-opacity="0.13"/></filter>
</defs><g id="vp"></g></svg>
<div class="tools"><button id="fit" title="fit to screen (f)">Fit</button><button id="expand">Expand all</button><button id="collapse">Collapse all</button></div>
<div class="legend">@LEGEND@</div></main>
<aside><div class="tabs"><button data-tab="details" class="on">Details</button><button data-tab="modules">Modules</button></div>
<div id="details" class="pane on"></div><div id="modules" class="pane"></div></aside>
<script type="application/json" id="nnxc-data">@DATA@</script>
<script>@PAGEJS@</script>
<script>@PANELJS@</script>
</body></html>
"""


def to_html(graph: Graph, title: str | None = None, dims: dict | None = None,
            collectives: list | None = None) -> str:
    """One self-contained HTML page to explore ``graph`` (modules collapsed, details on click);
    each variable shows its sharding, and with ``collectives`` (``Compiled.collectives()`` of
    the graph compiled on a mesh) each module the collectives XLA inserted for it."""
    gc_on = gc.isenabled()
    gc.disable()  # many small lists and strings: full collections would cost O(heap) each
    try:
        data = page_data(graph, dims, collectives)
    finally:
        if gc_on:
            gc.enable()
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    legend = "".join(f'<span><i style="background:{COLORS[f][1]}"></i>{f}</span>'
                     for f in FAMILIES if f not in ("io",))
    parts = {"@TITLE@": html.escape(title or graph.name), "@NAME@": html.escape(title or graph.name),
             "@FACTS@": _facts(data, graph), "@LEGEND@": legend, "@CSS@": _asset("page.css"),
             "@PAGEJS@": _asset("page.js"), "@PANELJS@": _asset("panel.js"), "@DATA@": payload}
    return re.sub("|".join(map(re.escape, parts)), lambda mt: parts[mt.group(0)], _TEMPLATE)
