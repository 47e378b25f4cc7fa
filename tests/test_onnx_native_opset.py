"""The default opset is the newest at which every fused op runs on a native onnxruntime
kernel (onnxruntime expands ops it lacks a kernel for into their ONNX function bodies)."""
from __future__ import annotations

import os

import onnxruntime as ort

import nnxc
import zoo
from nnxc.backends.onnx.export import max_opset, resolve_opset
from nnxc.backends.onnx.native import default_opset, expanded_at


def test_default_opset_keeps_every_fused_op_native():
    v = default_opset()
    assert resolve_opset(None) == v <= max_opset()
    assert expanded_at(v) == []
    if v < max_opset():  # a newer opset was passed over because something would be expanded
        assert any(expanded_at(u) for u in range(v + 1, max_opset() + 1))
    assert resolve_opset(max_opset()) == max_opset()  # --opset is still honoured


def test_gpt_attention_stays_one_native_node_in_onnxruntime(tmp_path):
    g = nnxc.optimize(zoo.trace("gpt", zoo.make("gpt")), "inference")
    model = nnxc.export_onnx(g)
    ops = [n.op_type for n in model.graph.node]
    assert "Attention" in ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = os.path.join(tmp_path, "ran.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    import onnx
    ran = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ran.count("Attention") == ops.count("Attention")  # not expanded into its function


def test_default_opset_is_raised_for_ops_that_need_a_newer_one():
    """BitCast exists from opset 26: a graph using it exports there by default (and says why),
    while an explicit older opset still refuses it clearly."""
    import jax
    import numpy as np
    import pytest
    from jax import lax

    f = lambda v: lax.bitcast_convert_type(v, jax.numpy.int32)  # noqa: E731
    g = nnxc.trace(f, "f32[3]")
    model = nnxc.export_onnx(g)
    props = {p.key: p.value for p in model.metadata_props}
    assert model.opset_import[0].version >= 26 and "raised to" in props["nnxc.opset_choice"]
    x = np.array([1.0, -2.5, np.inf], np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"v": x})[0]
    np.testing.assert_array_equal(got, np.asarray(jax.jit(f)(x)))
    with pytest.raises(nnxc.UnsupportedOpError, match="needs opset >= 26"):
        nnxc.export_onnx(g, opset=24)
    plain = nnxc.export_onnx(nnxc.trace(lambda v: v * 2, "f32[3]"))
    assert plain.opset_import[0].version == default_opset()
