"""ONNX export benchmark: nnxc vs jax2onnx side by side.

    .venv/bin/python tools/bench_onnx.py                 # GPT depths 1..32, CNN, MLP, fresh process
    .venv/bin/python tools/bench_onnx.py --depths 1 8 --runs 20
    .venv/bin/python tools/bench_onnx.py --big           # + the >2 GB decoder (d_model 2048, 12 layers)

Per model and tool -- nnxc (trace + export), nnxc -O (trace + the default passes + export)
and jax2onnx: export wall time (warm: a model already exported once, best of ``--repeat``),
ONNX node count (subgraphs included), onnxruntime latency at batch 1 and 8 (median of
``--runs``, the tools' runs interleaved), and the ratios to jax2onnx. Then the first export in a fresh
process, and with ``--big`` the export time and extra peak memory (RSS sampled every 10 ms)
of a decoder with ~600 M parameters. jax2onnx is optional (``pip install jax2onnx``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import nnxc  # noqa: E402
import zoo  # noqa: E402

try:
    from jax2onnx import to_onnx
except ImportError:  # optional
    to_onnx = None


def models(depths):
    gpt = zoo.example_module("gpt")
    for d in depths:
        yield f"gpt d256 x{d}", lambda d=d: gpt.gpt(depth=d, d_model=256, num_heads=8), "i32", (8,)
    yield "cnn", zoo.ZOO["cnn"].factory, "f32", (16, 16, 1)
    yield "mlp", zoo.ZOO["mlp"].factory, "f32", (64,)


def nnxc_export(model, dtype, shape):
    graph = nnxc.trace(model, f"{dtype}[B,{','.join(map(str, shape))}]")
    return nnxc.export_onnx(graph)


def nnxc_optimized(model, dtype, shape):
    graph = nnxc.trace(model, f"{dtype}[B,{','.join(map(str, shape))}]")
    return nnxc.export_onnx(nnxc.optimize(graph, "default"))


def j2o_export(model, dtype, shape):
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(", ".join(["B", *map(str, shape)])),
                                jnp.int32 if dtype == "i32" else jnp.float32)
    return to_onnx(model, [spec])


def count_nodes(graph) -> int:
    n = 0
    for node in graph.node:
        n += 1
        for a in node.attribute:
            if a.g.node:
                n += count_nodes(a.g)
    return n


def timed(fn, repeat: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


THREADS = 0  # onnxruntime intra-op threads (0: its default); --threads


def session(model_proto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = THREADS
    return ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def latencies(protos: dict, dtype, shape, batch: int, runs: int) -> dict:
    """Median onnxruntime latency per tool; the tools' runs alternate, so load spikes hit both."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, (batch, *shape)).astype(np.int32) if dtype == "i32" else \
        rng.standard_normal((batch, *shape)).astype(np.float32)
    sessions = {tool: session(p) for tool, p in protos.items()}
    feeds = {tool: {s.get_inputs()[0].name: x} for tool, s in sessions.items()}
    times: dict = {tool: [] for tool in sessions}
    for i in range(runs + 3):
        for tool, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[tool])
            if i >= 3:  # warm-up runs
                times[tool].append(time.perf_counter() - t)
    return {tool: float(np.median(ts)) for tool, ts in times.items()}


def bench(depths, runs: int, repeat: int):
    head = (f"{'model':<14} {'tool':<9} {'export s':>9} {'nodes':>6} {'ort b1 ms':>10} {'ort b8 ms':>10}")
    print(head + "\n" + "-" * len(head))
    tools = {"nnxc": nnxc_export, "nnxc -O": nnxc_optimized}
    if to_onnx is not None:
        tools["jax2onnx"] = j2o_export
    for name, factory, dtype, shape in models(depths):
        protos, export_s = {}, {}
        for tool, export in tools.items():
            model = factory()
            try:
                export(model, dtype, shape)  # warm-up: the first call fills JAX's caches
                export_s[tool], protos[tool] = timed(lambda: export(model, dtype, shape), repeat)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{name:<14} {tool:<9} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        lat = {b: latencies(protos, dtype, shape, b, runs) for b in (1, 8)}
        rows = {t: (export_s[t], count_nodes(protos[t].graph), lat[1][t] * 1e3, lat[8][t] * 1e3) for t in protos}
        for tool, r in rows.items():
            print(f"{name:<14} {tool:<9} {r[0]:>9.3f} {r[1]:>6} {r[2]:>10.3f} {r[3]:>10.3f}")
        for tool in ("nnxc", "nnxc -O"):
            if tool in rows and "jax2onnx" in rows:
                r = [a / b for a, b in zip(rows[tool], rows["jax2onnx"])]
                print(f"{name:<14} {'ratio':<9} {r[0]:>9.2f} {r[1]:>6.2f} {r[2]:>10.2f} {r[3]:>10.2f}"
                      f"   ({tool} / jax2onnx)")
        print(flush=True)


