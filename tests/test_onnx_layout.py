"""NHWC conv nets in ONNX without layout Transposes between their convolutions, and with
each per-channel bias inside its Conv (nnxc/backends/onnx/layout.py, the max pooling rule).

Each net is traced with a symbolic batch, exported, run in onnxruntime at two batch sizes
and compared with jax.jit of the model: within 1e-5 relative to the output's scale (XLA
and onnxruntime sum convolutions in different orders). The Transpose count asserted is the
least the net needs: one for the NHWC input image; one more when the features are
flattened in H, W, C order (a Reshape that mixes the permuted axes), averaged (a sum in
another layout would add in another order) or returned as an NHWC tensor.

The last tests build small ONNX graphs by hand and check each rule of the pass, and where
it must not fire, against onnxruntime on the graph as it was.
"""
from __future__ import annotations

import collections
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from flax import nnx
from onnx import TensorProto, helper

import nnxc
import zoo
from nnxc.backends.onnx.layout import EXACT_ELEMENTWISE, KERNEL_ELEMENTWISE, optimize_layout
from nnxc.runtime.onnx_io import onnx_session
from test_onnx_models import assert_close

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_models as bm  # noqa: E402


def ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def check_numbers(model, fn, spec_shape, batches=(1, 3), seed=0):
    """onnxruntime on ``model`` against ``jax.jit(fn)`` at each batch size."""
    session = onnx_session(model)
    name = model.graph.input[0].name
    for b in batches:
        x = np.random.default_rng([seed, b]).standard_normal((b, *spec_shape)).astype(np.float32)
        want = jax.tree_util.tree_leaves(jax.jit(fn)(x))
        got = session.run(None, {name: x})
        for g, w in zip(got, want):
            assert_close(g, w, f"batch {b}")


def producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def assert_biases_in_convs(model):
    """No Add or Sub of a constant per output channel right after a Conv; every Conv whose
    result only that Add read has the bias as its third input."""
    inits = {t.name for t in model.graph.initializer}
    made = producers(model)
    for n in model.graph.node:
        if n.op_type in ("Add", "Sub"):
            conv = made.get(n.input[0])
            assert not (conv is not None and conv.op_type == "Conv" and n.input[1] in inits), n.name


def transposes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Transpose"]


# -- nets ---------------------------------------------------------------------------------

def _export(m, spec, pipeline="inference"):
    g = nnxc.trace(m, spec)
    return nnxc.export_onnx(nnxc.optimize(g, pipeline) if pipeline else g)


def test_tiny_resnet_has_two_transposes_and_biases_in_its_convs():
    m = bm.resnet(stages=(1, 1, 1, 1), width=8, classes=10)
    bm.randomize_batch_stats(m, 1)
    model = _export(m, "f32[B,32,32,3]")
    c = ops(model)
    # the image in; back to NHWC for the mean over H and W (jnp.mean: ReduceSum, Div)
    ts = transposes(model)
    assert c["Transpose"] == 2 and ts[0].input[0] == "images"
    assert [n.op_type for n in model.graph.node if ts[1].output[0] in n.input] == ["ReduceSum"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 13 and sum(len(n.input) == 3 for n in convs) == 12  # + the NaN guard's
    assert_biases_in_convs(model)
    # Conv 12, Relu 9, residual Add 4, MaxPool 1, NaN guard 4 (AveragePool Tanh Conv Add),
    # mean 2, MatMul 1, Transpose 2: was 97 nodes, 38 Transposes, 17 Adds
    assert sum(c.values()) <= 35, c
    assert c["Add"] == 5 and "Pad" not in c and "Reshape" not in c and "Max" not in c
    assert "Where" not in c and "IsNaN" not in c
    check_numbers(model, lambda x: m(x), (32, 32, 3))


def test_resnet_stays_in_onnxruntimes_blocked_layout_between_its_convs(tmp_path):
    """onnxruntime runs conv nets in a blocked channel layout (NCHWc) where the ops allow:
    the max pool's NaN guard (AveragePool, Tanh, a Conv of zeros, Add) has that form too,
    so the only layout change left is the one back to NCHW for the final mean, and
    onnxruntime fuses every residual Add and Relu into a Conv."""
    import onnxruntime as ort
    m = bm.resnet(stages=(1, 1), width=16, classes=10)
    bm.randomize_batch_stats(m, 1)
    model = _export(m, "f32[B,32,32,3]")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    done = onnx.load(str(tmp_path / "opt.onnx"))
    kinds = collections.Counter((n.domain, n.op_type) for n in done.graph.node)
    if not any(d == "com.microsoft.nchwc" for d, _ in kinds):
        pytest.skip("onnxruntime uses no blocked layout on this CPU")
    reorders = sum(k for (d, op), k in kinds.items() if op.startswith("Reorder"))
    assert reorders == 1, kinds
    assert ("", "Add") not in kinds and ("", "Relu") not in kinds, kinds
    check_numbers(model, lambda x: m(x), (32, 32, 3))


class Block(nnx.Module):
    """ResNet's basic block: BatchNorm folded by -O inference, a residual Add; it returns
    NHWC, so the graph output keeps a Transpose."""

    def __init__(self, rngs):
        self.c1 = nnx.Conv(4, 4, (3, 3), use_bias=False, rngs=rngs)
        self.b1 = nnx.BatchNorm(4, rngs=rngs)
        self.c2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.b2 = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.b1(self.c1(x)))
        return nnx.relu(self.b2(self.c2(y)) + x)


