"""Pass-pipeline cost vs graph size, on the GPT-style decoder at growing depth (and the zoo).

    .venv/bin/python tools/bench_passes.py                  # depths 1 2 4 8 16 32, d_model 256
    .venv/bin/python tools/bench_passes.py --depths 1 8 32 --pipeline inference --per-pass
    .venv/bin/python tools/bench_passes.py --models         # ONNX size / latency, XLA latency

``--models``: for the decoder (``--model-depth``), the CNN and the MLP of examples/: ONNX node
count and onnxruntime latency at batch 1 and 8 for nnxc "inference", nnxc without passes
and jax2onnx (when it imports; ``--jax2onnx-path`` adds a folder to sys.path), and XLA
latency of nnxc "inference" against ``jax.jit`` of the model.

Prints, per depth, the node count, the pipeline time and the time per node (which must stay
flat: nothing in the passes may be quadratic in the number of nodes), and with
``--per-pass`` each pass's time. Every pipeline runs twice and the faster run counts, so
the one-off cost of JAX compiling the ops that constant folding evaluates is left out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)

import nnxc  # noqa: E402
from nnxc.passes.manager import count_nodes  # noqa: E402


def decoder(depth: int, d_model: int):
    from gpt import gpt
    return gpt(depth=depth, d_model=d_model, num_heads=max(1, d_model // 64))


def run(graph, pipeline: str, repeat: int = 2):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out, stats = nnxc.optimize(graph, pipeline, stats=True, verify=False)
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, out, stats)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--pipeline", default="default")
    ap.add_argument("--per-pass", action="store_true", help="print each pass's time")
    ap.add_argument("--models", action="store_true", help="ONNX and XLA size / latency comparison")
    ap.add_argument("--model-depth", type=int, default=4)
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--jax2onnx-path", default=None)
    args = ap.parse_args(argv)
    if args.jax2onnx_path:
        sys.path.insert(0, args.jax2onnx_path)
    if not args.skip_scaling:
        scaling(args)
    if args.models:
        compare_models(args.model_depth, args.d_model)
    return 0


def scaling(args) -> None:

    print(f"pipeline {args.pipeline!r}, GPT decoder d_model {args.d_model}")
    print(f"{'depth':>5} {'nodes':>7} {'->':>5} {'trace s':>8} {'passes s':>9} {'us/node':>8}")
    rows = []
    for depth in args.depths:
        model = decoder(depth, args.d_model)
        t0 = time.perf_counter()
        g = nnxc.trace(model, "i32[B,8]")
        t_trace = time.perf_counter() - t0
        dt, out, stats = run(g, args.pipeline)
        n = count_nodes(g)
        rows.append((depth, n, dt))
        print(f"{depth:>5} {n:>7} {count_nodes(out):>5} {t_trace:>8.2f} {dt:>9.3f} {dt / n * 1e6:>8.1f}")
        if args.per_pass:
            for s in stats:
                print(f"{'':>14}{s.name:<22}{s.seconds * 1e3:8.2f} ms  {s.seconds / n * 1e6:6.2f} us/node")
    if len(rows) > 1:
        (_, n0, t0), (_, n1, t1) = rows[0], rows[-1]
        print(f"time grows {t1 / t0:.1f}x for {n1 / n0:.1f}x the nodes "
              f"(per node: {t0 / n0 * 1e6:.1f} -> {t1 / n1 * 1e6:.1f} us)")


# -- ONNX and XLA: size and latency -----------------------------------------------------------

def _ab(f, g, n: int = 300) -> tuple[float, float]:
    """Median latencies of ``f`` and ``g``, measured alternately so load affects both alike."""
    import jax
    jax.block_until_ready(f())
    jax.block_until_ready(g())
    tf, tg = [], []
    for _ in range(n):
        for fn, out in ((f, tf), (g, tg)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
    return float(np.median(tf)), float(np.median(tg))


def _models(depth: int, d_model: int):
    import cnn
    import mlp
    return [(f"decoder d{depth}x{d_model}", decoder(depth, d_model), "i32", (8,)),
            ("cnn", cnn.cnn(), "f32", (16, 16, 1)), ("mlp", mlp.mlp(), "f32", (64,))]


def _input(kind: str, batch: int, shape: tuple):
    rng = np.random.default_rng(0)
    if kind == "i32":
        return rng.integers(0, 64, (batch, *shape)).astype(np.int32)
    return rng.standard_normal((batch, *shape)).astype(np.float32)


def _ort(model_proto):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions alternate
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_latencies(sessions: dict, x, n: int = 200) -> dict:
    """Median onnxruntime latency per session, measured round-robin so load hits all alike."""
    times = {k: [] for k in sessions}
    for sess in sessions.values():
        sess.run(None, {sess.get_inputs()[0].name: x})
    for _ in range(n):
        for k, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: x}
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _jax2onnx(model, kind: str, shape: tuple, batch: int):
    import logging
    logging.getLogger("jax2onnx").setLevel(logging.CRITICAL)  # it logs its optional plugins
    try:
        import jax
        from jax2onnx import to_onnx
    except ImportError:
        return None
    try:
        return to_onnx(model, [jax.ShapeDtypeStruct((batch, *shape), np.dtype(
            "int32" if kind == "i32" else "float32"))])
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"    jax2onnx failed: {type(e).__name__}: {str(e)[:120]}")
        return None


def compare_models(depth: int, d_model: int) -> None:
    import jax
    from flax import nnx

    import nnxc.backends.onnx.fused  # noqa: F401 - until export.py imports it
    from nnxc.backends.onnx import export_onnx
    print("\nONNX nodes and onnxruntime latency (ms, median), XLA latency (ms, median)")
    for label, model, kind, shape in _models(depth, d_model):
        spec = f"{kind}[B,{','.join(map(str, shape))}]"
        g = nnxc.trace(model, spec)
        variants = {"nnxc none": export_onnx(nnxc.optimize(g, "none")),
                    "nnxc inference": export_onnx(nnxc.optimize(g, "inference"))}
        print(f"  {label}")
        for batch in (1, 8):
            x = _input(kind, batch, shape)
            row = dict(variants)
            j2o = _jax2onnx(model, kind, shape, batch)
            if j2o is not None:
                row["jax2onnx"] = j2o
            lat = _ort_latencies({k: _ort(p) for k, p in row.items()}, x)
            print(f"    batch {batch}: " + " | ".join(
                f"{k}: {len(p.graph.node)} nodes {lat[k] * 1e3:.3f}" for k, p in row.items()))
        graphdef, state = nnx.split(model)
        ref = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
        exe = nnxc.compile(nnxc.optimize(g, "inference"))
        for batch in (1, 8):
            x = _input(kind, batch, shape)
            t_ref, t_opt = _ab(lambda: ref(state, x), lambda: exe(x))
            print(f"    XLA batch {batch}: jax.jit {t_ref * 1e3:.3f}, nnxc inference {t_opt * 1e3:.3f} "
                  f"({t_opt / t_ref:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
