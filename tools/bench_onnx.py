"""ONNX benchmarks: nnxc vs jax2onnx (and jax.jit) side by side.

Export benchmark (the default; nnxc, nnxc -O and jax2onnx on the example GPT, CNN, MLP):

    .venv/bin/python tools/bench_onnx.py                 # GPT depths 1..32, CNN, MLP, fresh process
    .venv/bin/python tools/bench_onnx.py --depths 1 8 --runs 20
    .venv/bin/python tools/bench_onnx.py --big           # + the >2 GB decoder (d_model 2048, 12 layers)

Per model and tool -- nnxc (trace + export), nnxc -O (trace + the default passes + export)
and jax2onnx: export wall time (warm: a model already exported once, best of ``--repeat``),
ONNX node count (subgraphs included), onnxruntime latency at batch 1 and 8 (median of
``--runs``, the tools' runs interleaved), and the ratios to jax2onnx. Then the first export in a fresh
process, and with ``--big`` the export time and extra peak memory (RSS sampled every 10 ms)
of a decoder with ~600 M parameters. jax2onnx is optional (``pip install jax2onnx``).

Speed benchmark of issue 11 (``--speed``; the models are in ``tools/bench_models.py``):

    .venv/bin/python tools/bench_onnx.py --speed --runs 30 --json bench_speed.json
    .venv/bin/python tools/bench_onnx.py --speed --models gpt4 resnet18 --batches 1 --runs 5 --cores 1

Models: ``gpt4``/``gpt8`` (examples/gpt.py, d_model 256, 8 heads, seq 128), ``llama``
(RMSNorm, RoPE, SwiGLU, 8 query / 2 KV heads, d 256, 4 layers, seq 128), ``vit`` (32x32
images, 4x4 patches by Conv, CLS token, d 192, 6 pre-norm blocks), ``resnet18`` (224x224,
NHWC). Engines, each at every ``--batches`` size: nnxc ``-O inference`` ONNX in
onnxruntime, jax2onnx's ONNX in onnxruntime (a model it cannot export or onnxruntime
cannot load says why in its row; a file onnxruntime refuses as written is retried without
its ``value_info``, which jax2onnx 0.17.1's ResNet needs, and the run says so), ``jax.jit``
of the model (state as arguments, device input, ``block_until_ready``), nnxc's int8
(onnxruntime ``quantize_dynamic`` for transformers, ``quantize_static`` QDQ calibrated on
random images for ResNet, via ``nnxc.runtime.quantize``, as ``nnxc.quantize_onnx`` does)
and fp16 (``precision="fp16"``).

How it measures: one child process per ``--cores`` entry (default 1 and 2), pinned with
``sched_setaffinity`` to the first N CPUs this process may use, started with XLA_FLAGS set
before jax is imported (1 core: ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``) and onnxruntime sessions with ``intra_op_num_threads=N``.
Per model and batch the engines run in rounds, one call each per round in rotating order
(``--warmup`` rounds dropped, then ``--runs``); the figure is the median CPU time per call
(``time.process_time``: all threads of the process; time spent waiting for a CPU taken by
other load is not counted; with 2 cores it adds both cores' time, onnxruntime's pool thread
spinning included, so the wall-clock medians are printed as well). Before timing, nnxc's fp32 output must agree with ``jax.jit``'s within 1e-4 of the
output's scale (asserted); int8/fp16 accuracy (max abs error, that error / max|ref|,
top-1 agreement for logits) is measured against the fp32 model's JAX output on
``--samples`` random inputs (static int8 calibrates on a different draw). Node counts
include subgraphs; "after ORT" counts the graph onnxruntime itself runs
(``SessionOptions.optimized_model_filepath``). Targets (issue 11) are printed beside the
ratios: fp32 ONNX <= 0.80x jax2onnx on transformers and <= 0.95x on ResNet-18, <= 1.0x
jax.jit; int8 <= 0.60x jax2onnx's fp32 on transformers, <= 0.45x on ResNet-18; nodes <=
0.5x jax2onnx's. ``--json PATH`` writes every figure. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import nnxc  # noqa: E402
import zoo  # noqa: E402

logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # jax2onnx's serializer warns per value

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


# -- the speed benchmark (--speed) -----------------------------------------------------------

TARGETS = {  # issue 11: ratio <= target
    "transformer": {"nnxc/jax2onnx": 0.80, "nnxc/jit": 1.0, "int8/jax2onnx": 0.60, "nodes": 0.5},
    "cnn": {"nnxc/jax2onnx": 0.95, "nnxc/jit": 1.0, "int8/jax2onnx": 0.45, "nodes": 0.5},
}
ENGINES = ("nnxc", "jax2onnx", "jit", "int8", "fp16")
ONNX_ENGINES = ("nnxc", "jax2onnx", "int8", "fp16")
FP32_RTOL = 1e-4  # nnxc's fp32 ONNX vs jax.jit: max abs err <= this x max|ref|
ONE_CORE_XLA = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def xla_flags(cores: int, inherited: str) -> str:
    keep = [f for f in inherited.split() if not f.startswith(("--xla_cpu_multi_thread_eigen",
                                                               "intra_op_parallelism_threads"))]
    return " ".join(keep + (list(ONE_CORE_XLA) if cores == 1 else []))


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def rel_err(ref, got) -> float:
    """max |got - ref| / max |ref|."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def ort_session(proto, cores: int, optimized_path: str | None = None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = cores
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def strip_value_info(proto) -> int:
    """Delete ``value_info`` in the graph and every subgraph; the number of entries deleted."""
    def walk(g):
        n = len(g.value_info)
        del g.value_info[:]
        for node in g.node:
            for a in node.attribute:
                if a.HasField("g"):
                    n += walk(a.g)
                for sub in a.graphs:
                    n += walk(sub)
        return n
    return walk(proto.graph)