@pytest.mark.parametrize("pipeline", ["inference", None])
def test_residual_block_returning_nhwc_keeps_one_transpose_in_and_one_out(pipeline):
    m = Block(nnx.Rngs(0))
    bm.randomize_batch_stats(m, 2)
    m.eval()
    model = _export(m, "f32[B,8,8,4]", pipeline)
    ts = transposes(model)
    assert len(ts) == 2, ops(model)
    out = model.graph.output[0]
    assert producers(model)[out.name] is ts[-1]  # NHWC at the boundary, as traced
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["B", 8, 8, 4]
    if pipeline:
        assert_biases_in_convs(model)
        assert ops(model)["Add"] == 1  # the residual; both BatchNorms are in the Convs
    check_numbers(model, lambda x: m(x), (8, 8, 4))


@pytest.mark.parametrize("name", ["cnn", "linen_cnn"])
@pytest.mark.parametrize("pipeline", ["inference", None])
def test_zoo_cnns_keep_a_transpose_only_before_the_flatten(name, pipeline):
    """Conv -> BatchNorm -> relu -> max_pool, Conv -> relu -> avg_pool, flatten, Linear:
    the flatten orders features H, W, C, so the Transpose back to NHWC stays there."""
    model_obj = zoo.make(name)
    g = zoo.trace(name, model_obj)
    model = nnxc.export_onnx(nnxc.optimize(g, pipeline) if pipeline else g)
    ts = transposes(model)
    made = producers(model)
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape" and made.get(n.input[0]) in ts)
    assert made[reshape.input[0]].attribute[0].ints == [0, 2, 3, 1]
    # the image, the flatten; without -O the count_include_pad=False divisor (a constant
    # computed by Expand) is transposed once more
    assert len(ts) == (2 if pipeline or name == "linen_cnn" else 3), ops(model)
    if pipeline:
        assert sum(ops(model).values()) <= 18, ops(model)
        assert_biases_in_convs(model)
    for b in (1, 3):
        (x,) = zoo.example_inputs(name, b)
        want, _ = zoo.reference(name, model_obj, x)
        assert_close(onnx_session(model).run(None, {model.graph.input[0].name: x})[0], want, f"batch {b}")


class PoolNet(nnx.Module):
    def __init__(self, padding, rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(6, 6, (1, 1), rngs=rngs)
        self.padding = padding

    def __call__(self, x):
        y = nnx.max_pool(nnx.relu(self.conv(x)), (3, 3), strides=(2, 2), padding=self.padding)
        return jnp.mean(self.conv2(y), axis=(1, 2))


@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (1, 1)), "VALID"])
def test_max_pool_with_padding_pads_by_itself_in_nchw(padding):
    m = PoolNet(padding, nnx.Rngs(0))
    model = _export(m, "f32[B,9,9,3]", None)
    c = ops(model)
    biases = {n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3}
    assert c["Transpose"] == 2 and "Pad" not in c, c  # in, and before the mean
    assert all(n.output[0] in biases for n in model.graph.node if n.op_type == "Reshape")
    # the pool's input is a relu's (never -inf): only NaNs are put back, by adding a Conv
    # of zeros (0, or NaN) of the tanh of the windows' averages (finite, or NaN)
    assert c["MaxPool"] == 1 and c["AveragePool"] == 1 and c["Tanh"] == 1, c
    assert "IsInf" not in c and "Where" not in c, c
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert producers(model)[pool.input[0]].op_type == "Relu"
    assert_biases_in_convs(model)
    check_numbers(model, lambda x: m(x), (9, 9, 3))


