"""``select_and_scatter_add``, what ``jax.grad`` of max and min pooling binds: on XLA it binds
the primitive (bit-exact with jax.jit), on ONNX each window's gradient goes to the element
MaxPool's Indices picks (the first maximum in window order, padding first and lowest, as XLA
selects), added with ScatterElements. Inputs with ties and infinities; a CNN training step
with max pooling runs in onnxruntime like nnx.jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import nnxc
from nnxc.runtime.onnx_io import onnx_session


def _pool_grad(pool):
    return lambda x: jax.grad(lambda x: (pool(x) * jnp.arange(1.0, 1.0 + pool(x).shape[-1])).sum())(x)


CASES = {
    "max_valid": _pool_grad(lambda x: nnx.max_pool(x, (2, 2), (2, 2))),
    "max_same_3x3_stride2": _pool_grad(lambda x: nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")),
    "max_overlapping": _pool_grad(lambda x: nnx.max_pool(x, (3, 3), (1, 1))),
    "max_1d": _pool_grad(lambda x: nnx.max_pool(x.reshape(x.shape[0], 49, 3), (2,), (2,))),
    "max_padding_beyond_window": _pool_grad(lambda x: lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (3, 3), (2, 2), (0, 0)))),
    "min_same": _pool_grad(lambda x: lax.reduce_window(
        x, jnp.inf, lax.min, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")),
}


def _inputs():
    rng = np.random.default_rng(0)
    ties = rng.integers(-3, 3, (2, 7, 7, 3)).astype(np.float32)  # many equal maxima per window
    ties[0, 0, 0, 0] = -np.inf
    ties[1, :3, :3, :] = -np.inf  # a window of -inf that starts in the padding
    ties[0, 2:5, 2:5, 1] = np.inf
    return {"ties_and_inf": ties, "normal": rng.standard_normal((3, 7, 7, 3)).astype(np.float32)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pooling_gradients_match_jit_on_xla_and_onnx(name):
    f = CASES[name]
    g = nnxc.trace(f, "f32[B,7,7,3]")
    assert "select_and_scatter_add" in [n.op for n in g.nodes]
    exe = nnxc.compile(g)
    session = onnx_session(nnxc.export_onnx(g))
    for what, x in _inputs().items():
        want = np.asarray(jax.jit(f)(x))
        assert np.array_equal(np.asarray(exe(x)), want, equal_nan=True), (name, what)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        # the selected elements are the same; overlapping windows add their sources in
        # another order than XLA, so sums of several differ in rounding
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"{name} {what}")
        assert np.array_equal(got != 0, want != 0), (name, what)


def test_other_select_primitives_are_refused_clearly():
    from nnxc import _jax
    from nnxc.errors import UnsupportedOpError
    prim = _jax.primitive("select_and_scatter_add")  # JAX has no public wrapper for it

    def f(x):
        return prim.bind(jnp.ones((1, 2, 2, 1)), x, select_prim=_jax.primitive("gt"),
                         window_dimensions=(1, 2, 2, 1), window_strides=(1, 2, 2, 1),
                         padding=((0, 0),) * 4)

    g = nnxc.trace(f, "f32[1,4,4,1]")
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    assert np.array_equal(np.asarray(nnxc.compile(g)(x)), np.asarray(jax.jit(f)(x)))
    with pytest.raises(UnsupportedOpError, match="select_prim=gt"):
        nnxc.export_onnx(g)


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.head = nnx.Linear(8 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        h = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
        return self.head(h.reshape(h.shape[0], -1))


def test_cnn_training_step_with_max_pooling_runs_in_onnxruntime():
    """The step's loss and updated parameters (SGD with momentum) from onnxruntime match
    nnx.jit at each variable's scale; XLA is bit-exact."""
    def step(model, optimizer, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model = CNN(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    g = nnxc.trace(step, model, optimizer, "f32[B,8,8,3]", "i32[B]")
    assert "select_and_scatter_add" in [n.op for n in g.nodes]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, (4,)).astype(np.int32)
    exe = nnxc.compile(g)
    loss_xla = np.asarray(exe(x, y))
    session = onnx_session(nnxc.export_onnx(g, weights_as_inputs=True))
    names = [i.name for i in session.get_inputs()]
    state = {v.path: np.asarray(v.data) for v in g.variables if not v.meta.get("new")}
    feeds = {"x": x, "y": y, **{n: state[n] for n in names if n in state}}
    assert set(feeds) == set(names)
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    want_loss = np.asarray(nnx.jit(step)(model, optimizer, x, y))
    assert np.array_equal(loss_xla, want_loss)
    np.testing.assert_allclose(outs["output"], want_loss, rtol=1e-5)
    after = {"model." + ".".join(map(str, p)): np.asarray(v)
             for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    after.update({"optimizer." + ".".join(map(str, p)): np.asarray(v)
                  for p, v in nnx.to_flat_state(nnx.state(optimizer))})
    checked = 0
    for path, value in after.items():
        key = path + ".new"
        if key in outs and value.dtype.kind == "f":
            scale = float(np.max(np.abs(value)))
            np.testing.assert_allclose(outs[key], value, rtol=0, atol=1e-5 * scale, err_msg=key)
            checked += 1
    assert checked == 8  # conv and head kernels and biases, and their momentum


JVP_CASES = {
    "max_same_2x2": lambda x, t: jax.jvp(lambda x: nnx.max_pool(x, (2, 2), (2, 2), padding="SAME"), (x,), (t,))[1],
    "max_3x3_stride1": lambda x, t: jax.jvp(lambda x: nnx.max_pool(x, (3, 3), (1, 1)), (x,), (t,))[1],
    "min_same": lambda x, t: jax.jvp(lambda x: lax.reduce_window(
        x, jnp.inf, lax.min, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"), (x,), (t,))[1],
}


@pytest.mark.parametrize("name", sorted(JVP_CASES))
def test_pooling_forward_derivatives_match_jit_on_xla_and_onnx(name):
    """select_and_gather_add (jax.jvp of pooling): the tangent of the selected element,
    a copy, so ONNX is exact too."""
    f = JVP_CASES[name]
    g = nnxc.trace(f, "f32[B,7,7,3]", "f32[B,7,7,3]")
    assert "select_and_gather_add" in [n.op for n in g.nodes]
    exe = nnxc.compile(g)
    session = onnx_session(nnxc.export_onnx(g))
    tangent = np.random.default_rng(5).standard_normal((2, 7, 7, 3)).astype(np.float32)
    for what, x in _inputs().items():
        t = np.resize(tangent, x.shape)
        want = np.asarray(jax.jit(f)(x, t))
        assert np.array_equal(np.asarray(exe(x, t)), want, equal_nan=True), (name, what)
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, dict(zip(names, (x, t))))[0]
        assert np.array_equal(got, want, equal_nan=True), (name, what)
