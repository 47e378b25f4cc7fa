"""``nnxc.crosscheck``: the model's own JAX output vs the IR on XLA vs the exported ONNX model
in onnxruntime, per output, at several sizes of the symbolic dims (1 among them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import jax
import numpy as np

from ..errors import NnxcError
from ..ir.graph import Graph
from .check import call_args as split_call, compare, format_table, random_array, symbols

RTOL = {"f64": 1e-10, "f32": 1e-5, "f16": 1e-3, "bf16": 1e-2, "c64": 1e-5, "c128": 1e-10}


@dataclass
class CrosscheckReport:
    """Rows of ``{output, size, backend, abs, rel, ok, note}``; ``ok`` when all pass."""

    rows: list = field(default_factory=list)
    reference: str = "jax"
    exact_promised: bool = False  # XLA must equal the reference bit for bit
    inexact: list = field(default_factory=list)  # passes that changed the graph and may round differently
    first_difference: str | None = None  # the first pass after which XLA's bits differ
    modules: object = None  # a permodule.PerModuleReport, with per_module=True
    repro: str | None = None  # the folder written with repro=DIR on a mismatch
    low_precision: str | None = None  # "onnx: 12 bf16 node(s) computed in f32 ...; tolerance ..."

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)

    def failures(self) -> list:
        return [r for r in self.rows if not r["ok"]]

    def __str__(self) -> str:
        lines = [f"reference: {self.reference}"]
        xla = [r for r in self.rows if r["backend"] == "xla"]
        if xla and self.reference == "jax":
            if self.exact_promised:
                lines.append("xla: bit-exact promised (no pass that changes rounding ran)")
            else:
                lines.append("xla: within tolerance, not bit-exact by promise: these passes change "
                             f"rounding: {', '.join(self.inexact)}")
                if self.first_difference:
                    lines.append(f"xla: the first pass that changes the bits: {self.first_difference}")
        if self.low_precision:
            lines.append(self.low_precision)
        text = "\n".join(lines) + "\n" + format_table(self.rows)
        if self.modules is not None:
            text += "\n\n" + str(self.modules)
        if self.repro:
            text += f"\nrepro: wrote {self.repro} (python {self.repro}/repro.py reproduces the mismatch)"
        return text


def _host(x) -> np.ndarray:
    if hasattr(x, "dtype") and str(x.dtype).startswith("key<"):
        x = jax.random.key_data(x)
    return np.asarray(x)


def random_inputs(graph: Graph, size: int, seed: int = 0) -> list:
    """Random flat inputs, every symbolic dim at ``size``; PRNG key inputs get real keys."""
    from ..ir.params import eval_dim
    rng = np.random.default_rng(seed)
    env = {s: size for s in symbols(graph)}
    return [random_array(rng, tuple(d if isinstance(d, int) else int(eval_dim(d, dict(env)))
                                    for d in v.type.shape), v.type.dtype, seed) for v in graph.inputs]


def _is_concrete(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, jax.ShapeDtypeStruct)


def crosscheck(graph_or_model, *args, backends=("jax", "xla", "onnx"), rtol=None, atol=None,
               sizes=(1, 3), opset=None, seed: int = 0, bisect: bool = True,
               per_module: bool = False, repro=None, **trace_kwargs) -> CrosscheckReport:
    """Compare backends on the same inputs; see the module docstring.

    ``graph_or_model``: a Graph, or anything ``nnxc.trace`` takes (then ``args`` are its
    example arguments). Concrete array ``args`` are used as given; otherwise random inputs
    are drawn for every symbolic-dim size in ``sizes``. An output passes when
    ``|got - ref| <= atol + rtol * |ref|`` everywhere; ``rtol`` defaults by dtype (f32: 1e-5)
    and ``atol`` to ``rtol * max|ref|``, i.e. relative to the output's scale (backends sum
    in different orders, so values near zero carry absolute, not relative, noise).
    Integers and booleans must match exactly. The reference is the model's own jitted
    function when the graph carries one, else XLA. Variable updates are compared against XLA.
    XLA must equal the reference bit for bit unless a pass that changes rounding ran; then,
    with ``bisect``, the report names the first pass after which XLA's bits differ.

    ``per_module``: also compare every module's boundary values (``report.modules``, see
    ``nnxc.runtime.permodule``), on the first inputs where an output fails, else the last.
    ``repro``: a folder; on a mismatch a self-contained reproduction is written there
    (``nnxc.runtime.repro``; ``report.repro``), nothing otherwise.
    """
    if isinstance(graph_or_model, Graph):
        graph = graph_or_model
    else:
        from ..frontend.trace import trace
        graph = trace(graph_or_model, *args, **trace_kwargs)
    unknown = set(backends) - {"jax", "xla", "onnx"}
    if unknown:
        raise NnxcError(f"unknown backend(s) {sorted(unknown)}: choose from jax, xla, onnx")
    reference = graph.meta.get("reference") if "jax" in backends else None
    leaves = jax.tree_util.tree_leaves(args)
    if leaves and all(_is_concrete(x) for x in leaves):
        inputs = [("given", list(leaves))]
    else:
        inputs = [(s, random_inputs(graph, s, seed)) for s in (sizes if symbols(graph) else sizes[:1])]
    from ..backends.onnx.export import export_onnx, output_names
    exe = session = None
    if "xla" in backends or reference is None:
        from ..backends.xla.compile import compile
        exe = compile(graph)
    if "onnx" in backends:
        from .onnx_io import onnx_session, run_onnx
        value_names: dict = {}
        onnx_model = export_onnx(graph, opset=opset, value_names=value_names)
        session = onnx_session(onnx_model)
    names = output_names(graph)
    update_paths = [p for p, _ in graph.updates]
    from ..passes import inexact_passes
    inexact = inexact_passes(graph.meta.get("changed_passes", ()))
    report = CrosscheckReport(reference="jax" if reference is not None else "xla",
                              exact_promised=not inexact, inexact=inexact)
    if session is not None:
        report.low_precision = _low_precision_line(onnx_model, rtol)
    kept = None  # (size, flat, reference outputs, reference updates, failed): per_module / repro
    for size, flat in inputs:
        n_rows = len(report.rows)
        pos, kwa = split_call(graph, flat)
        got: dict[str, list] = {}
        new_state = None
        if exe is not None:
            out, new_state = exe.apply(exe.state, *pos, **kwa)
            got["xla"] = [_host(x) for x in jax.tree_util.tree_leaves(out)]
        if reference is not None:
            got["jax"] = [_host(x) for x in jax.tree_util.tree_leaves(reference(*pos, **kwa))]
        if session is not None:
            got["onnx"] = run_onnx(session, *[_host(x) for x in flat])
        ref_name = "jax" if reference is not None else "xla"
        ref = got[ref_name]
        for backend in backends:
            if backend == ref_name or backend not in got:
                continue
            exact = backend == "xla" and report.exact_promised and rtol is None and atol is None
            for name, r, g in zip(names, ref, got[backend]):
                report.rows.append(_row(name, size, backend, r, g, rtol, atol, exact))
        if (bisect and report.first_difference is None and not report.exact_promised
                and "xla" in got and "jax" in got and not _same(got["jax"], got["xla"])):
            report.first_difference = first_changing_pass(graph, got["jax"], pos, kwa) or ""
        if session is not None and new_state is not None:
            for path, g in zip(update_paths, got["onnx"][len(names):]):
                ref_new = _host(new_state[path])
                report.rows.append(_row(f"{path} (update)", size, "onnx", ref_new, g, rtol,
                                        atol if atol is not None else
                                        _update_atol(ref_new, exe.state.get(path), flat, rtol)))
        failed = not all(r["ok"] for r in report.rows[n_rows:])
        if (per_module or repro is not None) and (kept is None or not kept[4]) and (
                failed or per_module):
            updates = ({p: _host(new_state[p]) for p in update_paths}
                       if session is not None and new_state is not None else {})
            kept = (size, flat, got[ref_name], updates, failed)
    if per_module and kept is not None:
        from .permodule import per_module as compare_modules
        report.modules = compare_modules(
            graph, kept[1], backends=[b for b in backends if b != "jax"],
            onnx_model=onnx_model if session is not None else None,
            value_names=value_names if session is not None else None, rtol=rtol, atol=atol,
            exact_xla=report.exact_promised and rtol is None and atol is None, size=kept[0],
            reference_outputs=kept[2] if reference is not None else None)
    if repro is not None and not report.ok and kept is not None:
        from .repro import write_repro
        report.repro = write_repro(repro, graph, kept[1], kept[2], kept[3], report, size=kept[0],
                                   backends=[b for b in backends if b != "jax"], opset=opset,
                                   rtol=rtol, atol=atol)
    return report


def _low_precision_line(model, rtol) -> str | None:
    """The report's line for an ONNX model whose export computed f16/bf16 nodes in f32
    (its ``nnxc.low_precision``, "12 bf16 node(s) computed in f32 ..."), with the tolerance."""
    note = {p.key: p.value for p in model.metadata_props}.get("nnxc.low_precision", "")
    if " computed in f32" not in note:
        return None
    counts = note.split(" node(s)")[0]  # "12 bf16" or "3 bf16, 2 f16"
    tol = (f"rtol {rtol:g} (given)" if rtol is not None else ", ".join(
        f"{t} rtol {RTOL[t]:g}" for t in ("f16", "bf16") if re.search(rf"\b{t}\b", counts)))
    return f"onnx: {note}; tolerance {tol}"


def _update_atol(new, old, inputs: list, rtol) -> float | None:
    """The absolute tolerance of a variable update, at the scale of the variable: its old and
    new values and the data that flows into it (a BatchNorm mean of nearly cancelling inputs
    is 1e-9 with rounding noise of the inputs' size, not of 1e-9)."""
    new = np.asarray(new)
    if new.dtype.kind not in "fc":
        return None
    from ..ir.types import dtype_name
    r = RTOL.get(dtype_name(new.dtype), 0.0) if rtol is None else rtol
    scales = [new] + ([np.asarray(_host(old))] if old is not None else []) + [
        np.asarray(x) for x in inputs if np.asarray(x).dtype.kind in "fc"]
    scale = max((float(np.max(np.abs(a), initial=0.0)) for a in scales if a.size), default=0.0)
    return r * (scale if np.isfinite(scale) and scale else 1.0)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.asarray(x).shape == np.asarray(y).shape
        and np.array_equal(x, y, equal_nan=np.asarray(x).dtype.kind in "fc") for x, y in zip(a, b))


