"""One HTML page with what each pass did: changes by module and before/after op listings.

``steps`` are objects with ``name``, ``before``, ``after`` (Graphs), ``seconds``, ``fired``
and ``diff`` (``nnxc.ir.diff``), as ``nnxc.runtime.passdiff.step_passes`` makes them.
"""
from __future__ import annotations

import difflib
import html
from collections import defaultdict

from ..changes import node_line
from ..graph import Graph

CONTEXT = 2  # unchanged lines shown around a change
_CSS = """
body{margin:0;font:13px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1f2733;background:#f5f6f8}
header{background:#fff;border-bottom:1px solid #e3e7ed;padding:14px 24px}h1{font-size:17px;margin:0}
.sub{color:#6a7585;font-size:12px}main{max-width:1280px;margin:0 auto;padding:18px 24px 60px}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0 18px}nav a{padding:3px 9px;border-radius:12px;background:#fff;
border:1px solid #e3e7ed;color:#1f2733;text-decoration:none;font-size:12px}nav a.same{color:#a0a8b4}
nav a b{color:#23935f}section{background:#fff;border:1px solid #e3e7ed;border-radius:10px;margin:0 0 14px;padding:12px 16px}
section.same{opacity:.6;padding:8px 16px}h2{font-size:15px;margin:0}h2 small{font-weight:400;color:#6a7585;margin-left:8px}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:10px;background:#eef1f5;color:#3d4a5c;margin:0 4px 0 0}
table.ch{border-collapse:collapse;width:100%;margin:8px 0;font-size:12.5px}table.ch td,table.ch th{padding:3px 8px;
border-bottom:1px solid #f0f2f5;text-align:left;vertical-align:top}table.ch th{color:#6a7585;font-weight:600;font-size:11px}
.rm{color:#c0392b}.ad{color:#1e8449}.fu{color:#b98900;font-weight:600}details{margin:6px 0}summary{cursor:pointer;color:#2f6fdf}
table.sbs{border-collapse:collapse;width:100%;font:11.5px/1.45 ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace;table-layout:fixed}
table.sbs td{padding:1px 8px;vertical-align:top;word-break:break-all;border-left:3px solid transparent}
table.sbs td.del{background:#fdecea;border-left-color:#e57368}table.sbs td.ins{background:#e8f6ee;border-left-color:#52b788}
table.sbs td.gap{color:#98a2b0;text-align:center;background:#fafbfc}table.sbs th{font:600 11px system-ui,sans-serif;color:#6a7585;text-align:left;padding:4px 8px}
"""


def _by_module(graph: Graph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for node in graph.walk():
        out[node.path].append(node_line(node))
    return out


def _side_by_side(a: list[str], b: list[str]) -> str:
    rows = []
    esc = html.escape
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            n = i2 - i1
            if n > 2 * CONTEXT + 1:
                keep = [(i1 + k, j1 + k) for k in range(CONTEXT)]
                rows += [f"<tr><td>{esc(a[i])}</td><td>{esc(b[j])}</td></tr>" for i, j in keep]
                rows.append(f'<tr><td class="gap" colspan="2">… {n - 2 * CONTEXT} unchanged …</td></tr>')
                keep = [(i2 - CONTEXT + k, j2 - CONTEXT + k) for k in range(CONTEXT)]
                rows += [f"<tr><td>{esc(a[i])}</td><td>{esc(b[j])}</td></tr>" for i, j in keep]
            else:
                rows += [f"<tr><td>{esc(a[i1 + k])}</td><td>{esc(b[j1 + k])}</td></tr>" for k in range(n)]
            continue
        left, right = a[i1:i2], b[j1:j2]
        for k in range(max(len(left), len(right))):
            lt = f'<td class="del">{esc(left[k])}</td>' if k < len(left) else "<td></td>"
            rt = f'<td class="ins">{esc(right[k])}</td>' if k < len(right) else "<td></td>"
            rows.append(f"<tr>{lt}{rt}</tr>")
    return '<table class="sbs"><tr><th>before</th><th>after</th></tr>' + "".join(rows) + "</table>"


def _section(k: int, step) -> str:
    esc, d = html.escape, step.diff
    anchor = f'id="p{k}"'
    if not d.changed:
        return f'<section class="same" {anchor}><h2>{k}. {esc(step.name)}<small>no change · {step.seconds * 1e3:.1f} ms</small></h2></section>'
    fired = "".join(f'<span class="badge">{esc(str(a))}={esc(str(b))}</span>' for a, b in step.fired.items())
    out = [f'<section {anchor}><h2>{k}. {esc(step.name)}<small>{esc(d.summary())} · {step.seconds * 1e3:.1f} ms</small></h2>',
           f'<div style="margin-top:4px">{fired}</div>' if fired else ""]
    if d.modules:
        out.append('<table class="ch"><tr><th>module</th><th>removed</th><th>added</th></tr>')
        for m in d.modules:
            fused = f'<span class="fu">fused into {esc(", ".join(m.fused_into))}</span> ' if m.fused_into else ""
            rm = ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in m.removed.most_common())
            ad = ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in m.added.most_common()
                           if op not in m.fused_into or n > 1)
            out.append(f'<tr><td>{esc(m.module or "<top>")}</td><td class="rm">{esc(rm)}</td>'
                       f'<td class="ad">{fused}{esc(ad)}</td></tr>')
        out.append("</table>")
    other = [x for x in d.lines() if not any(x.startswith(f"{m.module or '<top>'} ") for m in d.modules)]
    out += [f'<div class="sub">{esc(x)}</div>' for x in other]
    if d.modules:
        before, after = _by_module(step.before), _by_module(step.after)
        for m in d.modules:
            out.append(f"<details><summary>before / after: {esc(m.module or '<top>')}</summary>"
                       + _side_by_side(before.get(m.module, []), after.get(m.module, [])) + "</details>")
    out.append("</section>")
    return "".join(out)


def to_diff_html(steps, title: str = "passes") -> str:
    """A self-contained page: for each pass, what changed by module and a before/after listing."""
    esc = html.escape
    nav = []
    for k, s in enumerate(steps, 1):
        delta = s.diff.nodes_after - s.diff.nodes_before
        mark = f" <b>{delta:+d}</b>" if delta else ""
        nav.append(f'<a href="#p{k}" class="{"" if s.diff.changed else "same"}">{esc(s.name)}{mark}</a>')
    first = sum(1 for _ in steps[0].before.walk()) if steps else 0
    last = sum(1 for _ in steps[-1].after.walk()) if steps else 0
    total = sum(s.seconds for s in steps) * 1e3
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · nnxc passes</title>'
            f"<style>{_CSS}</style></head><body><header><h1>{esc(title)}: {len(steps)} passes</h1>"
            f'<div class="sub">{first} → {last} nodes in {total:.1f} ms. Nodes are matched by op, attributes, '
            "types and module path, so renumbering is not a change.</div></header><main>"
            f"<nav>{''.join(nav)}</nav>{''.join(_section(k, s) for k, s in enumerate(steps, 1))}</main></body></html>\n")
