"""Every zoo model through every pipeline: results kept on XLA and onnxruntime, pipelines
idempotent and deterministic.

The reference is the model's own jax.jit / nnx.jit (zoo.reference), called as users call
it. "none" and "default" must reproduce it bit for bit, outputs and state updates. "fast"
adds fusions and folds float math: rtol 1e-5. "inference" also freezes (XLA then folds
constants itself) and folds BatchNorm into weights: rtol 1e-5, atol 1e-5. onnxruntime:
rtol 1e-4, atol 1e-5 (native LayerNormalization, Attention, Gelu compute in their own order).
"""
from __future__ import annotations

import jax
import numpy as np
import onnxruntime as ort
import pytest

import nnxc
import nnxc.backends.onnx.fused  # noqa: F401 - the ONNX rules of the nnxc.* ops
import zoo
from nnxc.backends.onnx import export_onnx
from nnxc.ir import parse, verify
from nnxc.passes import PRESETS

CLEANUP = ["simplify", "fold-constants", "cse", "dce"]
TOL = {"none": (0, 0), "cleanup": (0, 0), "default": (0, 0), "fast": (1e-5, 1e-5),
       "inference": (1e-5, 1e-5)}


@pytest.fixture(scope="module", params=zoo.CASES, ids="-".join)
def case(request):
    name, mode = request.param
    train = mode == "train"
    graph = zoo.trace(name, zoo.make(name, train), train)
    xs = zoo.example_inputs(name, 3)
    out, state = zoo.reference(name, zoo.make(name, train), *xs, train=train)
    return name, graph, xs, jax.tree_util.tree_leaves(out), state


def _pipeline(which):
    return CLEANUP if which == "cleanup" else which


def _equal(got, want, rtol, atol, what):
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        g, w = zoo.as_numpy(g), zoo.as_numpy(w)
        if rtol == atol == 0 or w.dtype.kind not in "fc":
            np.testing.assert_array_equal(g, w, err_msg=what)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("which", [pytest.param("cleanup", marks=pytest.mark.slow), "none",
                                   "default", "fast", "inference"])
def test_pipeline_keeps_results_on_xla(case, which):
    name, graph, xs, want, want_state = case
    opt = nnxc.optimize(graph, _pipeline(which))
    verify(opt)
    assert str(parse(str(opt))) == str(opt)
    out, state = nnxc.compile(opt).apply(opt.state(), *xs)
    rtol, atol = TOL[which]
    _equal(jax.tree_util.tree_leaves(out), want, rtol, atol, f"{name} {which} outputs")
    if which != "inference":  # inference prunes every update
        updated = {p for p, _ in graph.updates if p in want_state}
        _equal([state[p] for p in sorted(updated)], [want_state[p] for p in sorted(updated)],
               rtol, atol, f"{name} {which} state")


@pytest.mark.parametrize("which", [pytest.param("default", marks=pytest.mark.slow), "inference"])
def test_pipeline_keeps_results_on_onnxruntime(case, which):
    name, graph, xs, want, _ = case
    opt = nnxc.optimize(graph, which)
    model = export_onnx(opt)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})[:len(want)]
    _equal(got, want, 1e-4, 1e-5, f"{name} {which} onnxruntime")


def test_pipelines_are_idempotent_and_deterministic(case):
    name, graph, *_ = case
    for which in ("default", "inference"):
        once = nnxc.optimize(graph, which)
        assert nnxc.optimize(graph, which).text() == once.text(), f"{name} {which} not deterministic"
        twice, stats = nnxc.optimize(once, PRESETS[which], stats=True)
        assert twice.text() == once.text(), f"{name} {which} changed on a second run"
        assert not any(s.changed for s in stats if s.name not in ("freeze", "prune")), stats


def test_inference_graphs_are_pure_functions(case):
    name, graph, *_ = case
    opt = nnxc.optimize(graph, "inference")
    assert opt.variables == [] and opt.updates == []
    assert not any(n.op in ("stop_gradient", "random_bits") for n in opt.walk()) or \
        any(n.op == "random_bits" for n in graph.walk())
