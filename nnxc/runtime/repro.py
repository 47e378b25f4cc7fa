"""A self-contained reproduction of a cross-check mismatch (``nnxc check --repro DIR``,
``nnxc export --check --repro DIR``, ``nnxc.crosscheck(..., repro=DIR)``).

The folder holds everything needed to see the mismatch again with only nnxc installed:

- ``model.ir``: the checked graph as IR text with every constant's data (or, when the
  constants pass ``FULL_TEXT_LIMIT`` bytes, elided ones in ``model.ir.safetensors``),
- ``weights.npz``: its variables by path (PRNG keys as their key data),
- ``inputs.npz``: the inputs of the failing check, by graph input name,
- ``model.onnx``: the exported ONNX model (``model.onnx.data`` beside it past 2 GB),
- ``reference.npz``: the reference outputs (the model's own ``jax.jit``, or XLA when the
  check had none) by output name, and the reference variable updates (XLA's),
- ``check.json``: tolerances, sizes, what was promised, the failing rows,
- ``versions.json``: python, numpy, jax, jaxlib, flax, onnx, onnxruntime, nnxc,
- ``report.txt``: the report of the check that failed,
- ``repro.py``: parses the IR, compiles it with XLA, runs the ONNX model in onnxruntime,
  compares both with the saved reference, prints the table and exits 1 on a mismatch.
"""
from __future__ import annotations

import json
import os
import platform

import jax
import numpy as np

from ..ir.graph import Graph

FULL_TEXT_LIMIT = 16 * 1024 * 1024  # constants beyond this many bytes go to a safetensors sidecar
DISTRIBUTIONS = ("numpy", "jax", "jaxlib", "flax", "onnx", "onnxruntime", "nnxc")


def versions() -> dict:
    """The versions of Python and the packages a check depends on."""
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = __import__(name) if name != "nnxc" else None
            out[name] = getattr(module, "__version__", None) if module else _nnxc_version()
    return out


def _nnxc_version() -> str:
    from .._version import __version__
    return __version__


def version_drift(path) -> list[str]:
    """Lines naming each version in ``versions.json`` at ``path`` that differs from this
    environment's."""
    with open(path) as f:
        then = json.load(f)
    now = versions()
    return [f"{k}: the repro was written with {then[k]}, this is {now.get(k)}"
            for k in sorted(then) if now.get(k) != then[k]]


def _keys(names: list[str], fallback: str) -> list[str]:
    """npz keys for ``names``: the names, unless one is empty or repeated."""
    if all(names) and len(set(names)) == len(names):
        return list(names)
    return [f"{fallback}{i}" for i in range(len(names))]


def _host(x) -> np.ndarray:
    if hasattr(x, "dtype") and str(x.dtype).startswith("key<"):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _savez(path: str, arrays: dict) -> None:
    from .._files import atomic_open
    with atomic_open(path, "wb") as f:
        np.savez(f, **{k: _host(v) for k, v in arrays.items()})


def read_arrays(path, types: dict) -> dict:
    """Arrays of an ``.npz`` written here, by key; ``types``: key -> IR ``TensorType``, so
    PRNG key data becomes keys again."""
    from ..ir.types import _KEY_IMPLS
    out = {}
    with np.load(path, allow_pickle=False) as data:
        for k in data.files:
            x = data[k]
            t = types.get(k)
            if t is not None and t.dtype.startswith("key<"):
                x = jax.random.wrap_key_data(x, impl=_KEY_IMPLS[t.dtype[4:-1]])
            out[k] = x
    return out