def test_max_pool_keeps_nan_and_minus_inf_like_xla():
    def relu_pool(x):
        return nnx.max_pool(jnp.maximum(x, 0.0), (3, 3), strides=(2, 2), padding="SAME")

    def pool(x):
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")

    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    x[1, :3, :3, 1] = -np.inf
    x[1, 5, 5, 2] = np.inf
    for fn, guard in ((relu_pool, {"AveragePool", "Tanh"}), (pool, {"IsNaN", "IsInf"})):
        model = nnxc.export_onnx(nnxc.trace(fn, "f32[B,8,8,4]"))
        assert guard <= set(ops(model)) and ops(model)["Transpose"] == 2  # NHWC in and out
        got = onnx_session(model).run(None, {model.graph.input[0].name: x})[0]
        np.testing.assert_array_equal(got, np.asarray(jax.jit(fn)(x)))


def _max_pool_propagating_nan(x, window, strides, padding):
    """NHWC max pooling in numpy, a NaN anywhere in a window making it NaN (JAX's ``max``;
    XLA:CPU's reduce_window drops some NaNs by their position, openxla/xla#21461)."""
    pads = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
    oh = (xp.shape[1] - window[0]) // strides[0] + 1
    ow = (xp.shape[2] - window[1]) // strides[1] + 1
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), x.dtype)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * strides[0]:i * strides[0] + window[0], j * strides[1]:j * strides[1] + window[1]]
            out[:, i, j] = np.max(win, axis=(1, 2))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_max_pool_after_relu_keeps_every_nan_and_inf(seed):
    """NaN and +inf at every window position, alone and together, in windows that overlap
    (3x3, stride 2) and windows that do not (2x2, stride 2): a NaN anywhere in a window makes
    it NaN, +inf without a NaN makes it +inf; the pool runs in onnxruntime's blocked layout
    after a Conv (16 channels)."""
    class Net(nnx.Module):
        def __init__(self, window, rngs):
            self.conv = nnx.Conv(16, 16, (1, 1), feature_group_count=16, rngs=rngs)
            self.window = window

        def pre(self, x):
            return nnx.relu(self.conv(x))

        def __call__(self, x):
            return nnx.max_pool(self.pre(x), self.window, strides=(2, 2), padding="SAME")

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 12, 12, 16)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.03] = np.inf
    for window in ((3, 3), (2, 2)):
        m = Net(window, nnx.Rngs(seed))
        m.conv.kernel[...] = jnp.abs(m.conv.kernel[...])  # +inf stays +inf through the conv
        model = nnxc.export_onnx(nnxc.trace(m, "f32[B,12,12,16]"))
        got = onnx_session(model).run(None, {model.graph.input[0].name: x})[0]
        want = _max_pool_propagating_nan(np.asarray(jax.jit(lambda a: m.pre(a))(x)), window, (2, 2), "SAME")
        assert np.isnan(want).sum() > 20 and np.isposinf(want).sum() > 20
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        finite = np.isfinite(want)
        assert_close(np.where(finite, got, 0), np.where(finite, want, 0), str(window))


class FlattenNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 4, 5, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.conv(x))
        return self.head(y.reshape(y.shape[0], -1))


def test_flatten_into_linear_keeps_the_transpose_the_reshape_needs():
    m = FlattenNet(nnx.Rngs(0))
    model = _export(m, "f32[B,8,8,2]", None)
    ts = transposes(model)
    assert len(ts) == 2
    made = producers(model)
    (reshape,) = [n for n in model.graph.node
                  if n.op_type == "Reshape" and made.get(n.input[0]) is ts[1]]
    assert made[ts[1].input[0]].op_type == "Relu"  # bias and relu ran in NCHW, after the Conv
    assert_biases_in_convs(model)
    check_numbers(model, lambda x: m(x), (8, 8, 2))


