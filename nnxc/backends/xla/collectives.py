"""The collectives XLA's SPMD partitioner inserted into a compiled graph, by nnxc module.

The lowering runs each node inside ``jax.named_scope(node.path)``, so an HLO instruction's
``metadata={op_name="jit(run_graph)/blocks.0.attn.out/dot_general"}`` names the module it
came from; the partitioner copies that metadata onto the collectives it adds for the op.
A collective without metadata (the gather of a replicated output) belongs to the graph
itself (module ``""``).
"""
from __future__ import annotations

import re

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES)
                    + r")(?P<start>-start)?\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _bytes(type_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype))
        total += int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * bits // 8
    return total


def _first_group(line: str) -> list[int] | None:
    """Device positions of the first replica group (explicit ``{{0,1},{2,3}}``, iota
    ``[2,4]<=[4,2]T(1,0)`` or ``mesh['a'=2,'b'=4] {'b'}``), or None when there is none."""
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line) or re.search(r"source_target_pairs=\{\{([\d,]*)\}", line)
    if m:
        return [int(x) for x in m.group(1).split(",") if x]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(int(np.prod(shape))).reshape([int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape[0], -1)[0].tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        axes = re.findall(r"'([^']*)'=(\d+)", m.group(1))
        over = set(re.findall(r"'([^']*)'", m.group(2)))
        ids = np.arange(int(np.prod([int(n) for _, n in axes]))).reshape([int(n) for _, n in axes])
        index = tuple(slice(None) if a in over else 0 for a, _ in axes)
        return ids[index].reshape(-1).tolist()
    return None


def _mesh_axes(group: list[int] | None, mesh) -> str:
    """The mesh axes a replica group spans (device positions in the mesh's flat order)."""
    if group is None or mesh is None:
        return ""
    coords = np.array(np.unravel_index(np.asarray(group), tuple(mesh.shape.values()))).T
    varies = [a for k, a in enumerate(mesh.axis_names) if len(set(coords[:, k].tolist())) > 1]
    return "+".join(varies)


def _module(op_name: str, modules: set) -> str:
    parts = op_name.split("/")
    return next((p for p in reversed(parts[:-1]) if p in modules), "")


def hlo_collectives(hlo: str, modules, mesh=None) -> list[dict]:
    """One row per collective instruction in optimized HLO text: ``op`` (all-reduce, ...),
    ``module`` (the nnxc module path, "" for the graph), ``shape`` (the result type),
    ``bytes`` (of the result), ``axes`` (the mesh axes it communicates over, "+"-joined,
    when ``mesh`` is given) and ``op_name`` (the HLO metadata it was matched by)."""
    modules = set(modules)
    rows = []
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if m is None:
            continue
        name = _OP_NAME.search(line)
        op_name = name.group(1) if name else ""
        shape = re.sub(r"\{[^{}]*\}", "", m.group("type"))  # layouts: {2,1,0}
        rows.append({"op": m.group("op"), "module": _module(op_name, modules), "shape": shape,
                     "bytes": _bytes(m.group("type")), "axes": _mesh_axes(_first_group(line), mesh),
                     "op_name": op_name})
    return rows


def collectives_by_module(rows: list[dict]) -> list[dict]:
    """Per module (in order of first appearance): a count per collective kind, the bytes
    they move (their results) and the mesh axes they span."""
    out: dict[str, dict] = {}
    for r in rows:
        row = out.setdefault(r["module"], {"module": r["module"], **{c: 0 for c in COLLECTIVES},
                                           "bytes": 0, "axes": []})
        row[r["op"]] += 1
        row["bytes"] += r["bytes"]
        if r["axes"] and r["axes"] not in row["axes"]:
            row["axes"].append(r["axes"])
    return list(out.values())


def format_collectives(rows: list[dict]) -> str:
    """A short table: one line per module with collectives (the graph's own, such as the
    gather of a replicated output, as ``(graph)``), a count per kind that occurs, the bytes
    of their per-device results and the mesh axes they span."""
    from ...ir.summary import _bytes as fmt_bytes
    table = collectives_by_module(rows)
    if not table:
        return "collectives: none (every device computes its part without communicating)"
    kinds = [c for c in COLLECTIVES if any(r[c] for r in table)]
    head = ["module", *kinds, "result bytes", "over"]
    body = [[r["module"] or "(graph)", *(str(r[c] or "") for c in kinds), fmt_bytes(r["bytes"]),
             ",".join(r["axes"])] for r in table]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))).rstrip()
             for row in [head, *body]]
    return "collectives (XLA SPMD, per module):\n" + "\n".join(lines)
