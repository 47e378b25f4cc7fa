"""Per-module cross-check: compare each backend's values at every module boundary, to find
the module where results first go wrong (``nnxc check --per-module``,
``nnxc.crosscheck(..., per_module=True)``).

A module's *boundary values* are the values its nodes produce (nodes whose module path is
exactly that path, at the top level of the graph) that a node of another module path reads,
or that are graph outputs or variable updates; they are numbered in program order. Values
inside control-flow regions (a scanned layer stack) are not boundaries: the ``scan`` node's
own results are.

The reference for these intermediate values is the *traced* graph (before any pass,
``graph.meta["source"]``) run on XLA with the boundary values as extra outputs: the check
proves the traced graph bit-exact to the model's own ``jax.jit`` at the outputs, and this
module checks that this still holds with the extra outputs (a note says when it does not).
The optimized graph runs on XLA the same way, and the exported ONNX model in onnxruntime
with the boundary values added as extra outputs of a copy of the model.

Boundary values of the optimized graph are matched to the traced graph's by module path and
position among that module's boundary values, when the module has as many of them, of the
same types, in both graphs. A module that passes changed at its boundary (a fusion absorbed
it, CSE made another module read its values, a module that read them was folded into it) is
reported as not comparable, never skipped in silence. Errors are measured relative to the
value's scale, as the outputs are judged:
``rel = |got - ref| / max|ref|`` per element, binned in a histogram.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np

from ..ir.graph import Graph, Value

BINS = (1e-7, 1e-5, 1e-3)  # histogram edges of the relative error (relative to the value's scale)
BIN_LABELS = ("[0,1e-7)", "[1e-7,1e-5)", "[1e-5,1e-3)", ">=1e-3")
TOP = "(top level)"  # how the root module's path ("") is shown


def module_name(path: str) -> str:
    return path or TOP


@dataclass
class Boundary:
    path: str
    index: int  # position among the module's boundary values
    value: Value
    order: int  # index of the producing node among the graph's top-level nodes
    readers: frozenset = frozenset()  # module paths of the other nodes that read it


def boundaries(graph: Graph) -> dict[str, list[Boundary]]:
    """Module path -> its boundary values in program order; modules in order of their first
    boundary value."""
    producer: dict[Value, tuple[int, str]] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            producer[v] = (i, node.path)
    crossing: dict[Value, set] = {}

    def read(v: Value, path: str) -> None:
        p = producer.get(v)
        if p is not None and p[1] != path:
            crossing.setdefault(v, set()).add(path)

    for node in graph.nodes:
        for v in node.inputs:
            read(v, node.path)
        for region in node.regions:  # outer values a region body reads count as the node's
            for inner in _walk_regions(region):
                for v in inner.inputs:
                    read(v, node.path)
    for v in list(graph.outputs) + [v for _, v in graph.updates]:
        if v in producer:
            crossing.setdefault(v, set())
    out: dict[str, list[Boundary]] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            if v in crossing:
                items = out.setdefault(node.path, [])
                items.append(Boundary(node.path, len(items), v, i, frozenset(crossing[v])))
    return out


def _walk_regions(region):
    for node in region.nodes:
        yield node
        for r in node.regions:
            yield from _walk_regions(r)


def match(traced: dict, optimized: dict, alive: set | None = None) -> tuple[list, dict]:
    """Pair the boundary values of the optimized graph with the traced graph's.

    ``alive``: the module paths that still have nodes after passes. A boundary value that a
    module no longer there read (BatchNorm folded into the Linear before it) now carries that
    module's work too, so its module is not comparable. Returns ``(pairs, not_comparable)``:
    pairs ``(traced Boundary, optimized Boundary)`` in program order of the traced graph, and
    module path -> why it cannot be compared."""
    pairs, bad = [], {}
    for path, ref in traced.items():
        got = optimized.get(path, [])
        gone = sorted({p for r in ref for p in r.readers if alive is not None and p not in alive})
        if not got:
            bad[path] = "not comparable: no boundary values after passes (fused into another module or removed)"
        elif len(got) != len(ref):
            bad[path] = (f"not comparable: {len(ref)} boundary value(s) traced, {len(got)} after passes "
                         "(passes changed the module's boundary)")
        elif any(r.value.type != g.value.type for r, g in zip(ref, got)):
            k = next(i for i, (r, g) in enumerate(zip(ref, got)) if r.value.type != g.value.type)
            bad[path] = (f"not comparable: boundary value {k} is {ref[k].value.type} traced, "
                         f"{got[k].value.type} after passes")
        elif gone:
            bad[path] = (f"not comparable: passes merged {', '.join(map(module_name, gone))}, which read "
                         "its values, into other modules (its boundary values may carry their work)")
        else:
            pairs.extend(zip(ref, got))
    return sorted(pairs, key=lambda p: (p[0].order, p[0].index)), bad


def xla_values(graph: Graph, wanted: list[Value], flat: list, state: dict | None = None) -> tuple[list, list]:
    """Run ``graph`` on XLA (jitted, as ``nnxc.compile`` lowers it) and return
    ``(outputs, values of wanted)`` as numpy arrays."""
    from ..backends.xla.lower import bind_dims, const_array, run_nodes
    from ..ir.parser import require_constant_data
    require_constant_data(graph)
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    state = graph.state() if state is None else state

    def fn(var_leaves, args):
        env = {var.value: x for var, x in zip(inputs, var_leaves)}
        env.update(zip(graph.inputs, args))
        run_nodes(graph.nodes, env, bind_dims(graph, args))
        read = lambda v: env[v] if v in env else const_array(v)  # noqa: E731
        return [read(v) for v in graph.outputs], [read(v) for v in wanted]

    outs, vals = jax.jit(fn)([state[v.path] for v in inputs], list(flat))
    return [_host(x) for x in outs], [_host(x) for x in vals]


def onnx_values(graph: Graph, model, value_names: dict, wanted: list[Value], flat: list) -> list:
    """Values of ``wanted`` (IR values of ``graph``) from the exported ``model`` in
    onnxruntime: a copy of the model with them as extra graph outputs. ``value_names``: what
    ``export_onnx(..., value_names=...)`` recorded. A value the ONNX model does not hold
    (its node was pruned) is None."""
    import onnx
    from onnx import helper, numpy_helper

    from ..backends.onnx.builder import onnx_dtype
    from .onnx_io import onnx_session
    g = model.graph
    produced = {o for node in g.node for o in node.output}
    feeds = dict(zip([i.name for i in g.input], [_host(x) for x in flat]))
    inits = {t.name: t for t in g.initializer}
    renamed: dict[str, str] = {}  # export renames the node producing a graph output
    finals = [o.name for o in g.output]
    for v, final in zip(list(graph.outputs) + [v for _, v in graph.updates], finals):
        name = value_names.get(v)
        if name is not None and name not in produced:
            renamed.setdefault(name, final)
    where: list[tuple[str, str, tuple | None] | None] = []
    extra: dict[str, Value] = {}
    for v in wanted:
        name = value_names.get(v)
        # the layout pass may leave a value permuted: the model holds its source, and the
        # value is the source transposed by ``perm``
        perm = getattr(name, "perm", None)
        if perm is not None:
            name = name.source
        if name is None:
            where.append(None)
        elif name in feeds:
            where.append(("feed", name, perm))
        elif name in inits:
            where.append(("init", name, perm))
        elif name in produced or name in renamed:
            name = renamed.get(name, name) if name not in produced else name
            where.append(("out", name, perm))
            if name not in finals:
                extra.setdefault(name, v)
        else:
            where.append(None)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, onnx_dtype(v.type.dtype), None)
                             for n, v in extra.items())
    names = [w[1] for w in where if w is not None and w[0] == "out"]
    names = list(dict.fromkeys(names))
    got = dict(zip(names, onnx_session(copy).run(names, feeds))) if names else {}
    out = []
    for w in where:
        if w is None:
            out.append(None)
            continue
        kind, name, perm = w
        if kind == "feed":
            x = np.asarray(feeds[name])
        elif kind == "init":
            x = numpy_helper.to_array(inits[name])
        else:
            x = np.asarray(got[name])
        out.append(x if perm is None else np.transpose(x, perm))
    return out


def _host(x) -> np.ndarray:
    if hasattr(x, "dtype") and str(x.dtype).startswith("key<"):
        x = jax.random.key_data(x)
    return np.asarray(x)


def measure(ref, got, rtol: float | None, atol: float | None, exact: bool = False) -> dict:
    """Errors of one value: ``abs``, ``rel`` (relative to the value's scale, max|ref|),
    ``hist`` (element counts per ``BIN_LABELS``), ``ok`` against the tolerance (``exact``:
    bit for bit) and a ``note``."""
    from ..ir.types import dtype_name
    from .check import compare
    from .crosscheck import RTOL
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return {"abs": float("inf"), "rel": float("inf"), "hist": [0, 0, 0, int(ref.size)], "ok": False,
                "note": f"shape {got.shape} != {ref.shape}"}
    floats = ref.dtype.kind in "fc"
    r, g = ref.astype(np.complex128 if ref.dtype.kind == "c" else np.float64), got.astype(
        np.complex128 if got.dtype.kind == "c" else np.float64)
    same = (np.isnan(r) & np.isnan(g)) | (r == g) if floats else (r == g)
    diff = np.where(same, 0.0, np.abs(r - g))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = float(np.max(np.abs(r[np.isfinite(r)]), initial=0.0)) if floats and r.size else 0.0
    scale = scale if scale > 0 else 1.0
    rel = diff / scale if floats else np.where(same, 0.0, np.inf)
    hist = [int(np.sum(rel < BINS[0]))] + [int(np.sum((rel >= lo) & (rel < hi)))
                                           for lo, hi in zip(BINS, BINS[1:])] + [int(np.sum(rel >= BINS[-1]))]
    abs_err = float(np.max(diff, initial=0.0))
    rel_err = float(np.max(rel, initial=0.0))
    if exact:
        ok = ref.dtype == got.dtype and bool(np.array_equal(ref, got, equal_nan=floats))
        return {"abs": abs_err, "rel": rel_err, "hist": hist, "ok": ok,
                "note": "" if ok else "not bit-exact (promised)"}
    try:
        tol = RTOL.get(dtype_name(ref.dtype), 0.0) if rtol is None else rtol
    except ValueError:
        tol = 0.0 if rtol is None else rtol
    a = tol * scale if atol is None else atol
    ok = compare(ref, got, tol, a)["ok"] if floats else bool(np.all(same))
    return {"abs": abs_err, "rel": rel_err, "hist": hist, "ok": ok, "note": ""}


@dataclass
class PerModuleReport:
    """Rows ``{module, path, backend, values, abs, rel, hist, ok, note}`` in execution order;
    ``first_bad``: backend -> the module whose boundary value goes beyond tolerance first."""

    size: object = None
    rows: list = field(default_factory=list)
    first_bad: dict = field(default_factory=dict)
    first_bad_value: dict = field(default_factory=dict)  # backend -> "value k of n: type"
    not_comparable: dict = field(default_factory=dict)  # module path -> why
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows if r["ok"] is not None)

    def row(self, module: str, backend: str) -> dict | None:
        path = "" if module == TOP else module
        return next((r for r in self.rows if r["path"] == path and r["backend"] == backend), None)

    def __str__(self) -> str:
        width = max([len("module")] + [len(r["module"]) for r in self.rows])
        head = (f"{'module':<{width}} {'backend':<8} {'values':>6} {'max abs err':>12} {'max rel err':>12} "
                + " ".join(f"{b:>11}" for b in BIN_LABELS) + "  ok")
        lines = [f"per module, size {self.size} (reference: the traced graph on XLA; "
                 "rel err = |got - ref| / max|ref| of each value):", head, "-" * len(head)]
        for r in self.rows:
            if r["ok"] is None:
                lines.append(f"{r['module']:<{width}} {r['backend']:<8} {'-':>6}  {r['note']}")
                continue
            mark = "✓" if r["ok"] else "✗"
            lines.append(f"{r['module']:<{width}} {r['backend']:<8} {r['values']:>6} {r['abs']:>12.3g} "
                         f"{r['rel']:>12.3g} " + " ".join(f"{n:>11}" for n in r["hist"])
                         + f"  {mark} {r['note']}".rstrip())
        for note in self.notes:
            lines.append(f"note: {note}")
        for backend in sorted(self.first_bad):
            lines.append(f"{backend}: first module beyond tolerance: {module_name(self.first_bad[backend])} "
                         f"({self.first_bad_value[backend]})")
        if not self.first_bad and self.rows:
            lines.append("every comparable module is within tolerance")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"size": self.size, "rows": self.rows, "first_bad": self.first_bad,
                "not_comparable": self.not_comparable, "notes": self.notes}


def per_module(graph: Graph, flat: list, *, backends=("xla", "onnx"), onnx_model=None,
               value_names: dict | None = None, rtol=None, atol=None, exact_xla: bool = False,
               size=None, reference_outputs: list | None = None) -> PerModuleReport:
    """Compare ``graph`` on each backend with the traced graph at every module boundary, on the
    flat inputs ``flat``. ``onnx_model``/``value_names``: the exported model and its IR value ->
    ONNX name map (``export_onnx(..., value_names=...)``). ``reference_outputs``: the model's own
    jit outputs, to confirm the traced graph still reproduces them with the extra outputs.
    ``exact_xla``: XLA must match bit for bit (no pass that changes rounding ran)."""
    source = graph.meta.get("source", (None, ()))[0] or graph
    traced = boundaries(source)
    optimized = traced if source is graph else boundaries(graph)
    pairs, bad = match(traced, optimized, {n.path for n in graph.nodes})
    report = PerModuleReport(size=size, not_comparable=bad)
    ref_list = [b for items in traced.values() for b in items]
    ref_outs, ref_vals = xla_values(source, [b.value for b in ref_list], flat)
    ref_of = dict(zip([id(b) for b in ref_list], ref_vals))
    if reference_outputs is not None and not _same(ref_outs, reference_outputs):
        report.notes.append("the traced graph on XLA with the boundary values as extra outputs does not "
                            "reproduce the model's own jax.jit at the outputs: XLA compiled it "
                            "differently; its intermediate values are a weaker reference")
    got: dict[str, list] = {}
    if "xla" in backends:
        if source is graph:
            report.notes.append("xla: the graph is the traced graph (no passes ran): its values are the "
                                "reference, so XLA has no rows of its own")
        else:
            got["xla"] = xla_values(graph, [g.value for _, g in pairs], flat)[1]
    if "onnx" in backends and onnx_model is not None:
        got["onnx"] = onnx_values(graph, onnx_model, value_names or {}, [g.value for _, g in pairs], flat)
    order = sorted(traced, key=lambda p: traced[p][0].order)
    per_path: dict[str, list] = {}
    for k, (r, g) in enumerate(pairs):
        per_path.setdefault(r.path, []).append(k)
    for path in order:
        if path in bad:
            report.rows.append({"module": module_name(path), "path": path, "backend": "-", "values": 0,
                                "abs": None, "rel": None, "hist": None, "ok": None, "note": bad[path]})
            continue
        for backend, values in got.items():
            row = {"module": module_name(path), "path": path, "backend": backend, "values": 0,
                   "abs": 0.0, "rel": 0.0, "hist": [0] * len(BIN_LABELS), "ok": True, "note": ""}
            missing = 0
            for k in per_path.get(path, []):
                r, g = pairs[k]
                if values[k] is None:
                    missing += 1
                    continue
                m = measure(ref_of[id(r)], values[k], rtol, atol, exact=exact_xla and backend == "xla")
                row["values"] += 1
                row["abs"], row["rel"] = max(row["abs"], m["abs"]), max(row["rel"], m["rel"])
                row["hist"] = [a + b for a, b in zip(row["hist"], m["hist"])]
                if not m["ok"]:
                    row["ok"] = False
                    row["note"] = row["note"] or m["note"]
                    if backend not in report.first_bad or report.first_bad_value[backend][0] > r.order:
                        report.first_bad[backend] = path
                        n = len(traced[path])
                        report.first_bad_value[backend] = (r.order, f"boundary value {r.index + 1} of {n}: "
                                                           f"{r.value.type}")
            if missing:
                why = f"{missing} of {missing + row['values']} boundary value(s) not in the ONNX model"
                if not row["values"]:
                    row.update(abs=None, rel=None, hist=None, ok=None, note=f"not comparable: {why}")
                else:
                    row["note"] = (row["note"] + "; " if row["note"] else "") + why
            report.rows.append(row)
    report.first_bad_value = {k: v[1] for k, v in report.first_bad_value.items()}
    return report


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.asarray(x).shape == np.asarray(y).shape
        and np.array_equal(x, y, equal_nan=np.asarray(x).dtype.kind in "fc") for x, y in zip(a, b))