def test_value_names_say_how_to_read_each_permuted_value():
    """``export_onnx(value_names=...)`` (per-module checks) gives the same model; a value the
    layout pass left permuted has a ``Permuted`` name: the model holds its source, and
    Transpose(source, perm) is the value, as JAX computes it."""
    from nnxc.backends.onnx.layout import Permuted
    from nnxc.runtime.permodule import xla_values
    m = bm.resnet(stages=(1,), width=4, classes=3)
    g = nnxc.optimize(nnxc.trace(m, "f32[B,16,16,3]"), "inference")
    names: dict = {}
    model = nnxc.export_onnx(g, value_names=names)
    assert model.SerializeToString() == nnxc.export_onnx(g).SerializeToString()
    produced = {o for n in model.graph.node for o in n.output}
    permuted = {v: n for v, n in names.items() if isinstance(n, Permuted)}
    assert len(permuted) >= 5 and all(n.source in produced for n in permuted.values())
    values = [v for node in g.nodes for v in node.outputs]
    missing = [v for v in values if names[v] not in produced and v not in permuted
               and v not in g.outputs and v.producer.op != "conv_general_dilated"]
    assert not missing  # (a Conv's own sum is gone: the bias is added inside the Conv)
    wanted = [v for v in values if v in permuted]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(permuted[v].source, TensorProto.FLOAT, None)
                             for v in wanted)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    got = onnx_session(copy).run([permuted[v].source for v in wanted], {"images": x})
    _, want = xla_values(g, wanted, [x])
    for v, a, w in zip(wanted, got, want):
        assert_close(a.transpose(permuted[v].perm), np.asarray(w), str(v))


# -- the pass on hand-built graphs ----------------------------------------------------------

