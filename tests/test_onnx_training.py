"""Whole training steps (``nnx.value_and_grad`` + ``nnx.Optimizer(model, optax.adamw(...))``)
traced with ``nnxc.trace``, exported with ``export_onnx(..., weights_as_inputs=True)`` and run
in onnxruntime for three consecutive steps, each fed the state the previous one returned;
compared with the model's own ``nnx.jit`` of the same step. The XLA path is bit-exact.

What ONNX must match, each step (f32 tolerance of the README: 1e-5 of each value's scale):

- the loss (relative), the optimizer's ``count`` and ``step`` exactly;
- the moments ``mu`` and ``nu`` of every parameter, at the scale of each variable;
- the parameters, as AdamW applied (in f64) to onnxruntime's own state and moments, at the
  scale of each variable; and, for the MLP, the parameters of ``nnx.jit`` directly.

Why the parameters of the GPTs are not compared with ``nnx.jit`` element by element at their
scale: AdamW divides each gradient element by its own running magnitude
(``mu / (sqrt(nu) + eps)``), so an element whose gradient is ~1e-4 of its variable's scale
(or near ``eps = 1e-8``) turns the 1e-7 rounding differences of two correct backends
(measured: gradients within 1e-6 of each variable's scale, moments within 1e-6) into a step
that differs by 1e-5..1e-4 of ``lr`` (measured up to 4.6e-5 of the parameter's scale on
scan_gpt, 2.7e-5 on gpt; the XLA path is bit-exact). The moments, which that division reads,
are the well-conditioned values and are compared strictly.

The key biases of softmax attention are not trained here: softmax is shift-invariant and
``q . b_key`` adds the same to every score of a query, so their gradient is exactly zero and
its computed value is rounding noise (4e-10 against 3e-2 for the query bias) that no two
backends share and that Adam normalizes into ``lr``-sized steps.
"""
from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import nnxc
import zoo
from nnxc.runtime.onnx_io import onnx_session

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-4
RTOL = 1e-5  # f32, relative to each value's scale (README, nnxc check)
LABELS = {"mlp": ("i32[B]", 10), "gpt": ("i32[B,8]", 64), "scan_gpt": ("i32[B,8]", 64)}
BATCHES = (4, 1, 3)  # one per step: B is symbolic in the exported step


def _not_key_bias(path, _value) -> bool:
    return tuple(map(str, path[-2:])) != ("key", "bias")


TRAINED = nnx.All(nnx.Param, _not_key_bias)


def train_step(model, optimizer, x, y):
    def loss_fn(m):
        logits = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).mean()
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINED))(model)
    optimizer.update(model, grads)
    return loss


def _make(name):
    model = zoo.make(name, train=False)  # deterministic: the same steps on every side
    return model, nnx.Optimizer(model, optax.adamw(LR, B1, B2, EPS, weight_decay=WD), wrt=TRAINED)


def _batches(name, sizes=BATCHES):
    spec, classes = LABELS[name]
    rng = np.random.default_rng(0)
    for i, b in enumerate(sizes):
        x, = zoo.example_inputs(name, b, seed=i)
        y = rng.integers(0, classes, size=(b,) if spec == "i32[B]" else (b, 8)).astype(np.int32)
        yield x, y


def _state(model, optimizer) -> dict:
    """Every variable of (model, optimizer) by the path nnxc gives it."""
    out = {}
    for prefix, obj in (("model", model), ("optimizer", optimizer)):
        for path, value in zoo.state_by_path(obj).items():
            out[f"{prefix}.{path}"] = value
    return out


def _rel(got, want) -> float:
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale if scale else float(np.max(np.abs(got)))


def _adamw(p, mu, nu, count):
    """optax.adamw's parameter update in f64, from the new moments and count. The bias
    corrections ``1 - b ** count`` are f32, as optax computes them: ``1 - b2 ** count`` is
    ~1e-3, so the rounding of ``b2 ** count`` to f32 is ~1e-5 of it."""
    p, mu, nu = (np.asarray(a, np.float64) for a in (p, mu, nu))
    lr, b1, b2, eps, wd = (float(np.float32(c)) for c in (LR, B1, B2, EPS, WD))
    c1, c2 = (float(np.float32(1) - np.float32(b ** count)) for b in (b1, b2))
    return p - lr * (mu / c1 / (np.sqrt(nu / c2) + eps) + wd * p)


