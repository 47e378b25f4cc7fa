"""AOT artifacts vs plain JAX, for the GPT-style decoder by depth and the CNN.

    .venv/bin/python tools/bench_aot.py [--depths 1,2,4,8,16,32] [--no-cnn] [--runs 50]

Per model, one table row each:
- build: nnxc ``trace`` + ``compile`` (XLA, at the bench shape) + ``save`` (jax.export with a
  symbolic batch, weights, write), vs ``jax.jit(f).lower().compile()`` + ``jax.export`` +
  ``serialize`` of the model's own pure function (medians of ``--repeat``)
- size: the artifact file vs the raw bytes of the weights
- first result, in a fresh process (imports excluded): ``nnxc.load`` + first call, vs
  building the model in Python (constructing it, weights included) + ``jax.jit`` first call;
  ``(jit+1st)`` is the part after construction, which runs after the process has paid its
  one-time backend and compiler warm-up during construction, so it flatters the jit path
- latency: the loaded artifact vs ``jax.jit`` of the model (median of ``--runs`` >= 20 calls
  each, interleaved; ``art/jit`` is the median of per-round ratios), and ``nnxc.compile``'s
  executable: ``exe/jit`` (median of per-round ratios) and ``exe-jit``, the median extra
  time per call in microseconds. Targets (issue 11): artifact / jit and exe / jit <= 1.02,
  exe - jit <= 5 us.

``--memory`` measures instead ``nnxc.save`` and ``nnxc.load`` of a > 2 GB model (an MLP of
10 Linear(8192, 8192) layers, 2.5 GiB of f32), each in a fresh process: the peak resident
memory while saving (the model already traced, so its weights are held) and while loading
(from a process holding nothing), as multiples of the weights. Target: <= 1.1x each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import nnxc  # noqa: E402
from nnxc.runtime.bench import median_time  # noqa: E402


# -- models ------------------------------------------------------------------------

def example_input(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name.startswith("gpt-"):
        return rng.integers(0, 64, size=(8, 16)).astype(np.int32)  # batch 8, 16 tokens
    return rng.standard_normal((32, 16, 16, 1)).astype(np.float32)  # 32 images


def make_model(name: str, d_model: int):
    """(model, symbolic input spec, concrete example input) for ``gpt-D`` or ``cnn``."""
    if name.startswith("gpt-"):
        from gpt import gpt
        return gpt(depth=int(name[4:]), d_model=d_model, num_heads=8), "i32[B,16]", \
            example_input(name)
    if name == "cnn":
        from cnn import cnn
        return cnn(), "f32[B,16,16,1]", example_input(name)
    raise SystemExit(f"unknown model {name!r}")


def pure_fn(model):
    """The model's own pure function ``(state leaves, x) -> y`` and its state leaves.

    A flat list of leaves, not the nnx.State: jax.export cannot serialize Variable types in
    a pytree, and a list is also the fastest thing for jax.jit to flatten on every call.
    """
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree_util.tree_flatten(state)
    return (lambda s, x: nnx.merge(graphdef, jax.tree_util.tree_unflatten(tree, s))(x)), leaves


# -- measurements ----------------------------------------------------------------------

def build_nnxc(model, spec, x, path):
    graph = nnxc.trace(model, spec)
    exe = nnxc.compile(graph)
    exe.lower(jax.ShapeDtypeStruct(x.shape, x.dtype)).compile()
    nnxc.save(exe, path)


def build_direct(model, spec, x):
    f, state = pure_fn(model)
    jitted = jax.jit(lambda s, a: f(s, a))  # a fresh function: no trace cache hits
    jitted.lower(state, x).compile()
    dtype, dims = spec.split("[")
    sym = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims.rstrip("]")), x.dtype)
    jax.export.export(jax.jit(lambda s, a: f(s, a)))(state, sym).serialize()


def first_result_in_child(mode: str, name: str, d_model: int, path: str) -> dict:
    """Run this script as ``--child`` in a fresh interpreter; returns its timings."""
    cmd = [sys.executable, __file__, "--child", mode, name, str(d_model), path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(mode: str, name: str, d_model: int, path: str) -> None:
    if mode == "load":
        x = example_input(name)
        t0 = time.perf_counter()
        art = nnxc.load(path)
        jax.block_until_ready(art(x))
        print(json.dumps({"total": time.perf_counter() - t0}))
    else:
        t0 = time.perf_counter()
        model, _, x = make_model(name, d_model)
        f, state = pure_fn(model)
        t1 = time.perf_counter()
        jax.block_until_ready(jax.jit(f)(state, x))
        t2 = time.perf_counter()
        print(json.dumps({"total": t2 - t0, "init": t1 - t0, "jit": t2 - t1}))


def latency(art, jitted, state, exe, x, runs: int) -> dict:
    """Median call times, and the median of per-round ratios art/jit (robust to drift)."""
    calls = {"art": lambda: art(x), "jit": lambda: jitted(state, x), "exe": lambda: exe(x)}
    for fn in calls.values():  # compile and warm up
        for _ in range(5):
            jax.block_until_ready(fn())
    times = {k: [] for k in calls}
    order = list(calls)
    for i in range(runs):  # interleaved, order alternating, so drift and load hit all alike
        for k in (order if i % 2 else order[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(calls[k]())
            times[k].append(time.perf_counter() - t0)
    out = {f"lat_{k}": statistics.median(v) for k, v in times.items()}
    out["lat_ratio"] = statistics.median(a / j for a, j in zip(times["art"], times["jit"]))
    out["exe_ratio"] = statistics.median(e / j for e, j in zip(times["exe"], times["jit"]))
    out["exe_extra"] = statistics.median(e - j for e, j in zip(times["exe"], times["jit"]))
    return out


def bench(name: str, args, folder: str) -> dict:
    model, spec, x = make_model(name, args.d_model)
    path = os.path.join(folder, f"{name}.nnxc")
    build_nnxc(model, spec, x, path)  # warm both paths once
    build_direct(model, spec, x)
    t_nnxc = median_time(lambda: build_nnxc(model, spec, x, path), args.repeat)
    t_direct = median_time(lambda: build_direct(model, spec, x), args.repeat)
    f, state = pure_fn(model)
    raw = sum(a.nbytes for a in jax.tree_util.tree_leaves(state))
    size = os.path.getsize(path)
    loaded = first_result_in_child("load", name, args.d_model, path)
    retraced = first_result_in_child("retrace", name, args.d_model, path)
    art = nnxc.load(path)
    exe = nnxc.compile(nnxc.trace(model, spec))
    xd = jax.device_put(x)
    return dict(model=name, build_nnxc=t_nnxc, build_direct=t_direct, size=size, raw=raw,
                load_first=loaded["total"], retrace_first=retraced["total"],
                retrace_init=retraced["init"], retrace_jit=retraced["jit"],
                **latency(art, jax.jit(f), state, exe, xd, max(args.runs, 20)))


COLUMNS = [  # header, width, format of a row dict
    ("model", 7, lambda r: r["model"]),
    ("nnxc build", 10, lambda r: f"{r['build_nnxc']:.2f}s"),
    ("jax build", 9, lambda r: f"{r['build_direct']:.2f}s"),
    ("ratio", 5, lambda r: f"{r['build_nnxc'] / r['build_direct']:.2f}"),
    ("artifact", 9, lambda r: f"{r['size'] / 2**20:.2f}MB"),
    ("weights", 8, lambda r: f"{r['raw'] / 2**20:.2f}MB"),
    ("+over", 7, lambda r: f"{(r['size'] - r['raw']) / 2**10:.0f}KB"),
    ("load+1st", 8, lambda r: f"{r['load_first']:.2f}s"),
    ("init+jit+1st", 12, lambda r: f"{r['retrace_first']:.2f}s"),
    ("(jit+1st)", 9, lambda r: f"{r['retrace_jit']:.2f}s"),
    ("lat art", 9, lambda r: f"{1e6 * r['lat_art']:.0f}us"),
    ("lat jit", 9, lambda r: f"{1e6 * r['lat_jit']:.0f}us"),
    ("art/jit", 7, lambda r: f"{r['lat_ratio']:.3f}"),
    ("lat exe", 9, lambda r: f"{1e6 * r['lat_exe']:.0f}us"),
    ("exe/jit", 7, lambda r: f"{r['exe_ratio']:.3f}"),
    ("exe-jit", 8, lambda r: f"{1e6 * r['exe_extra']:+.1f}us"),
]


# -- --memory: save and load of a > 2 GB model ----------------------------------------------

_BIG_LAYERS, _BIG_WIDTH = 10, 8192


def big_model():
    """An MLP of ``_BIG_LAYERS`` Linear(8192, 8192) layers: 2.5 GiB of f32 weights (drawn
    from an ``rbg`` key, which XLA compiles and runs far faster than threefry)."""
    class Big(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(_BIG_WIDTH, _BIG_WIDTH, rngs=rngs)
                                    for _ in range(_BIG_LAYERS)])

        def __call__(self, x):
            for layer in self.layers:
                x = jax.nn.relu(layer(x))
            return x
    return Big(nnx.Rngs(0, params=jax.random.key(0, impl="rbg")))


def _status() -> dict:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f
                if line.startswith(("VmRSS", "VmHWM"))}


def memory_child(mode: str, path: str) -> None:
    """In a fresh process: the peak resident memory of ``save`` (``mode == "save"``) or
    ``load``, and the weights' bytes, as JSON."""
    jax.device_put(np.ones(4)).block_until_ready()  # the CPU client exists before measuring
    if mode == "save":
        graph = nnxc.trace(big_model(), f"f32[B,{_BIG_WIDTH}]")
        weights = sum(v.data.nbytes for v in graph.variables)
        jax.block_until_ready([v.data for v in graph.variables])
        base = _status()["VmRSS"] - weights  # what the process holds besides the weights
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak starts again from here
        t0 = time.perf_counter()
        nnxc.save(graph, path)
    else:
        base = _status()["VmRSS"]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t0 = time.perf_counter()
        art = nnxc.load(path)
        jax.block_until_ready(list(art.state.values()))
        weights = sum(x.nbytes for x in art.state.values())
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak": _status()["VmHWM"] - base, "weights": weights, "seconds": seconds}))


