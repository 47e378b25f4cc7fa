"""Every zoo model exports to one ONNX file with a symbolic batch dim, passes the full ONNX
checker, and matches the model's own JAX output in onnxruntime at two batch sizes.

Tolerance: f32 within 1e-5 relative to the output's scale (|onnx - jax| <= 1e-5 * max|jax|,
elementwise plus 1e-5 relative): XLA and onnxruntime sum matmuls in different orders and
approximate exp/tanh/erf differently, which moves a few ulps through each layer. Where the
model itself is ill-conditioned (train-mode BatchNorm over a batch of 2 normalizes by
nearly-zero variances), the bound is twice the change of JAX's own output when the inputs
move by one ulp, if that is larger. Dropout masks, RNG counters and integer outputs match
exactly.
"""
from __future__ import annotations

import collections

import jax
import numpy as np
import onnx
import pytest

import nnxc
import zoo
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session

BATCHES = (2, 3)


def assert_close(got, want, what: str, noise: float = 0.0):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    atol = max(1e-5 * scale, 2 * noise)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=what)


def nudge(inputs):
    """The inputs with every float moved up by one ulp."""
    return [np.nextafter(x, np.inf).astype(x.dtype) if x.dtype.kind == "f" else x for x in inputs]


def spread(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f":
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))


@pytest.fixture(scope="module", params=zoo.CASES, ids=lambda c: "-".join(c))
def exported(request, tmp_path_factory):
    name, mode = request.param
    train = mode == "train"
    graph = zoo.trace(name, zoo.make(name, train), train)
    path = tmp_path_factory.mktemp("onnx") / f"{name}-{mode}.onnx"
    export_onnx(graph, path)  # runs onnx.checker.check_model(full_check=True)
    return name, graph, path


def test_zoo_model_matches_jax_at_two_batch_sizes(exported):
    name, graph, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "B"
    session = onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    n_out = len(graph.outputs)
    state = [v.data for v in graph.variables if not v.meta.get("new")]
    reference = graph.meta["reference"]
    exe = nnxc.compile(graph) if graph.updates else None
    for b in BATCHES:
        inputs = zoo.example_inputs(name, b)
        got = session.run(None, dict(zip(names, inputs)))
        want = jax.tree_util.tree_leaves(reference.apply(state, *inputs)[0])
        moved = jax.tree_util.tree_leaves(reference.apply(state, *nudge(inputs))[0])
        assert len(want) == n_out
        for i, (g, w, m) in enumerate(zip(got, want, moved)):
            assert_close(g, zoo.as_numpy(w), f"{name} output {i} at batch {b}", spread(w, m))
        if not graph.updates:
            continue
        _, new_state = exe.apply(graph.state(), *inputs)
        _, moved_state = exe.apply(graph.state(), *nudge(inputs))
        for (p, _), g in zip(graph.updates, got[n_out:]):  # BatchNorm statistics, RNG counts
            w = zoo.as_numpy(new_state[p])
            assert_close(g, w, f"{name} update {p} at batch {b}", spread(w, zoo.as_numpy(moved_state[p])))


def test_scanned_stack_is_one_loop():
    graph = zoo.trace("scan_gpt", zoo.make("scan_gpt"), False)
    model = export_onnx(graph)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Loop"] == 1
    names = {t.name for t in model.graph.initializer}
    assert "blocks.attn.query.kernel" in names  # the stacked weights, sliced inside the Loop
