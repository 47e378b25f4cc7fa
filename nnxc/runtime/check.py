"""Shared pieces of checking: random inputs, error measures, the result table."""
from __future__ import annotations

import re

import jax
import numpy as np

from ..ir.graph import Graph
from ..ir.types import to_dtype


def symbols(graph: Graph) -> list[str]:
    names = []
    for v in graph.inputs:
        for d in v.type.shape:
            if isinstance(d, str):
                names += [s for s in re.findall(r"[A-Za-z_]\w*", d) if s not in names]
    return names


def random_array(rng: np.random.Generator, shape: tuple, dtype: str, seed: int = 0):
    """A random array of an IR dtype: normal floats, small non-negative ints, coin-flip bools,
    split PRNG keys for ``key<...>``."""
    if dtype.startswith("key<"):
        import jax
        from ..ir.types import _KEY_IMPLS
        keys = jax.random.split(jax.random.key(seed, impl=_KEY_IMPLS[dtype[4:-1]]), int(np.prod(shape)))
        return keys.reshape(shape)
    dt = to_dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, 8, size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


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
    same = (np.isnan(r) & np.isnan(g)) | (r == g)  # equal infinities are no error either
    diff = np.where(same, 0.0, diff)
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
    """The call's arguments from flat inputs: positional ones, then array keyword ones."""
    if graph.in_tree is None:
        return tuple(flat)
    return tuple(jax.tree_util.tree_unflatten(graph.in_tree, flat))


def call_args(graph: Graph, flat: list) -> tuple[tuple, dict]:
    """``(args, kwargs)`` to call the user's model with, from flat inputs."""
    args = structured(graph, flat)
    names = graph.meta.get("kwarg_inputs", ())
    if not names:
        return args, {}
    return args[:len(args) - len(names)], dict(zip(names, args[len(args) - len(names):]))