def memory(folder: str) -> None:
    path = os.path.join(folder, "big.nnxc")
    rows = {}
    for mode in ("save", "load"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode, path], check=True,
                             capture_output=True, text=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    weights = rows["save"]["weights"]
    print(f"> 2 GB model: MLP of {_BIG_LAYERS} Linear({_BIG_WIDTH}, {_BIG_WIDTH}), "
          f"{weights / 2**30:.2f} GiB of weights, artifact {os.path.getsize(path) / 2**30:.2f} GiB")
    print("| step | seconds | peak resident memory (process baseline excluded) | / weights | target |")
    print("|---|---:|---:|---:|---|")
    for mode, row in rows.items():
        r = row["peak"] / weights
        print(f"| nnxc.{mode} | {row['seconds']:.1f} | {row['peak'] / 2**30:.2f} GiB | {r:.2f}x | "
              f"{'✓' if r <= 1.1 else '✗'} (<= 1.1x) |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, name, d_model, path = sys.argv[2:6]
        return child(mode, name, int(d_model), path)
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        return memory_child(*sys.argv[2:4])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="1,4", help="GPT depths (full run: 1,2,4,8,16,32)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--runs", type=int, default=50, help="latency calls per path (>= 20)")
    ap.add_argument("--repeat", type=int, default=3, help="build timings per path")
    ap.add_argument("--memory", action="store_true",
                    help="instead: save/load peak memory of a > 2 GB model (Linux)")
    args = ap.parse_args()
    if args.memory:
        with tempfile.TemporaryDirectory() as folder:
            return memory(folder)
    names = [f"gpt-{d}" for d in args.depths.split(",") if d] + ([] if args.no_cnn else ["cnn"])
    print(" ".join(f"{h:>{w}}" for h, w, _ in COLUMNS), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            row = bench(name, args, folder)
            print(" ".join(f"{fmt(row):>{w}}" for _, w, fmt in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
