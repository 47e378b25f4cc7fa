"""``nnxc check``: the model's own JAX output vs the compiled IR, per output, at several sizes."""
from __future__ import annotations

import re

import jax
import numpy as np

from ..ir.graph import Graph
from ..ir.types import to_dtype


def output_names(graph: Graph) -> list[str]:
    """Readable names of the flat outputs: their key paths in the output pytree."""
    n = len(graph.outputs)
    if graph.out_tree is None:
        return [f"[{i}]" for i in range(n)]
    tree = jax.tree_util.tree_unflatten(graph.out_tree, list(range(n)))
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) or "out" for p, _ in paths]


def symbols(graph: Graph) -> list[str]:
    names = []
    for v in graph.inputs:
        for d in v.type.shape:
            if isinstance(d, str):
                names += [s for s in re.findall(r"[A-Za-z_]\w*", d) if s not in names]
    return names


def example_inputs(graph: Graph, size: int, seed: int = 0) -> list:
    """Random flat inputs for the graph, every symbolic dim at ``size``."""
    from ..frontend._jax_compat import eval_dim
    rng = np.random.default_rng(seed)
    env = {s: size for s in symbols(graph)}
    out = []
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else int(eval_dim(d, dict(env))) for d in v.type.shape)
        dt = to_dtype(v.type.dtype)
        if dt == np.bool_:
            out.append(rng.random(shape) < 0.5)
        elif np.issubdtype(dt, np.integer):
            out.append(rng.integers(0, 8, size=shape).astype(dt))
        else:
            out.append(rng.standard_normal(shape).astype(dt))
    return out


def compare(ref, got, rtol: float, atol: float) -> dict:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return {"abs": float("inf"), "rel": float("inf"), "ok": False,
                "note": f"shape {got.shape} != {ref.shape}"}
    if ref.dtype.kind not in "fc":
        bad = int(np.sum(ref != got))
        return {"abs": float(bad), "rel": float(bad), "ok": bad == 0, "note": ""}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(r - g)
    same_nan = np.isnan(r) & np.isnan(g)
    diff = np.where(same_nan, 0.0, diff)
    abs_err = float(np.max(diff, initial=0.0))
    rel_err = float(np.max(diff / np.maximum(np.abs(r), 1e-30), initial=0.0)) if r.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(r)))
    return {"abs": abs_err, "rel": rel_err, "ok": ok, "note": ""}


def format_table(rows: list[dict]) -> str:
    head = f"{'output':<24} {'size':>5} {'backend':<8} {'max abs err':>12} {'max rel err':>12}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "✓" if r["ok"] else "✗"
        lines.append(f"{r['output']:<24} {r['size']:>5} {r['backend']:<8} {r['abs']:>12.3g} "
                     f"{r['rel']:>12.3g}  {mark} {r.get('note', '')}".rstrip())
    return "\n".join(lines)


def structured(graph: Graph, flat: list) -> tuple:
    if graph.in_tree is None:
        return tuple(flat)
    return tuple(jax.tree_util.tree_unflatten(graph.in_tree, flat))


def check_graph(graph: Graph, stages, sizes=(1, 3), rtol=1e-5, atol=1e-6, onnx=True) -> list[dict]:
    """Rows of (output, size, backend, errors) comparing each backend with the model's own output."""
    from ..backends.xla.compile import compile
    reference = graph.meta.get("reference")
    with stages.stage("compile", "XLA"):
        exe = compile(graph)
    names = output_names(graph)
    sizes = sizes if symbols(graph) else sizes[:1]
    rows = []
    for size in sizes:
        args = structured(graph, example_inputs(graph, size))
        with stages.stage("run", f"XLA, size {size}" if symbols(graph) else "XLA"):
            got, _ = exe.apply(exe.state, *args)
        backends = {"xla": jax.tree_util.tree_leaves(got)}
        if reference is not None:
            with stages.stage("reference", "the model's own jax.jit"):
                ref = jax.tree_util.tree_leaves(reference(*args))
        else:  # a graph parsed from text: XLA is the reference
            ref = backends.pop("xla")
        for backend, outs in backends.items():
            for name, r, g in zip(names, ref, outs):
                rows.append({"output": name, "size": size, "backend": backend,
                             **compare(r, g, rtol, atol)})
    return rows