def interleaved(calls: dict, runs: int, warmup: int) -> dict:
    """``{engine: (median CPU s, median wall s)}``: rounds of one call per engine, in an order
    rotating by round; the first ``warmup`` rounds are dropped."""
    names = list(calls)
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for r in range(warmup + runs):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            w0, c0 = time.perf_counter(), time.process_time()
            calls[n]()
            c1, w1 = time.process_time(), time.perf_counter()
            if r >= warmup:
                cpu[n].append(c1 - c0)
                wall[n].append(w1 - w0)
    return {n: (float(np.median(cpu[n])), float(np.median(wall[n]))) for n in names}


def low_precision(graph, f32, spec, which: str, samples: int, accuracy: bool):
    """(converted model, mode, accuracy dict or None) for ``which`` "int8" or "fp16"."""
    from nnxc.runtime import quantize as q
    if which == "int8":
        mode = spec.quantize_mode
        calib = q.feeds(f32, [[spec.input(samples, seed=1)]]) if mode == "static" else None
        model, mode = q.convert_onnx(f32, quantize="int8", mode=mode, calibration=calib)
        kind = q.kind_of("int8", mode, None)
    else:
        model, mode = q.convert_onnx(f32, precision="fp16")
        kind = q.kind_of(None, None, "fp16")
    acc = None
    if accuracy:
        report = q.accuracy(graph, model, [[spec.input(samples, seed=0)]], kind=kind,
                            described=f"{samples} random inputs (seed 0)")
        row = report.rows[0]
        acc = {"kind": kind, "abs": row["abs"], "rel": row["rel"], "top1": row["top1"],
               "top1_n": row["top1_n"], "ok": row["ok"]}
    return model, kind, acc


