"""Frontend behaviour beyond the zoo: Linen lazy init, static kwargs, method=, pytrees, specs."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct

import nnxc
from nnxc.frontend.trace import nnx_state


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.enc = nnx.Linear(3, 4, rngs=rngs)
        self.dec = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, *, scale: float = 1.0):
        return self.dec(nnx.relu(self.enc(x))) * scale

    def encode(self, x):
        return self.enc(x)


@struct.dataclass
class Out:
    logits: jax.Array
    hidden: jax.Array


class WithDataclassOut(nnx.Module):
    def __init__(self, rngs):
        self.l = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        h = self.l(x)
        return Out(logits=jax.nn.log_softmax(h), hidden=h)


def _x(b=2, f=3, seed=0):
    return np.random.default_rng(seed).standard_normal((b, f)).astype(np.float32)


def test_static_kwargs_method_and_module_paths():
    m = Tiny(nnx.Rngs(0))
    g = nnxc.trace(m, "f32[B,3]", scale=2.0)
    assert {n.path for n in g.nodes if n.op == "dot_general"} == {"enc", "dec"}
    np.testing.assert_array_equal(nnxc.compile(g)(_x()), nnx.jit(lambda m, x: m(x, scale=2.0))(m, _x()))
    ge = nnxc.trace(m, "f32[B,3]", method="encode")
    assert [n.op for n in ge.nodes][0] == "dot_general" and ge.outputs[0].type.shape == ("B", 4)
    np.testing.assert_array_equal(nnxc.compile(ge)(_x()), nnx.jit(lambda m, x: m.encode(x))(m, _x()))


def test_dataclass_outputs_keep_their_structure():
    m = WithDataclassOut(nnx.Rngs(0))
    g = nnxc.trace(m, "f32[B,3]")
    assert "return Out{logits=%" in str(g)
    out = nnxc.compile(g)(_x())
    assert isinstance(out, Out)
    want = nnx.jit(lambda m, x: m(x))(m, _x())
    np.testing.assert_array_equal(out.logits, want.logits)
    np.testing.assert_array_equal(out.hidden, want.hidden)
    assert str(nnxc.ir.parse(str(g))) == str(g)


def test_pytree_arguments_are_named_by_key_path():
    def f(batch, w):
        return batch["image"] @ w + batch["bias"]
    g = nnxc.trace(f, {"image": "f32[B,3]", "bias": "f32[2]"}, "f32[3,2]")
    assert [v.name for v in g.inputs] == ["batch.bias", "batch.image", "w"]
    b = {"image": _x(), "bias": np.ones(2, np.float32)}
    w = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(nnxc.compile(g)(b, w), jax.jit(f)(b, w))


def test_symbolic_batch_runs_at_several_sizes_and_state_merges_back():
    m = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(1)))
    ref = nnx.clone(m)
    g = nnxc.trace(m, "f32[B,3]")
    exe = nnxc.compile(g)
    step = nnx.jit(lambda m, x: m(x))
    for b in (1, 5, 2):
        np.testing.assert_array_equal(exe(_x(b, seed=b)), step(ref, _x(b, seed=b)))
    nnx.update(m, nnx_state(g, exe.state))
    np.testing.assert_array_equal(m.layers[1].mean[...], ref.layers[1].mean[...])


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(2)(nn.relu(x))


def test_linen_lazy_init_and_mutable_batch_stats():
    module = LinenNet()
    g = nnxc.trace(module, "f32[B,3]", train=True, mutable=["batch_stats"], rngs=jax.random.key(1))
    kinds = {v.kind for v in g.variables}
    assert kinds == {"params", "batch_stats"}
    assert {p for p, _ in g.updates} == {"BatchNorm_0.mean", "BatchNorm_0.var"}
    assert any(n.path == "Dense_0" for n in g.nodes)
    variables = module.init(jax.random.key(1), jnp.zeros((2, 3)), train=True)
    want, mutated = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables, _x())
    exe = nnxc.compile(g)
    got = exe(_x())
    np.testing.assert_array_equal(got, want)  # mutated collections go to exe.state
    np.testing.assert_array_equal(exe.state["BatchNorm_0.mean"], mutated["batch_stats"]["BatchNorm_0"]["mean"])


def test_linen_with_frozen_variables_in_eval_mode():
    from flax.core import freeze
    module = LinenNet()
    variables = freeze(module.init(jax.random.key(0), jnp.zeros((1, 3)), train=False))
    g = nnxc.trace(module, "f32[B,3]", variables=variables, train=False)
    assert not g.updates
    np.testing.assert_array_equal(nnxc.compile(g)(_x()),
                                  jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, _x()))


@pytest.mark.parametrize("spec, msg", [
    ("f32[B,", "expected dtype\\[dims\\]"), ("q8[3]", "unknown dtype 'q8'"), ("f32[3;4]", "bad dim"),
])
def test_bad_specs_are_named(spec, msg):
    with pytest.raises(nnxc.SpecError, match=msg):
        nnxc.trace(lambda x: x, spec)


def test_shape_dtype_structs_and_arrays_are_accepted():
    g1 = nnxc.trace(lambda x: x * 2, jax.ShapeDtypeStruct((2, 3), jnp.float16))
    g2 = nnxc.trace(lambda x: x * 2, np.zeros((2, 3), np.float16))
    assert str(g1.inputs[0].type) == str(g2.inputs[0].type) == "f16[2,3]"


def test_sown_intermediates_become_new_variables():
    class Sow(nnx.Module):
        def __init__(self, rngs):
            self.l = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            h = self.l(x)
            self.sow(nnx.Intermediate, "h", h)
            return h * 2

    m = Sow(nnx.Rngs(0))
    g = nnxc.trace(m, "f32[B,3]")
    new = [v for v in g.variables if v.meta.get("new")]
    assert [(v.path, v.kind) for v in new] == [("h.0", "Intermediate")]
    exe = nnxc.compile(g)
    out = exe(_x())
    np.testing.assert_array_equal(exe.state["h.0"] * 2, out)
    assert dataclasses.is_dataclass(Out)


def test_a_training_step_compiles_to_one_graph_and_matches_nnx_jit():
    import optax

    def make():
        m = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
        return m, nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)

    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    model, opt = make()
    g = nnxc.trace(train_step, model, opt, "f32[B,3]", "f32[B,1]")
    assert [v.name for v in g.inputs] == ["x", "y"]
    kinds = {v.path: v.kind for v in g.variables}
    assert kinds["model.layers.0.kernel"] == "Param"
    assert kinds["optimizer.opt_state.0.mu.layers.0.kernel"] == "OptVariable"
    assert {p for p, _ in g.updates} == set(kinds)  # every parameter and optimizer slot moves
    exe = nnxc.compile(g)
    ref_model, ref_opt = make()
    step = nnx.jit(train_step)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 1)).astype(np.float32)
        np.testing.assert_allclose(exe(x, y), step(ref_model, ref_opt, x, y), rtol=1e-6)
    new_model, new_opt = nnx_state(g, exe.state)
    nnx.update(model, new_model)
    nnx.update(opt, new_opt)
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state((model, opt))),
                    jax.tree_util.tree_leaves(nnx.state((ref_model, ref_opt)))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_int64_inputs_take_jax_canonical_type_and_scatter_sub_works():
    def f(x, i):
        return x.at[i].subtract(1.0), i * 2
    g = nnxc.trace(f, "f32[4]", np.zeros((2,), np.int64))
    nnxc.ir.verify(g)
    assert str(g.inputs[1].type) == str(g.outputs[1].type) == "i32[2]"  # x64 is off
    x, i = np.arange(4, dtype=np.float32), np.array([1, 3], np.int64)
    for a, b in zip(nnxc.compile(g)(x, i), jax.jit(f)(x, i)):
        np.testing.assert_array_equal(a, b)
