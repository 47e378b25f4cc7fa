"""Trace time of the GPT-style decoder vs ``jax.make_jaxpr`` of the same model, by depth.

    .venv/bin/python tools/bench_trace.py [--depths 1,2,4,8,16,32] [--d-model 256] [--repeat 5]

Prints, per depth: IR nodes, median nnxc.trace time, median make_jaxpr time of the pure
function (nnx.merge + call), their ratio, and the cost per node. Target (issue 2): ratio
<= 2x, linear in depth, a 32-layer unrolled decoder under 3 s.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import nnxc  # noqa: E402
from nnxc.runtime.bench import median_time  # noqa: E402
from gpt import gpt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="1,2,4,8,16,32")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    spec = jax.ShapeDtypeStruct((8, 16), jax.numpy.int32)

    print(f"{'depth':>5} {'nodes':>7} {'nnxc.trace':>11} {'make_jaxpr':>11} {'ratio':>6} {'us/node':>8}")
    for depth in [int(d) for d in args.depths.split(",")]:
        model = gpt(depth=depth, d_model=args.d_model, num_heads=8)
        graphdef, state = nnx.split(model)

        def pure(s, x):
            return nnx.merge(graphdef, s)(x)

        structs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        graph = nnxc.trace(model, spec)  # warm caches of both paths
        jax.make_jaxpr(pure)(structs, spec)
        t_nnxc = median_time(lambda: nnxc.trace(model, spec), args.repeat)
        # a fresh function each time: make_jaxpr caches traces of the same function object
        t_jaxpr = median_time(lambda: jax.make_jaxpr(lambda s, x: pure(s, x))(structs, spec),
                              args.repeat)
        nodes = sum(1 for _ in graph.walk())
        print(f"{depth:>5} {nodes:>7} {t_nnxc:>10.3f}s {t_jaxpr:>10.3f}s {t_nnxc / t_jaxpr:>6.2f} "
              f"{1e6 * t_nnxc / nodes:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