def speed_worker(a) -> None:
    """One ``--cores`` setting, in a process already pinned with XLA_FLAGS set; writes JSON."""
    import warnings

    import bench_models as bm
    from flax import nnx
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    cores, cache = a.worker, a.cache
    first = not os.path.exists(os.path.join(cache, "models.json"))
    infos = {} if first else json.load(open(os.path.join(cache, "models.json")))
    out = {"cores": cores, "affinity": sorted(os.sched_getaffinity(0)),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": []}
    for name in a.models:
        spec = bm.MODELS[name]
        log = lambda msg: print(f"[{cores} core{'s' if cores > 1 else ''}] {name}: {msg}",  # noqa: E731
                                file=sys.stderr, flush=True)
        model = spec.factory()
        info = infos.setdefault(name, {"kind": spec.kind, "errors": {}, "notes": [], "nodes": {},
                                       "nodes_ort": {}, "opset": {}, "accuracy": {}})
        protos = {}
        path = lambda e: os.path.join(cache, f"{name}.{e}.onnx")  # noqa: E731
        if first:  # export once; later workers load the files
            log("exporting")
            graph = nnxc.optimize(nnxc.trace(model, spec.spec()), "inference")
            info["params"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))
            protos["nnxc"] = nnxc.export_onnx(graph)
            if to_onnx is None:
                info["errors"]["jax2onnx"] = "jax2onnx is not installed (pip install 'jax2onnx>=0.17')"
            else:
                try:
                    protos["jax2onnx"] = j2o_export(model, spec.dtype, spec.shape)
                except Exception as e:  # noqa: BLE001 - report in the table
                    info["errors"]["jax2onnx"] = f"export failed: {first_line(e)}"
            for which in ("int8", "fp16"):
                try:
                    protos[which], _, acc = low_precision(graph, protos["nnxc"], spec, which,
                                                             a.samples, True)
                    info["accuracy"][which] = acc
                except Exception as e:  # noqa: BLE001
                    info["errors"][which] = first_line(e)
        else:
            for e in ONNX_ENGINES:
                if os.path.exists(path(e)):
                    protos[e] = onnx.load(path(e))
        sessions = {}
        for e, proto in list(protos.items()):
            opt = os.path.join(cache, f"{name}.{e}.ort-optimized.onnx") if first else None
            try:
                sessions[e] = ort_session(proto, cores, opt)
            except Exception as err:  # noqa: BLE001
                if e != "jax2onnx":
                    raise
                n = strip_value_info(proto)
                note = (f"jax2onnx's {name} file: onnxruntime refuses it as written ({first_line(err)}); "
                        f"deleted its value_info ({n} entries), then it loads")
                try:
                    sessions[e] = ort_session(proto, cores, opt)
                    info["notes"].append(note)
                    print(note, flush=True)
                except Exception as err2:  # noqa: BLE001
                    info["errors"][e] = f"onnxruntime cannot load it: {first_line(err2)}"
                    del protos[e]
                    continue
            if first:
                info["nodes"][e] = count_nodes(proto.graph)
                info["opset"][e] = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                                       default=None)
                info["nodes_ort"][e] = count_nodes(onnx.load(opt).graph) if os.path.exists(opt) else None
                if os.path.exists(opt):
                    os.remove(opt)
                onnx.save(proto, path(e))
        graphdef, state = nnx.split(model)
        jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        for batch in a.batches:
            x = spec.input(batch, seed=0)
            xd = jax.device_put(x)
            ref = np.asarray(jitted(state, xd))
            feeds = {e: {s.get_inputs()[0].name: x} for e, s in sessions.items()}
            errs = {e: rel_err(ref, s.run(None, feeds[e])[0]) for e, s in sessions.items()}
            log(f"batch {batch}: max rel err vs jax.jit " + ", ".join(f"{e} {v:.2e}" for e, v in errs.items()))
            if not errs["nnxc"] <= FP32_RTOL:
                raise AssertionError(f"{name} batch {batch}: nnxc's fp32 ONNX differs from jax.jit by "
                                     f"{errs['nnxc']:.3g} of the output's scale (> {FP32_RTOL})")
            calls = {e: (lambda s=s, f=feeds[e]: s.run(None, f)) for e, s in sessions.items()}
            calls["jit"] = lambda: jitted(state, xd).block_until_ready()
            calls = {e: calls[e] for e in ENGINES if e in calls}
            med = interleaved(calls, a.runs, a.warmup)
            out["rows"].append({"model": name, "batch": batch, "cores": cores, "kind": spec.kind,
                                "cpu_ms": {e: v[0] * 1e3 for e, v in med.items()},
                                "wall_ms": {e: v[1] * 1e3 for e, v in med.items()},
                                "max_rel_err_vs_jit": errs})
    if first:
        with open(os.path.join(cache, "models.json"), "w") as f:
            json.dump(infos, f)
    out["models"] = infos
    with open(a.worker_out, "w") as f:
        json.dump(out, f)