def _model(nodes, inputs, outputs, inits=()):
    """A model; outputs given without a shape get the one shape inference finds."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _layout(model):
    """``optimize_layout`` on a model with its initializers; a new, checked model."""
    from onnx import numpy_helper
    consts = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer]
    nodes, weights, consts = optimize_layout(list(model.graph.node), [], consts, list(model.graph.input),
                                             [o.name for o in model.graph.output])
    out = _model(nodes, list(model.graph.input), list(model.graph.output),
                 [numpy_helper.from_array(np.asarray(a), n) for n, a in weights + consts])
    onnx.checker.check_model(out, full_check=True)
    return out


def _same_results(before, after, feeds):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda m: ort.InferenceSession(m.SerializeToString(), options).run(None, feeds)  # noqa: E731
    for a, b in zip(run(before), run(after)):
        np.testing.assert_array_equal(a, b)


X = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _t(x, y, perm, name=None):
    return helper.make_node("Transpose", [x], [y], perm=perm, name=name or f"T_{y}")


@pytest.mark.parametrize("op, attrs, extra", [
    ("Softmax", {"axis": -1}, []),
    ("ArgMax", {"axis": 1, "keepdims": 1}, []),
    ("ReduceMin", {"keepdims": 1}, ["axes"]),
    ("Pad", {}, ["pads", "zero"]),
    ("Relu", {}, []),
    ("Clip", {}, ["zero", "six"]),
    ("CumSum", {}, ["three"]),
    ("LogSoftmax", {"axis": 2}, []),
])
def test_one_input_rules_move_the_permutation_through(op, attrs, extra):
    from onnx import numpy_helper
    inits = [numpy_helper.from_array(np.asarray([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.asarray([0, 1, 0, 2, 0, 0, 1, 0], np.int64), "pads"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.asarray(0.5, np.float32), "six"),
             numpy_helper.from_array(np.asarray(3, np.int64), "three")]
    out_t = TensorProto.INT64 if op == "ArgMax" else TensorProto.FLOAT
    nodes = [_t("x", "a", NHWC), helper.make_node(op, ["a", *extra], ["b"], name="op", **attrs),
             _t("b", "y", NCHW)]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("y", None, out_t)],
                    [i for i in inits if i.name in extra])
    after = _layout(before)
    assert "Transpose" not in ops(after), ops(after)
    _same_results(before, after, {"x": X})


@pytest.mark.parametrize("op, moves", [("ReduceMax", True), ("ReduceSum", False), ("ReduceMean", False)])
def test_only_reductions_that_round_alike_in_any_layout_take_the_permutation(op, moves):
    """ReduceMax over H, W of T(x) is ReduceMax over x's own axes, bit for bit; a sum over
    NCHW's contiguous H, W adds in another order than over NHWC's strided ones."""
    nodes = [_t("x", "a", NHWC), helper.make_node(op, ["a", "axes"], ["y"], keepdims=0)]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("y", None)], inits)
    after = _layout(before)
    assert ops(after) == ({op: 1} if moves else ops(before))
    _same_results(before, after, {"x": X})


def test_binary_ops_take_constants_broadcast_values_and_equally_permuted_inputs():
    """Add(T(x), T(z)): both permuted alike; Mul by a [5] constant (permuted as an
    initializer); Sub of a computed [1, 1, 1, 5] value (reshaped, no data moves); Concat."""
    nodes = [_t("x", "a", NHWC), _t("z", "c", NHWC),
             helper.make_node("Add", ["a", "c"], ["s"]),
             helper.make_node("Mul", ["s", "k"], ["m"]),
             helper.make_node("Exp", ["k4"], ["e"]),
             helper.make_node("Sub", ["m", "e"], ["d"]),
             helper.make_node("Concat", ["d", "c"], ["cat"], axis=3),
             _t("cat", "y", NCHW)]
    k = np.linspace(-1, 1, 3).astype(np.float32)
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [3], k),
             helper.make_tensor("k4", TensorProto.FLOAT, [1, 1, 1, 3], k * 2)]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5]), _vi("z", [2, 3, 4, 5])], [_vi("y", None)], inits)
    after = _layout(before)
    assert "Transpose" not in ops(after), ops(after)
    _same_results(before, after, {"x": X, "z": X[::-1].copy()})


def test_transposes_that_must_stay_are_kept():
    """A Reshape that mixes the permuted axes, an output in the permuted layout, an Add of
    inputs permuted two different ways: each needs T(x) as it is, so it stays (once), and
    the results are the same."""
    nodes = [_t("x", "a", NHWC), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             _t("w", "b", [0, 3, 2, 1]), helper.make_node("Add", ["a", "b"], ["mixed"]),
             helper.make_node("Sigmoid", ["a"], ["nhwc"])]
    inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 60])]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5]), _vi("w", [2, 3, 5, 4])],
                    [_vi("flat", None), _vi("mixed", None), _vi("nhwc", None)], inits)
    after = _layout(before)
    assert ops(after)["Transpose"] == 2
    made = producers(after)
    assert made[made[made["flat"].input[0]].input[0]].op_type == "Transpose"
    assert made[made["nhwc"].input[0]].op_type == "Transpose"
    _same_results(before, after, {"x": X, "w": X.transpose(0, 1, 3, 2).copy()})


def test_a_permuted_value_needed_as_it_is_does_not_grow_a_second_transpose():
    """T(x) is a graph output and also goes through Relu to another output: moving the
    permutation through Relu would need a second Transpose, so it stays where it is."""
    nodes = [_t("x", "a", NHWC), helper.make_node("Relu", ["a"], ["r"])]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("a", None), _vi("r", None)])
    after = _layout(before)
    assert ops(after)["Transpose"] == 1
    _same_results(before, after, {"x": X})


def test_transposed_weights_are_folded_and_named_after_the_weight():
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 6)).astype(np.float32)  # HWIO
    nodes = [_t("x", "a", NCHW), _t("k.folded", "w", [3, 2, 0, 1]),
             helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1]),
             _t("c", "y", NHWC)]
    before = _model(nodes, [_vi("x", [2, 4, 5, 3])], [_vi("y", None)],
                    [helper.make_tensor("k.folded", TensorProto.FLOAT, w.shape, w.reshape(-1))])
    after = _layout(before)
    assert [t.name for t in after.graph.initializer] == ["k.folded"]
    assert list(after.graph.initializer[0].dims) == [6, 3, 3, 3]
    assert ops(after)["Transpose"] == 2
    _same_results(before, after, {"x": X.transpose(0, 2, 3, 1).copy()})


@pytest.mark.parametrize("op, bias_shape, folds", [
    ("Add", [1, 6, 1, 1], True), ("Sub", [6, 1, 1], True), ("Add", [1], True),
    ("Add", [1, 6, 4, 5], False), ("Add", [5], False),
])
def test_conv_bias_folds_only_a_constant_per_output_channel(op, bias_shape, folds):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c", "b"], ["y"]), helper.make_node("Relu", ["y"], ["r"])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.reshape(-1)),
             helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias.reshape(-1))]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("r", None)], inits)
    after = _layout(before)
    assert (op not in ops(after)) == folds
    if folds:
        (conv,) = [n for n in after.graph.node if n.op_type == "Conv"]
        assert len(conv.input) == 3 and conv.output[0] == "y"
        from onnx import numpy_helper
        b = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}[conv.input[2]]
        assert b.shape == (6,)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got, want = (ort.InferenceSession(m.SerializeToString(), options).run(None, {"x": X})[0]
                 for m in (after, before))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_conv_result_read_twice_keeps_its_add():
    w = np.ones((2, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"]),
             helper.make_node("Mul", ["c", "y"], ["z"])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.reshape(-1)),
             helper.make_tensor("b", TensorProto.FLOAT, [1, 2, 1, 1], [1.0, 2.0])]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("z", None)], inits)
    after = _layout(before)
    assert ops(after) == ops(before)
    _same_results(before, after, {"x": X})


_UNARY_FLOAT = sorted(KERNEL_ELEMENTWISE | {"Abs", "Neg", "Relu", "LeakyRelu", "Sign", "Floor", "Ceil",
                                           "Round", "Sqrt", "Reciprocal", "Softsign"})
_BINARY_FLOAT = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "PRelu"]


def test_elementwise_ops_the_pass_moves_compute_each_element_alike_anywhere():
    """The premise of moving Transposes past them: onnxruntime gives every element the
    same bits in NCHW and in NHWC order (odd sizes, so some sit in a vector kernel's tail)."""
    import onnxruntime as ort
    assert set(_UNARY_FLOAT) | set(_BINARY_FLOAT) <= EXACT_ELEMENTWISE | KERNEL_ELEMENTWISE
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rng = np.random.default_rng(0)
    for shape in [(3, 7, 5, 11), (2, 5, 3, 1), (1, 33, 2, 5)]:
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        z = (rng.standard_normal(shape) * 2).astype(np.float32)
        for op in _UNARY_FLOAT + _BINARY_FLOAT:
            n_in = 2 if op in _BINARY_FLOAT else 1
            attrs = {"fmod": 1} if op == "Mod" else {}
            node = helper.make_node(op, ["x", "z"][:n_in], ["y"], **attrs)
            model = helper.make_model(helper.make_graph(
                [node], "g", [_vi(n, None) for n in ["x", "z"][:n_in]], [_vi("y", None)]),
                opset_imports=[helper.make_opsetid("", 20)])
            session = ort.InferenceSession(model.SerializeToString(), options)
            feeds = {"x": np.abs(x) if op in ("Sqrt", "Pow") else x, "z": z}
            nchw = session.run(None, {k: feeds[k] for k in ["x", "z"][:n_in]})[0]
            nhwc = session.run(None, {k: np.ascontiguousarray(feeds[k].transpose(NHWC))
                                      for k in ["x", "z"][:n_in]})[0]
            np.testing.assert_array_equal(nchw.transpose(NHWC), nhwc, err_msg=f"{op} {shape}")


def test_a_permuted_value_a_subgraph_reads_by_name_is_there_before_it():
    """An If branch reads T(x) by its name: the Transpose is materialized under that name
    before the If, though Relu after it takes the permutation on."""
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [_vi("t", None)])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [_vi("e", None)])
    nodes = [_t("x", "a", NHWC), helper.make_node("Relu", ["a"], ["r"]), _t("r", "rb", NCHW),
             helper.make_node("If", ["c"], ["branch"], then_branch=then, else_branch=other)]
    before = _model(nodes, [_vi("x", [2, 3, 4, 5]), _vi("c", [], TensorProto.BOOL)],
                    [_vi("rb", None), _vi("branch", None)])
    after = _layout(before)
    made = producers(after)
    assert made["a"].op_type == "Transpose" and made["rb"].op_type == "Relu"
    for c in (True, False):
        _same_results(before, after, {"x": X, "c": np.asarray(c)})
