"""Compiled training steps on zoo models, and per-module summaries against XLA's cost analysis."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnxc
import zoo
from nnxc.ir.summary import module_table


def _train_step(model, optimizer, x, y):
    def loss_fn(m):
        logits = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits.reshape(-1, logits.shape[-1]),
                                                               y.reshape(-1)).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


# the GPT case is slow (20 s); tests/test_onnx_training.py's
# test_xla_training_steps_equal_nnx_jit_bit_for_bit[gpt] runs GPT steps bit for bit by default
@pytest.mark.parametrize("name, labels", [("mlp", (10,)), pytest.param("gpt", (64,), marks=pytest.mark.slow)])
def test_three_compiled_adam_steps_match_nnx_jit(name, labels):
    def make():
        model = zoo.make(name, train=False)  # deterministic: the same steps on both sides
        return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    model, opt = make()
    spec = zoo.ZOO[name].specs[0]
    label_spec = "i32[B]" if name == "mlp" else "i32[B,8]"
    g = nnxc.trace(_train_step, model, opt, spec, label_spec)
    exe = nnxc.compile(g)
    ref_model, ref_opt = make()
    step = nnx.jit(_train_step)
    rng = np.random.default_rng(0)
    for i in range(3):
        x, = zoo.example_inputs(name, 4, seed=i)
        y = rng.integers(0, labels[0], size=(4,) if name == "mlp" else (4, 8)).astype(np.int32)
        np.testing.assert_allclose(exe(x, y), step(ref_model, ref_opt, x, y), rtol=1e-6)
    want = {k: v for k, v in zip([v.path for v in g.variables if not v.meta.get("new")],
                                 jax.tree_util.tree_leaves(nnx.state((ref_model, ref_opt))))}
    host = lambda a: np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)  # noqa: E731
    for path, value in want.items():
        np.testing.assert_allclose(host(exe.state[path]), host(value), rtol=1e-6, atol=1e-6, err_msg=path)


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt"])
def test_summary_flops_match_xla_cost_analysis_within_5_percent(name):
    g = zoo.trace(name, zoo.make(name))
    rows = module_table(g, {"B": 4})
    ours = sum(r["flops"] for r in rows)
    x, = zoo.example_inputs(name, 4)
    xla = nnxc.compile(g).cost_analysis(jax.ShapeDtypeStruct(x.shape, x.dtype))["flops"]
    assert abs(ours - xla) <= 0.05 * xla, (ours, xla)
    params = sum(sum(r["params"].values()) for r in rows)
    assert params == sum(int(np.prod(v.value.type.shape)) for v in g.variables)
    kinds = {k for r in rows for k in r["params"]}
    assert "Param" in kinds


def test_summary_charges_a_scanned_stack_to_its_module():
    g = zoo.trace("scan_gpt", zoo.make("scan_gpt"))
    rows = {r["module"]: r for r in module_table(g, {"B": 2})}
    unrolled = {r["module"]: r for r in module_table(zoo.trace("gpt", zoo.make("gpt")), {"B": 2})}
    per_block = unrolled["blocks.0"]["flops"]
    assert rows["blocks"]["flops"] >= 4 * per_block  # depth 4, one scan
    assert jnp.isfinite(rows["blocks"]["flops"])


def test_summary_names_module_classes_for_nnx_and_linen():
    rows = {r["module"]: r["class"] for r in module_table(zoo.trace("gpt", zoo.make("gpt")), depth=2)}
    assert rows["blocks.0.attn"] == "MultiHeadAttention" and rows["head"] == "Linear"
    linen = zoo.make("linen_cnn")
    rows = {r["module"]: r["class"] for r in module_table(zoo.trace("linen_cnn", linen))}
    assert rows["Conv_0"] == "Conv" and rows["BatchNorm_0"] == "BatchNorm"
