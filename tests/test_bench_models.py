"""The models of ``tools/bench_onnx.py --speed`` (``tools/bench_models.py``): each, at test
size, traces with nnxc, exports with ``-O inference``, and runs in onnxruntime within 1e-4
of the model's own ``jax.jit``; the full-size models have the architecture the benchmark
names (checked abstractly, without building their weights)."""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
import onnxruntime as ort
import pytest
from flax import nnx

import nnxc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_models as bm  # noqa: E402


def jitted(model):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: np.asarray(f(state, x))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "resnet" else n
                                  for n in bm.TINY])
def test_tiny_model_onnx_matches_jit(name):
    spec = bm.TINY[name]
    model = spec.factory()
    graph = nnxc.optimize(nnxc.trace(model, spec.spec()), "inference")
    proto = nnxc.export_onnx(graph)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref_fn = jitted(model)
    for batch in (1, 3):
        x = spec.input(batch, seed=batch)
        ref = ref_fn(x)
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_tiny_models_are_deterministic():
    spec = bm.TINY["llama"]
    a, b = spec.factory(), spec.factory()
    x = spec.input(2)
    np.testing.assert_array_equal(jitted(a)(x), jitted(b)(x))


def params(model) -> dict:
    return {".".join(map(str, path)): v.shape
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_full_size_architectures():
    resnet = nnx.eval_shape(lambda: bm.MODELS["resnet18"].factory())
    shapes = params(resnet)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 11_689_512  # ResNet-18's count
    assert shapes["stem.kernel"] == (7, 7, 3, 64) and shapes["fc.kernel"] == (512, 1000)
    assert len(resnet.blocks) == 8
    llama = params(nnx.eval_shape(lambda: bm.MODELS["llama"].factory()))
    assert llama["layers.0.attn.q.kernel"] == (256, 256)
    assert llama["layers.0.attn.k.kernel"] == (256, 64)  # 2 KV heads of 32 for 8 query heads
    assert llama["layers.0.mlp.gate.kernel"] == (256, 768)
    assert sum(k.endswith("attn.q.kernel") for k in llama) == 4
    vit = params(nnx.eval_shape(lambda: bm.MODELS["vit"].factory()))
    assert vit["patch.kernel"] == (4, 4, 3, 192) and vit["pos"] == (1, 65, 192)
    for name, depth in (("gpt4", 4), ("gpt8", 8)):
        gpt = params(nnx.eval_shape(lambda n=name: bm.MODELS[n].factory()))
        assert gpt["pos.embedding"] == (128, 256)
        assert sum(k.endswith("attn.query.kernel") for k in gpt) == depth