def ratio(row: dict, num: str, den: str, key: str = "cpu_ms"):
    t = row[key]
    return t[num] / t[den] if num in t and den in t and t[den] > 0 else None


def verdict(value, target) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} {'✓' if value <= target else '✗'} (≤{target:.2f})"


def speed_tables(result: dict) -> str:
    lines = []
    models = result["models"]
    for run in result["runs"]:
        cores = run["cores"]
        keys = ["cpu_ms"] + (["wall_ms"] if cores > 1 else [])
        for key in keys:
            what = "CPU" if key == "cpu_ms" else "wall-clock"
            lines += ["", f"### {cores} core{'s' if cores > 1 else ''} (CPUs {run['affinity']}): "
                          f"{what} ms per call, median of {result['runs_per_cell']}", "",
                      "| model | batch | nnxc | jax2onnx | jax.jit | int8 | fp16 | nnxc/jax2onnx | "
                      "nnxc/jit | int8/jax2onnx | fp16/jax2onnx |",
                      "|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
            for row in run["rows"]:
                t, tg = row[key], TARGETS[row["kind"]]
                errors = models[row["model"]]["errors"]
                cell = [f"{t[e]:.3f}" if e in t else (f"failed: {errors[e][:70]}" if e in errors else "-")
                        for e in ENGINES]
                fp16 = ratio(row, "fp16", "jax2onnx", key)
                lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(cell) + " | "
                             f"{verdict(ratio(row, 'nnxc', 'jax2onnx', key), tg['nnxc/jax2onnx'])} | "
                             f"{verdict(ratio(row, 'nnxc', 'jit', key), tg['nnxc/jit'])} | "
                             f"{verdict(ratio(row, 'int8', 'jax2onnx', key), tg['int8/jax2onnx'])} | "
                             f"{'n/a' if fp16 is None else f'{fp16:.2f}'} |")
    lines += ["", "### Graphs and accuracy", "",
              "| model | params | nodes nnxc | nodes jax2onnx | nnxc/jax2onnx | after ORT: nnxc / jax2onnx | "
              "max rel err vs jit: nnxc / jax2onnx | int8 | fp16 |",
              "|---|---:|---:|---:|---|---|---|---|---|"]
    errs = {}
    for run in result["runs"]:
        for row in run["rows"]:
            for e, v in row["max_rel_err_vs_jit"].items():
                errs.setdefault(row["model"], {}).setdefault(e, 0.0)
                errs[row["model"]][e] = max(errs[row["model"]][e], v)
    for name, info in models.items():
        n, no = info["nodes"], info["nodes_ort"]
        nr = n["nnxc"] / n["jax2onnx"] if "jax2onnx" in n else None

        def acc(which):
            if which in info["errors"]:
                return f"failed: {info['errors'][which]}"
            r = info["accuracy"].get(which)
            if not r:
                return "-"
            top1 = "" if r["top1"] is None else f", top-1 {100 * r['top1'] / r['top1_n']:.1f}%"
            return (f"{r['kind']}: abs {r['abs']:.3g}, rel {r['rel']:.3g}{top1}"
                    f"{'' if r['ok'] else ' (beyond nnxc tolerance)'}; {n.get(which, '?')} nodes")
        e = errs.get(name, {})
        lines.append(f"| {name} | {info.get('params', 0) / 1e6:.2f} M | {n.get('nnxc', '-')} | "
                     f"{n.get('jax2onnx', info['errors'].get('jax2onnx', '-'))} | "
                     f"{verdict(nr, TARGETS[info['kind']]['nodes'])} | "
                     f"{no.get('nnxc', '-')} / {no.get('jax2onnx', '-')} | "
                     f"{e.get('nnxc', float('nan')):.2e} / "
                     f"{'-' if 'jax2onnx' not in e else format(e['jax2onnx'], '.2e')} | "
                     f"{acc('int8')} | {acc('fp16')} |")
    notes = [note for info in models.values() for note in info["notes"]]
    notes += [f"{name}: jax2onnx {err}" for name, info in models.items()
              for k, err in info["errors"].items() if k == "jax2onnx"]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def speed(a) -> None:
    import bench_models as bm
    unknown = [m for m in a.models if m not in bm.MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {', '.join(bm.MODELS)}")
    allowed = sorted(os.sched_getaffinity(0))
    print(f"onnxruntime {ort.__version__}, jax {jax.__version__}, jax2onnx "
          f"{'not installed' if to_onnx is None else _j2o_version()}, nnxc {nnxc.__version__}; "
          f"CPUs allowed {allowed}", flush=True)
    result = {"versions": {"onnxruntime": ort.__version__, "jax": jax.__version__, "nnxc": nnxc.__version__,
                           "jax2onnx": None if to_onnx is None else _j2o_version()},
              "runs_per_cell": a.runs, "warmup": a.warmup, "samples": a.samples,
              "targets": TARGETS, "fp32_rtol": FP32_RTOL, "runs": []}
    with tempfile.TemporaryDirectory(prefix="nnxc-bench-") as cache:
        for cores in a.cores:
            if cores > len(allowed):
                raise SystemExit(f"--cores {cores}: this process may use {len(allowed)} CPUs")
            cpus = allowed[:cores]
            env = dict(os.environ, XLA_FLAGS=xla_flags(cores, os.environ.get("XLA_FLAGS", "")))
            out = os.path.join(cache, f"worker{cores}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--speed", "--worker", str(cores),
                   "--worker-out", out, "--cache", cache, "--models", *a.models,
                   "--batches", *map(str, a.batches), "--runs", str(a.runs), "--warmup", str(a.warmup),
                   "--samples", str(a.samples)]
            print(f"-- {cores} core{'s' if cores > 1 else ''}: CPUs {cpus}, XLA_FLAGS={env['XLA_FLAGS']!r}, "
                  f"onnxruntime intra_op_num_threads={cores}", flush=True)
            subprocess.run(cmd, env=env, check=True, preexec_fn=lambda c=cpus: os.sched_setaffinity(0, c))
            with open(out) as f:
                run = json.load(f)
            result["models"] = run.pop("models")
            result["runs"].append(run)
    for run in result["runs"]:  # the ratios and whether each meets its target, in the JSON too
        for row in run["rows"]:
            tg = TARGETS[row["kind"]]
            for key in ("cpu_ms", "wall_ms"):
                row[f"ratios_{key[:-3]}"] = {f"{n}/{d}": ratio(row, n, d, key) for n, d in
                                             (("nnxc", "jax2onnx"), ("nnxc", "jit"), ("int8", "jax2onnx"),
                                              ("fp16", "jax2onnx"), ("int8", "nnxc"))}
            row["targets_met_cpu"] = {k: None if row["ratios_cpu"].get(k) is None else row["ratios_cpu"][k] <= t
                                      for k, t in tg.items() if k != "nodes"}
    for info in result["models"].values():
        n = info["nodes"]
        info["nodes_ratio"] = n["nnxc"] / n["jax2onnx"] if "jax2onnx" in n and "nnxc" in n else None
    print(speed_tables(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {a.json}")


def _j2o_version() -> str:
    from importlib.metadata import version
    return version("jax2onnx")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--big", action="store_true")
    p.add_argument("--no-fresh", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    p.add_argument("--only-big", action="store_true")
    sp = p.add_argument_group("speed benchmark (issue 11)")
    sp.add_argument("--speed", action="store_true", help="the speed table of issue 11 instead")
    sp.add_argument("--models", nargs="+", default=["gpt4", "gpt8", "llama", "vit", "resnet18"],
                    help="from tools/bench_models.py (commas or spaces)")
    sp.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    sp.add_argument("--cores", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    sp.add_argument("--warmup", type=int, default=3, help="rounds dropped before --runs")
    sp.add_argument("--samples", type=int, default=8, help="inputs of the int8/fp16 accuracy")
    sp.add_argument("--json", help="write the figures to this file")
    sp.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    sp.add_argument("--worker-out", help=argparse.SUPPRESS)
    sp.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.models = [m for arg in a.models for m in arg.split(",") if m]
    if a.speed:
        if a.worker is not None:
            speed_worker(a)
        else:
            speed(a)
        return
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