def write_repro(folder, graph: Graph, flat: list, reference: list, updates: dict, report, *,
                size, backends=("xla", "onnx"), opset=None, rtol=None, atol=None) -> str:
    """Write the reproduction of ``report``'s mismatch into ``folder`` (created if missing);
    returns the folder. ``flat``: the failing inputs; ``reference``: the reference outputs on
    them; ``updates``: path -> reference variable update."""
    from .._files import atomic_write
    from ..backends.onnx.export import export_onnx, output_names
    from ..ir.printer import const_bytes, write_text
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    big = const_bytes(graph) > FULL_TEXT_LIMIT
    write_text(graph, os.path.join(folder, "model.ir"), full_constants=not big, sidecar=True if big else None)
    variables = [v for v in graph.variables if not v.meta.get("new")]
    _savez(os.path.join(folder, "weights.npz"), {v.path: v.data for v in variables})
    in_keys = _keys([v.name or "" for v in graph.inputs], "input")
    _savez(os.path.join(folder, "inputs.npz"), dict(zip(in_keys, flat)))
    out_names = output_names(graph)
    upd_names = [f"{p} (update)" for p in updates]
    _savez(os.path.join(folder, "reference.npz"),
           {**dict(zip(out_names, reference)), **dict(zip(upd_names, updates.values()))})
    if "onnx" in backends:
        export_onnx(graph, os.path.join(folder, "model.onnx"), opset=opset)
    check = {
        "size": size, "backends": list(backends), "reference": report.reference,
        "exact_promised": report.exact_promised, "inexact_passes": list(report.inexact),
        "rtol": rtol, "atol": atol, "opset": opset, "inputs": in_keys, "outputs": out_names,
        "updates": list(updates), "sidecar": big,
        "failures": [{k: r[k] for k in ("output", "size", "backend", "abs", "rel", "note")}
                     for r in report.failures()],
    }
    if report.modules is not None:
        check["per_module"] = {"first_bad": report.modules.first_bad,
                               "not_comparable": report.modules.not_comparable}
    atomic_write(os.path.join(folder, "check.json"), json.dumps(check, indent=2, default=str) + "\n")
    atomic_write(os.path.join(folder, "versions.json"), json.dumps(versions(), indent=2) + "\n")
    atomic_write(os.path.join(folder, "report.txt"), str(report) + "\n")
    atomic_write(os.path.join(folder, "repro.py"), SCRIPT)
    return folder


SCRIPT = '''\
#!/usr/bin/env python3
"""Reproduce the mismatch nnxc's cross-check found, with only this folder and nnxc installed.

    python repro.py        # prints the table; exits 1 while the mismatch is there, 0 once fixed

model.ir (+ model.ir.safetensors): the checked graph; weights.npz: its variables;
inputs.npz: the failing inputs; model.onnx: the exported model; reference.npz: the reference
outputs (the model's own jax.jit, or XLA) and variable updates (XLA's); check.json: the
tolerances and what was promised; versions.json: the versions that found the mismatch.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def here(name):
    return os.path.join(HERE, name)


def main() -> int:
    import jax
    import nnxc
    from nnxc.runtime.check import format_table
    from nnxc.runtime.crosscheck import compare_row, host, update_atol
    from nnxc.runtime.onnx_io import onnx_session
    from nnxc.runtime.repro import read_arrays, version_drift

    with open(here("check.json")) as f:
        check = json.load(f)
    for line in version_drift(here("versions.json")):
        print(f"note: {line}", file=sys.stderr)

    # the graph, its weights and the failing inputs
    with open(here("model.ir")) as f:
        graph = nnxc.ir.parse(f.read(), sidecar=here("model.ir.safetensors") if check["sidecar"] else None)
    state = read_arrays(here("weights.npz"), {v.path: v.value.type for v in graph.variables})
    types = dict(zip(check["inputs"], [v.type for v in graph.inputs]))
    given = read_arrays(here("inputs.npz"), types)
    flat = [given[k] for k in check["inputs"]]
    with np.load(here("reference.npz"), allow_pickle=False) as data:
        reference = {k: data[k] for k in data.files}
    size, rtol, atol = check["size"], check["rtol"], check["atol"]

    rows = []
    if "xla" in check["backends"] and check["reference"] != "xla":  # XLA, ahead of time
        exe = nnxc.compile(graph, state=state)
        out, _ = exe.apply(exe.state, *flat)
        exact = check["exact_promised"] and rtol is None and atol is None  # bit for bit
        for name, got in zip(check["outputs"], jax.tree_util.tree_leaves(out)):
            rows.append(compare_row(name, size, "xla", reference[name], host(got), rtol, atol, exact))
    if "onnx" in check["backends"]:  # onnxruntime
        session = onnx_session(here("model.onnx"))
        feeds = dict(zip([i.name for i in session.get_inputs()],
                         [host(x) for x in flat]))
        got = session.run(None, feeds)
        n = len(check["outputs"])
        for name, g in zip(check["outputs"], got[:n]):
            rows.append(compare_row(name, size, "onnx", reference[name], g, rtol, atol))
        for path, g in zip(check["updates"], got[n:]):
            ref = reference[f"{path} (update)"]
            tol = atol if atol is not None else update_atol(ref, state.get(path), flat, rtol)
            rows.append(compare_row(f"{path} (update)", size, "onnx", ref, g, rtol, tol))

    print(f"reference: {check['reference']} (saved in reference.npz)")
    print(format_table(rows))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"mismatch: {', '.join(sorted({r['backend'] + ' ' + r['output'] for r in bad}))}")
        return 1
    print("no mismatch: every output is within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