@pytest.fixture(scope="module", params=["mlp", "gpt", pytest.param("scan_gpt", marks=pytest.mark.slow)])
def traced(request):
    name = request.param
    model, opt = _make(name)
    return name, nnxc.trace(train_step, model, opt, zoo.ZOO[name].specs[0], LABELS[name][0])


@pytest.mark.parametrize("name", ["mlp", "gpt", pytest.param("scan_gpt", marks=pytest.mark.slow)])
def test_xla_training_steps_equal_nnx_jit_bit_for_bit(name):
    """At the shapes of the calls (traced with symbolic B, the graph equals ``jax.export`` of
    the step, not ``jax.jit``: a mean divides by a runtime size; README, Passes)."""
    model, opt = _make(name)
    x, y = next(_batches(name))
    exe = nnxc.compile(nnxc.trace(train_step, model, opt, x, y))
    model, opt = _make(name)
    step = nnx.jit(train_step)
    for x, y in _batches(name, (4, 4, 4)):
        np.testing.assert_array_equal(np.asarray(exe(x, y)), np.asarray(step(model, opt, x, y)))
    want = _state(model, opt)
    assert set(want) == set(exe.state)
    for path, value in want.items():
        np.testing.assert_array_equal(zoo.as_numpy(exe.state[path]), value, err_msg=path)


def test_onnx_training_steps_match_nnx_jit(traced):
    name, g = traced
    ops = {n.op for n in g.nodes}  # what the gradient and AdamW bind, among others
    assert {"add_any", "transpose", "dot_general", "scatter-add", "pow", "integer_pow", "sqrt"} <= ops
    onnx_model = nnxc.export_onnx(g, weights_as_inputs=True)
    session = onnx_session(onnx_model)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    variables = [v.path for v in g.variables if not v.meta.get("new")]
    assert inputs == ["x", "y", *variables]  # data, then every variable by path
    assert outputs[0] == "output" and all(o.endswith(".new") for o in outputs[1:])
    updated = [o[:-len(".new")] for o in outputs[1:]]

    model, opt = _make(name)
    step = nnx.jit(train_step)
    state = _state(model, opt)  # what onnxruntime is fed: its own results after the first step
    worst: dict = {}
    for i, (x, y) in enumerate(_batches(name)):
        got = dict(zip(outputs, session.run(None, {"x": x, "y": y, **{p: state[p] for p in variables}})))
        loss = np.asarray(step(model, opt, x, y))
        want = _state(model, opt)
        assert abs(float(got["output"]) - float(loss)) <= RTOL * abs(float(loss)), (i, got["output"], loss)
        count = int(got["optimizer.opt_state.0.count.new"])
        assert count == int(want["optimizer.opt_state.0.count"]) == i + 1
        for path in updated:
            new = got[f"{path}.new"]
            assert new.dtype == want[path].dtype and new.shape == want[path].shape, path
            if new.dtype.kind in "iu":
                np.testing.assert_array_equal(new, want[path], err_msg=path)
                continue
            if path.startswith("model."):  # AdamW applied to onnxruntime's own state
                sub = path[len("model."):]
                mu, nu = (got[f"optimizer.opt_state.0.{m}.{sub}.new"] for m in ("mu", "nu"))
                err = _rel(new, _adamw(state[path], mu, nu, count))
                assert err <= RTOL, (i, path, "vs adamw of its own moments", err)
                if name != "mlp":
                    continue
            err = _rel(new, want[path])
            worst[path] = max(worst.get(path, 0.0), err)
            assert err <= RTOL, (i, path, err)
        state.update({p: got[f"{p}.new"] for p in updated})
    assert any(".mu." in p for p in worst) and any(".nu." in p for p in worst)