def first_changing_pass(graph: Graph, want: list, args: tuple, kwargs: dict) -> str | None:
    """Replay the passes that made ``graph`` one at a time from the traced graph, and name the
    first one after which XLA's results differ from ``want`` (the model's own) bit for bit."""
    from ..backends.xla.compile import compile
    source, passes = graph.meta.get("source", (None, ()))
    if source is None:
        return None
    g = source
    for name, fn in passes:
        new = fn(g)
        if new is g:
            continue
        g = new
        out = compile(g).apply(g.state(), *args, **kwargs)[0]
        if not _same(want, [_host(x) for x in jax.tree_util.tree_leaves(out)]):
            return name
    return None


def _row(name, size, backend, ref, got, rtol, atol, exact: bool = False) -> dict:
    from ..ir.types import dtype_name
    ref, got = np.asarray(ref), np.asarray(got)
    if exact:  # the promise is np.array_equal (NaN where NaN), nothing looser
        r = compare(ref, got, 0.0, 0.0)
        same = ref.shape == got.shape and ref.dtype == got.dtype and bool(
            np.array_equal(ref, got, equal_nan=ref.dtype.kind in "fc"))
        return {"output": name, "size": size, "backend": backend, **r, "ok": same,
                "note": "" if same else "not bit-exact (promised)"}
    try:
        rtol = RTOL.get(dtype_name(ref.dtype), 0.0) if rtol is None else rtol
    except ValueError:
        rtol = 0.0 if rtol is None else rtol
    if atol is None:
        scale = float(np.max(np.abs(ref), initial=0.0)) if ref.dtype.kind in "fc" and ref.size else 0.0
        atol = rtol * (scale if np.isfinite(scale) and scale else 1.0)
    r = compare(ref, got, rtol, atol)
    if got.dtype != ref.dtype and r["ok"]:
        r = {**r, "ok": False, "note": f"dtype {got.dtype} != {ref.dtype}"}
    return {"output": name, "size": size, "backend": backend, **r}


# public names for scripts that replay a check (``nnxc.runtime.repro``'s repro.py)
compare_row, update_atol, host = _row, _update_atol, _host