FRESH = """
import sys, time
t0 = time.perf_counter()
sys.path[:0] = [{root!r}, {tests!r}]
import jax, jax.numpy as jnp, zoo
{imports}
t1 = time.perf_counter()
model = zoo.example_module("gpt").gpt(depth={depth}, d_model=256, num_heads=8)
t2 = time.perf_counter()
{export}
t3 = time.perf_counter()
print(f"{{t1 - t0:.2f}} {{t3 - t2:.2f}}")
"""


def fresh(depth: int):
    tools = {"nnxc": ("import nnxc", "nnxc.export_onnx(nnxc.trace(model, 'i32[B,8]'))")}
    if to_onnx is not None:
        tools["jax2onnx"] = ("from jax2onnx import to_onnx", "to_onnx(model, [jax.ShapeDtypeStruct("
                             "jax.export.symbolic_shape('B, 8'), jnp.int32)])")
    print(f"\nfirst export in a fresh process (gpt d256 x{depth}; imports timed apart)")
    for tool, (imports, export) in tools.items():
        code = FRESH.format(root=ROOT, tests=os.path.join(ROOT, "tests"), imports=imports,
                            depth=depth, export=export)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        imp, first = out.stdout.split()[-2:]
        print(f"  {tool:<9} import {imp} s, first trace + export {first} s")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_during(fn):
    samples, done = [rss()], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss())
            time.sleep(0.01)
    thread = threading.Thread(target=sample, daemon=True)
    before = rss()
    thread.start()
    t = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - t
        done.set()
        thread.join()
    return elapsed, max(samples) - before


def big():
    gpt = zoo.example_module("gpt")
    model = gpt.gpt(depth=12, d_model=2048, num_heads=16)
    from nnxc.backends.onnx.builder import host_array
    weights = sum(host_array(x).nbytes for x in nnxc.trace(model, "i32[B,8]").state().values())
    print(f"\n>2 GB decoder (d_model 2048, 12 layers): {weights / 2**30:.2f} GiB of weights")
    with tempfile.TemporaryDirectory() as tmp:
        t, extra = peak_during(lambda: nnxc.export_onnx(nnxc.trace(model, "i32[B,8]"), os.path.join(tmp, "a.onnx")))
        print(f"  nnxc      trace + export {t:.1f} s, extra peak memory {extra / weights:.2f}x the weights")
        if to_onnx is not None:
            spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 8"), jnp.int32)
            t, extra = peak_during(lambda: to_onnx(model, [spec], return_mode="file",
                                                   output_path=os.path.join(tmp, "b.onnx")))
            print(f"  jax2onnx  export {t:.1f} s, extra peak memory {extra / weights:.2f}x the weights")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--big", action="store_true")
    p.add_argument("--no-fresh", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    p.add_argument("--only-big", action="store_true")
    a = p.parse_args()
    global THREADS
    THREADS = a.threads
    print(f"onnxruntime {ort.__version__} ({a.threads or 'default'} threads), jax {jax.__version__}, "
          f"jax2onnx {'not installed' if to_onnx is None else 'installed'}")
    if not a.only_big:
        bench(a.depths, a.runs, a.repeat)
        if not a.no_fresh:
            fresh(max(a.depths))
    if a.big or a.only_big:
        big()


if __name__ == "__main__":
    main()
