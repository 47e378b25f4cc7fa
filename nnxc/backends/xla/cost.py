"""What a compiled graph costs: FLOPs, bytes accessed, peak memory and buffer sizes.

``nnxc.compile(g).cost()`` (``nnxc compile --cost``) gathers

- XLA's cost analysis of the compiled executable (``flops_xla``, ...). XLA counts the body
  of a while loop once, and a ``scan`` is a while loop to XLA, so a scanned layer stack of
  depth 12 counts one layer;
- the same analysis with loop trip counts (``flops``, ...): XLA's cost analysis of the
  graph with every ``scan`` unrolled, which counts each body as often as it runs (nested
  scans included). Loops whose trip count nnxc cannot know (``while``) are counted once
  in every figure, and the report says so;
- nnxc's own count from the IR (``flops_ir``, and per module, ``nnxc.ir.summary``), which
  multiplies scan bodies by their trip counts;
- XLA's memory analysis of the compiled executable: peak memory, argument, output,
  temporary, aliased and generated-code sizes in bytes.

The report prints as a table (``format()``) and as JSON (``to_json()``, schema
``nnxc-cost`` v1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ...errors import NnxcError

SCHEMA = "nnxc-cost"
VERSION = 1
# above this many nodes once every scan is unrolled, the unrolled figures are not computed
UNROLL_LIMIT = 200_000

_MEMORY = (("peak", "peak_memory_in_bytes"), ("arguments", "argument_size_in_bytes"),
           ("outputs", "output_size_in_bytes"), ("temporaries", "temp_size_in_bytes"),
           ("aliased", "alias_size_in_bytes"), ("generated_code", "generated_code_size_in_bytes"))

MEANING = {
    "flops": "with loop trip counts: XLA's cost analysis of the graph with every scan unrolled",
    "flops_xla": "XLA's cost analysis of the compiled executable: each while/scan body counted once",
    "flops_ir": "nnxc's count from the IR (nnxc.ir.summary), scan bodies times their trip counts",
    "memory": "XLA's memory analysis of the compiled executable, in bytes",
}


@dataclass
class CostReport:
    """Cost of one compiled graph at concrete input shapes. ``flops`` counts every loop body
    as often as it runs; ``flops_xla`` is XLA's own figure, which counts each loop body once;
    ``flops_ir`` is nnxc's count from the IR. The unrolled figures are None when unrolling
    would make a graph larger than ``UNROLL_LIMIT`` nodes (``notes`` says so)."""

    graph: str
    dims: dict
    flops: int | None
    flops_xla: int
    flops_ir: int
    transcendentals: int | None
    transcendentals_xla: int
    bytes_accessed: int | None
    bytes_accessed_xla: int
    memory: dict
    loops: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": VERSION, "graph": self.graph, "dims": dict(self.dims),
                "flops": self.flops, "flops_xla": self.flops_xla, "flops_ir": self.flops_ir,
                "transcendentals": self.transcendentals,
                "transcendentals_xla": self.transcendentals_xla,
                "bytes_accessed": self.bytes_accessed, "bytes_accessed_xla": self.bytes_accessed_xla,
                "memory": dict(self.memory), "loops": list(self.loops),
                "modules": list(self.modules), "notes": list(self.notes), "meaning": dict(MEANING)}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent) + "\n"

    def format(self) -> str:
        from ...ir.summary import _bytes, format_module_table
        at = ", ".join(f"{k}={v}" for k, v in sorted(self.dims.items()))
        lines = [f"cost of {self.graph}" + (f" at {at}" if at else "")]
        head = f"{'':<18} {'with trip counts':>18} {'XLA (loops once)':>18}"
        lines += [head, "-" * len(head)]
        for label, with_trips, once in (("FLOPs", self.flops, self.flops_xla),
                                         ("transcendentals", self.transcendentals,
                                          self.transcendentals_xla),
                                         ("bytes accessed", self.bytes_accessed, self.bytes_accessed_xla)):
            shown = "n/a" if with_trips is None else f"{with_trips:,}"
            lines.append(f"{label:<18} {shown:>18} {once:>18,}")
        lines.append(f"{'FLOPs (nnxc IR)':<18} {self.flops_ir:>18,}")
        m = self.memory
        lines.append("memory: " + ", ".join(
            f"{name.replace('_', ' ')} {_bytes(m[name])}" for name, _ in _MEMORY if m.get(name) is not None))
        if self.loops:
            lines.append("loops: " + "; ".join(
                f"{lp['op']} @{lp['module'] or '<top>'}"
                + (f" over {lp['body']}" if lp.get("body") and lp["body"] != lp["module"] else "") + ": "
                + (f"{lp['trip_count']} trips" if lp["trip_count"] is not None else "trip count unknown")
                + (f" ({lp['runs']} runs in all)" if lp.get("runs") not in (None, lp["trip_count"]) else "")
                for lp in self.loops))
        lines += [f"note: {n}" for n in self.notes]
        lines.append("")
        lines.append("per module (FLOPs: nnxc's count, with trip counts)")
        lines.append(format_module_table(self.modules))
        return "\n".join(lines)

    __str__ = format


def cost_report(compiled, *arg_structs, dims: dict | None = None, depth: int | None = None) -> CostReport:
    """The report for ``compiled`` (an ``nnxc.compile`` result) at ``arg_structs`` (flat
    input ShapeDtypeStructs) or at ``dims`` (sizes of the symbolic dims; 1 when not given).
    ``depth``: module path levels of the per-module rows (default 1; 2 for a function of NNX
    objects such as a training step, so rows are ``model.linear1``)."""
    from ...ir.summary import module_table
    from ...ir.types import DimError, solve_dims
    g = compiled.graph
    if arg_structs:
        structs = list(arg_structs)
        if len(structs) != len(g.inputs):
            raise NnxcError(f"cost: {len(g.inputs)} input shape(s) expected, got {len(structs)}")
        pairs = [(d, n) for v, s in zip(g.inputs, structs) for d, n in zip(v.type.shape, s.shape)
                 if isinstance(d, str)]
        try:
            sizes = solve_dims(pairs, strict=False)
        except DimError as e:
            raise NnxcError(f"cost: the input shapes do not fit the graph's inputs ({e})") from None
    else:
        known = compiled._example_dims()
        unknown = sorted(set(dims or {}) - set(known))
        if unknown:
            raise NnxcError(f"cost: {', '.join(unknown)} are not symbolic dims of the inputs"
                            + (f" ({', '.join(sorted(known))})" if known else " (they have none)"))
        sizes = {**known, **(dims or {})}
        structs = compiled._arg_structs(sizes)
    once = compiled.cost_analysis(*structs)
    stats = compiled._executable(structs).memory_analysis()
    memory = {name: (int(getattr(stats, attr)) if getattr(stats, attr, None) is not None else None)
              for name, attr in _MEMORY}
    loops = _loops(g.nodes, 1)
    notes = []
    with_trips = _unrolled_cost(compiled, structs, notes) if any(
        lp["op"] == "scan" and lp["trip_count"] > 1 for lp in loops) else once
    if any(lp["trip_count"] is None for lp in loops):
        notes.append("while loops have no trip count nnxc knows: every figure counts their body once")
    if depth is None:
        depth = 2 if g.meta.get("frontend") == "function" and "state_tree" in g.meta else 1
    rows = module_table(g, sizes, depth=depth)

    def get(cost, key):
        return None if cost is None else int(round(float(cost.get(key, 0.0))))

    return CostReport(graph=g.name, dims=dict(sorted(sizes.items())),
                      flops=get(with_trips, "flops"), flops_xla=get(once, "flops"),
                      flops_ir=sum(r["flops"] for r in rows),
                      transcendentals=get(with_trips, "transcendentals"),
                      transcendentals_xla=get(once, "transcendentals"),
                      bytes_accessed=get(with_trips, "bytes accessed"),
                      bytes_accessed_xla=get(once, "bytes accessed"),
                      memory=memory, loops=loops, modules=rows, notes=notes)


def _loops(nodes, runs: int) -> list[dict]:
    """Every scan and while loop, nested ones included: module, trip count (None for a
    while loop) and how often its body runs in all."""
    out = []
    for node in nodes:
        if node.op == "scan":
            trips = int(node.attrs["length"])
            out.append({"op": "scan", "module": node.path or "", "body": _body_module(node),
                        "trip_count": trips, "runs": runs * trips})
            out += _loops(node.regions[0].nodes, runs * trips)
        elif node.op == "while":
            out.append({"op": "while", "module": node.path or "", "body": _body_module(node),
                        "trip_count": None, "runs": None})
            for r in node.regions:
                out += _loops(r.nodes, runs)
        else:
            for r in node.regions:
                out += _loops(r.nodes, runs)
    return out


def _body_module(node) -> str:
    """The module most of a loop's body belongs to (``blocks`` for a scanned layer stack)."""
    from collections import Counter

    from ...ir.summary import _top
    seen = Counter()
    stack = [r for r in node.regions]
    while stack:
        r = stack.pop()
        for n in r.nodes:
            if n.path and n.path != node.path:
                seen[_top(n.path, (node.path.count(".") + 2) if node.path else 1)] += 1
            stack.extend(n.regions)
    return seen.most_common(1)[0][0] if seen else (node.path or "")


def _unrolled_nodes(nodes) -> int:
    n = 0
    for node in nodes:
        n += 1
        trips = int(node.attrs["length"]) if node.op == "scan" else 1
        n += trips * sum(_unrolled_nodes(r.nodes) for r in node.regions)
    return n


def _unrolled_cost(compiled, structs, notes: list) -> dict | None:
    """XLA's cost analysis of the graph with every scan unrolled (each body then appears
    as often as it runs), or None when that graph would be too large."""
    from .compile import Compiled
    from ...passes.rewrite import Rebuild
    g = compiled.graph
    size = _unrolled_nodes(g.nodes)
    if size > UNROLL_LIMIT:
        notes.append(f"figures with trip counts not computed: unrolling every scan makes {size:,} "
                     f"nodes (limit {UNROLL_LIMIT:,}); flops_ir counts the loops")
        return None
    copy = Rebuild(g).run()
    for node in copy.walk():
        if node.op == "scan" and int(node.attrs["length"]) > 1:
            node.attrs["unroll"] = int(node.attrs["length"])
    return Compiled(copy, mesh=compiled.mesh, shard=compiled.shard).cost_analysis(*structs)
