"""Regenerate the golden artifacts in tests/golden_artifacts/ (review the diff before committing).

Each golden is ``NAME.nnxc`` plus its inputs and expected results as ``.npy`` (never pickle):
``NAME.in.<input>.npy``, ``NAME.out.<output>.npy`` and ``NAME.state.<path>.npy`` (the
variables the call updates; key-typed ones as ``jax.random.key_data``). tests/test_artifacts.py
loads every golden with the current nnxc, runs it and compares. A golden is written once
per artifact format version and kept: old files must keep loading after format changes.

    .venv/bin/python tools/make_golden_artifact.py [--out tests/golden_artifacts]
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from flax import nnx

import nnxc
from nnxc.runtime.artifact_format import FORMAT_VERSION


class Tiny(nnx.Module):
    """Linear -> BatchNorm (train mode) -> Dropout (an RNG key in the state) -> two outputs."""

    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        y = self.drop(self.bn(self.lin(x)))
        return y, {"mean": y.mean(axis=0)}


def write(out_dir: str) -> list[str]:
    name = f"tiny_v{FORMAT_VERSION}"
    graph = nnxc.trace(Tiny(nnx.Rngs(0)), "f32[B,3]")
    art = nnxc.save(graph, os.path.join(out_dir, f"{name}.nnxc"), platforms=("cpu", "cuda", "tpu"))
    loaded = nnxc.load(os.path.join(out_dir, f"{name}.nnxc"))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    outs, state = loaded.apply(loaded.state, x)
    want, _ = nnxc.compile(graph).apply(loaded.state, x)  # the goldens must be right today
    for a, b in zip(jax.tree_util.tree_leaves(outs), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    files = {f"{name}.in.x.npy": x}
    for spec, y in zip(art["outputs"], jax.tree_util.tree_leaves(outs)):
        files[f"{name}.out.{spec['name']}.npy"] = np.asarray(y)
    for path in art["returned_state"]:
        v = state[path]
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            v = jax.random.key_data(v)
        files[f"{name}.state.{path}.npy"] = np.asarray(v)
    for fname, a in files.items():
        np.save(os.path.join(out_dir, fname), a, allow_pickle=False)
    return [f"{name}.nnxc", *files]


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(here, "..", "tests", "golden_artifacts"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for f in write(args.out):
        print(os.path.join(args.out, f))


if __name__ == "__main__":
    main()
