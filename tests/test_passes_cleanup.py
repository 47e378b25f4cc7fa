"""Cleanup passes one by one: dce (regions, variables), cse, fold-constants, simplify,
strip-stop-gradient, fold-batchnorm. Cleanups must keep results bit for bit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import nnxc
from nnxc.ir import verify
from nnxc.passes import PASSES
from nnxc.passes.manager import count_nodes
from test_passes import eager, mlp, outputs, x8


def run(name: str, graph):
    out = PASSES[name][0](graph)
    verify(out)
    return out


def ops(graph) -> list[str]:
    return [n.op for n in graph.walk()]


def same(g1, g2, *args):
    a, b = eager(g1, *args), eager(g2, *args)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# -- dce -----------------------------------------------------------------------------------

def test_dce_removes_unused_nodes_and_keeps_the_rest():
    g = nnxc.trace(lambda x: (jnp.exp(x), jnp.sin(x))[1], "f32[B,4]")
    assert "exp" in ops(g)
    g2 = run("dce", g)
    assert ops(g2) == ["sin"] and run("dce", g2) is g2


def test_dce_variables_removes_variables_nothing_reads_or_writes():
    g = nnxc.trace(mlp(), "f32[B,8]")  # eval: dropout's RNG state is unused
    assert {"drop.rngs.count", "drop.rngs.key"} <= {v.path for v in g.variables}
    assert run("dce", g) is g  # plain dce keeps the model's state interface
    g2 = run("dce-variables", g)
    assert {v.path for v in g2.variables} == {v.path for v in g.variables} - {
        "drop.rngs.count", "drop.rngs.key"}
    same(g, g2, x8())


def test_default_keeps_the_state_interface():
    from flax import nnx as _nnx
    from nnxc.frontend.trace import nnx_state
    model = mlp()
    g = nnxc.optimize(nnxc.trace(model, "f32[B,8]"), "default")
    exe = nnxc.compile(g)
    exe(x8())
    _nnx.update(model, nnx_state(g, exe.state))  # the optimized graph's state fits the model


def _scan(x, w):
    k = jnp.cos(x)  # only feeds the unused output

    def body(c, xs):
        a, b = xs
        return c + a, (c * 2, jnp.sin(b) + k)
    c, (y1, _) = lax.scan(body, x, (w, w))
    return c + y1.sum(0)


def test_dce_shrinks_scan_consts_xs_and_ys():
    g = nnxc.trace(_scan, "f32[4]", "f32[3,4]")
    (scan,) = [n for n in g.nodes if n.op == "scan"]
    assert len(scan.inputs) == 4 and len(scan.outputs) == 3
    g2 = run("dce", g)
    (scan2,) = [n for n in g2.nodes if n.op == "scan"]
    assert len(scan2.inputs) == 2 and len(scan2.outputs) == 2 and scan2.attrs["num_consts"] == 0
    assert [n.op for n in scan2.regions[0].nodes] == ["add", "mul"] and "cos" not in ops(g2)
    x, w = np.arange(4, dtype=np.float32), np.ones((3, 4), np.float32)
    same(g, g2, x, w)


def test_dce_shrinks_cond_operands_and_results():
    def f(p, x, y):
        return lax.cond(p, lambda a, b: (a + 1, jnp.sin(b)), lambda a, b: (a - 1, jnp.cos(b)), x, y)[0]
    g = nnxc.trace(f, "bool[]", "f32[4]", "f32[4]")
    g2 = run("dce", g)
    (cond,) = [n for n in g2.nodes if n.op == "cond"]
    assert len(cond.inputs) == 2 and len(cond.outputs) == 1
    assert all(len(r.args) == 1 and len(r.results) == 1 for r in cond.regions)
    same(g, g2, np.bool_(True), np.ones(4, np.float32), np.ones(4, np.float32))


def test_dce_shrinks_while_consts_but_keeps_the_carry():
    def f(x, y):
        def body(c):
            _ = jnp.sin(y)  # dead inside the loop: y need not go in
            return c[0] + 1, c[1] * 2
        return lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]
    g = nnxc.trace(f, "f32[4]", "f32[4]")
    g2 = run("dce", g)
    (loop,) = [n for n in g2.nodes if n.op == "while"]
    assert loop.attrs["body_nconsts"] == 0 and len(loop.outputs) == 2
    same(g, g2, np.ones(4, np.float32), np.ones(4, np.float32))


# -- cse -----------------------------------------------------------------------------------

def test_cse_merges_repeats_including_equal_constants():
    g = nnxc.trace(lambda x: jnp.exp(x * 2.0) * 3.0 + jnp.exp(x * 2.0), "f32[B,4]")
    assert ops(g).count("exp") == 2
    g2 = run("cse", g)
    assert ops(g2).count("exp") == 1 and ops(g2).count("mul") == 2
    x = np.ones((2, 4), np.float32)
    same(g, run("dce", g2), x)


def test_cse_keeps_apart_copies_one_node_reads_together():
    """Fuzz seed 31561: merging them gave select_n(p, b, b), which XLA simplifies before its
    own CSE runs; the fusion around it changed and rounded a reduce_prod 1 ulp differently."""
    g = nnxc.trace(lambda x: jnp.exp(x * 2.0) + jnp.exp(x * 2.0), "f32[B,4]")
    g2 = run("cse", g)
    assert ops(g2).count("exp") == 2 and ops(g2).count("mul") == 1  # the muls feed different exps


def test_cse_does_not_reach_into_regions():
    def f(x):
        y = jnp.sin(jnp.ones(4))
        return lax.scan(lambda c, _: (c + jnp.sin(jnp.ones(4)), None), x, None, length=2)[0] + y
    g = nnxc.trace(f, "f32[4]")
    g2 = run("cse", g)
    verify(g2)  # a body node replaced by an outer value would not verify
    same(g, g2, np.ones(4, np.float32))


# -- fold-constants --------------------------------------------------------------------------

def test_fold_all_constants_evaluates_constant_subgraphs():
    g = nnxc.trace(lambda x: x * jnp.sqrt(jnp.arange(4.0) + 1).reshape(1, 4), "f32[B,4]")
    g2 = run("dce", run("fold-all-constants", g))
    assert ops(g2) == ["mul"] and len(g2.consts) == 1
    np.testing.assert_allclose(outputs(g2, np.ones((2, 4), np.float32))[0][0],
                               outputs(g, np.ones((2, 4), np.float32))[0][0], rtol=1e-6)


def test_fold_constants_folds_only_what_is_exact():
    """Float math on constants stays (eager rounding differs from the compiled model's:
    RoPE tables, rsqrt of frozen statistics); integer and data-movement folds happen."""
    g = nnxc.trace(lambda x: x * jnp.sqrt(jnp.arange(4.0) + 1).reshape(1, 4), "f32[B,4]")
    kept = ops(run("dce", run("fold-constants", g)))
    assert "sqrt" in kept and "add" in kept
    ints = np.arange(8, dtype=np.int32)  # a constant of the program (iota itself stays: XLA fuses it)
    # (not `// 2`: jnp.floor_divide is a nested jit, whose operands stay behind jit_boundary)
    g = nnxc.trace(lambda x: x + ((jnp.asarray(ints) * 3) - 2).reshape(2, 4).T.astype(jnp.float32)[0],
                   "f32[B,2]")
    g2 = run("dce", run("fold-constants", g))
    # int math, reshape, transpose, exact convert, slice fold; the broadcast to [B,2] stays
    assert ops(g2) == ["broadcast_in_dim", "add"], ops(g2)
    same(g, g2, np.ones((3, 2), np.float32))
    # float -> int conversions and inexact narrowing are never folded by the exact pass
    g = nnxc.trace(lambda x: x + jnp.asarray([1.5, -2.5, 3e9]).astype(jnp.int32), "i32[2,3]")
    assert "convert_element_type" in ops(run("fold-constants", g))
    g = nnxc.trace(lambda x: x + jnp.asarray([0.1, 0.2], jnp.float32).astype(jnp.float16), "f16[2]")
    assert "convert_element_type" in ops(run("fold-constants", g))
    g = nnxc.trace(lambda x: x + jnp.asarray([0.5, 2.0], jnp.float32).astype(jnp.float16), "f16[2]")
    assert "convert_element_type" not in ops(run("dce", run("fold-constants", g)))  # exact values


def test_fold_constants_is_bounded_and_never_duplicates_weights():
    from nnxc.passes.fold_constants import fold_constants
    g = nnxc.trace(lambda x: x + jnp.zeros((300, 300)), "f32[300,300]")
    assert ops(fold_constants(g, limit=1000)) == ["broadcast_in_dim", "add"]  # too big to make
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = nnxc.trace(lambda x: x @ w.T + x @ (w * 2), "f32[B,64]")
    g2 = run("dce", fold_constants(g, limit=16))
    # w.T may be folded (w dies with it) but w*2 may not: w is still used by the transpose
    sizes = sorted(c.type.size() for c in g2.consts)
    assert sum(sizes) <= 2 * w.size
    same(g, g2, np.ones((2, 64), np.float32))


def test_fold_constants_leaves_symbolic_and_random_ops():
    g = nnxc.trace(lambda x: x + jnp.zeros(x.shape), "f32[B,4]")
    assert "broadcast_in_dim" in ops(run("fold-constants", g))  # shape (B,4) is not known
    g = nnxc.trace(lambda x: x + jax.random.normal(jax.random.key(0), (4,)), "f32[B,4]")
    g2 = run("fold-constants", g)
    assert "random_bits" in ops(g2)
    same(g, g2, np.ones((2, 4), np.float32))


# -- simplify ------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, gone", [
    (lambda x: x * 1.0, "mul"), (lambda x: 1.0 * x, "mul"), (lambda x: x + 0.0, "add"),
    (lambda x: x.astype(jnp.int32) + 0, "add"),
    (lambda x: x - 0.0, "sub"), (lambda x: x / 1.0, "div"),
    (lambda x: jnp.maximum(x, -jnp.inf), "max"), (lambda x: jnp.minimum(x, jnp.inf), "min"),
    (lambda x: x.astype(jnp.float32), "convert_element_type"),
    (lambda x: x.reshape(x.shape), "reshape"),
    (lambda x: jnp.transpose(x, (0, 1)), "transpose"),
    (lambda x: jnp.transpose(jnp.transpose(x)), "transpose"),
    (lambda x: jnp.array(x, copy=True), "copy"),
    (lambda x: jax.lax.select_n(True, 2 * x, x), "select_n"),
])
def test_simplify_identities(fn, gone):
    g = nnxc.trace(fn, "f32[B,4]")
    g2 = run("dce", run("simplify", g))
    assert gone not in ops(g2), g2
    same(g, g2, np.arange(8, dtype=np.float32).reshape(2, 4) - 3)


@pytest.mark.parametrize("fn, kept", [(lambda x: x + 0.0, False), (lambda x: x + -0.0, False),
                                      (lambda x: x - 0.0, False), (lambda x: x - -0.0, False)])
def test_simplify_keeps_the_sign_of_zeros_as_jax_jit_does(fn, kept):
    """IEEE says ``-0.0 + 0.0 = +0.0``, but XLA's own simplifier drops ``x + 0`` and ``x - 0``,
    so the model's jax.jit keeps ``-0.0``: dropping them is what keeps the bits."""
    g = nnxc.trace(fn, "f32[3]")
    g2 = run("dce", run("simplify", g))
    assert (len(ops(g2)) == 1) == kept, ops(g2)
    x = np.array([-0.0, 0.0, -1.0], np.float32)
    got, want = outputs(g2, x)[0][0], np.asarray(jax.jit(fn)(x))
    assert np.array_equal(np.signbit(got), np.signbit(want)) and np.array_equal(got, want)


def test_simplify_merges_chains_and_keeps_what_changes_types():
    g = nnxc.trace(lambda x: jnp.transpose(jnp.transpose(x, (1, 2, 0)), (2, 0, 1)) + 1, "f32[2,3,4]")
    assert "transpose" not in ops(run("dce", run("simplify", g)))
    g = nnxc.trace(lambda x: x.reshape(6, 4).reshape(24), "f32[2,3,4]")
    assert ops(run("dce", run("simplify", g))) == ["reshape"]
    g = nnxc.trace(lambda x: jnp.transpose(jnp.transpose(x, (1, 0, 2)), (0, 2, 1)), "f32[2,3,4]")
    assert ops(run("dce", run("simplify", g))) == ["transpose"]
    g = nnxc.trace(lambda x: jnp.broadcast_to(x[:, None], (4, 3))[None], "f32[4]")
    assert ops(run("dce", run("simplify", g))) == ["broadcast_in_dim"]
    for keep in (lambda x: x * jnp.ones((3, 4)), lambda x: x * 1.0000001,
                 lambda x: x.astype(jnp.float16)):  # broadcasting, not a unit, a real cast
        g = nnxc.trace(keep, "f32[4]")
        assert run("simplify", g).text() == g.text()


def test_strip_stop_gradient():
    g = nnxc.trace(lambda x: jax.nn.softmax(x), "f32[B,4]")
    assert "stop_gradient" in ops(g)
    g2 = run("strip-stop-gradient", g)
    assert "stop_gradient" not in ops(g2) and run("strip-stop-gradient", g2) is g2
    same(g, g2, np.ones((2, 4), np.float32))


# -- fold-batchnorm --------------------------------------------------------------------------

class ConvBN(nnx.Module):
    def __init__(self, rngs, use_bias=True):
        self.conv = nnx.Conv(3, 8, (3, 3), use_bias=use_bias, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.lin = nnx.Linear(8, 5, use_bias=use_bias, rngs=rngs)
        self.bn2 = nnx.BatchNorm(5, rngs=rngs)

    def __call__(self, x):
        return self.bn2(self.lin(nnx.relu(self.bn(self.conv(x))).mean((1, 2))))


@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_batchnorm_into_conv_and_linear(use_bias):
    from test_passes import randomize
    model = randomize(ConvBN(nnx.Rngs(0), use_bias))
    model.eval()
    g = nnxc.trace(model, "f32[B,6,6,3]")
    g2, stats = nnxc.optimize(g, "inference", stats=True)
    assert stats.fired()["affine"] >= 4
    assert [o for o in ops(g2) if o not in ("max", "reduce_sum", "div")] == [
        "conv_general_dilated", "add", "nnxc.linear"]
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    a, b = outputs(g, x)[0][0], outputs(g2, x)[0][0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)  # rounding of the folded weights


def test_fold_batchnorm_needs_frozen_weights_and_single_use():
    from test_passes import randomize
    model = randomize(ConvBN(nnx.Rngs(0)))
    model.eval()
    g = nnxc.trace(model, "f32[B,6,6,3]")
    partly = nnxc.optimize(g, ["freeze", "simplify", "fold-constants", "dce"], freeze=nnx.BatchStat)
    assert run("fold-batchnorm", partly) is partly  # the conv weights are still variables

    def shared(x):  # the conv result is also used elsewhere: folding would duplicate the conv
        y = lax.conv(x, np.ones((4, 2, 3, 3), np.float32), (1, 1), "SAME")
        return y * np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1) + y
    g = nnxc.trace(shared, "f32[1,2,5,5]")
    assert run("fold-batchnorm", g) is g


def test_cleanups_keep_results_bit_for_bit_in_train_mode():
    g = nnxc.trace(mlp(train=True), "f32[B,8]")
    g2 = nnxc.optimize(g, ["simplify", "fold-constants", "cse", "dce"])
    assert count_nodes(g2) < count_nodes(g)
    a, sa = outputs(g, x8())
    b, sb = outputs(g2, x8())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for path in sb:  # the BatchNorm statistics and RNG count move the same way
        if "key" not in path:
            np.testing.assert_array_equal(np.asarray(sa[path]), np.asarray(sb[path]))


@pytest.mark.parametrize("pipeline", ["default", "fast", "inference"])
def test_folding_keeps_ieee_nan_and_inf_positions(pipeline):
    """Division by zero and logs of negatives inside constant subgraphs give NaN/inf exactly
    where the model's jax.jit gives them (default: bit for bit)."""
    def f(x):
        c = jnp.arange(4.0) - 1.0                       # [-1, 0, 1, 2]
        return x * (1.0 / c) + jnp.log(c) + jnp.sqrt(c) * (c // 0.0)

    g = nnxc.optimize(nnxc.trace(f, "f32[B,4]"), pipeline)
    x = np.ones((2, 4), np.float32)
    got, want = outputs(g, x)[0][0], np.asarray(jax.jit(f)(x))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    if pipeline == "default":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_default_keeps_broadcasts_and_iotas_xla_fuses():
    """Folding broadcast(c) or iota into a dense constant changes how XLA fuses its users:
    a causal attention mask computed in the model came out 1 ulp off (fuzz seed 17)."""
    from flax import nnx as fnnx
    mha = fnnx.MultiHeadAttention(1, 6, qkv_features=8, decode=False, rngs=fnnx.Rngs(0))

    def f(x):
        return mha(x, mask=fnnx.make_causal_mask(x[..., 0]))

    x = np.random.default_rng(17).standard_normal((4, 6, 6)).astype(np.float32) * 3
    g = nnxc.trace(f, x)
    g2 = nnxc.optimize(g, "default")
    assert "iota" in ops(g2) and "broadcast_in_dim" in ops(g2)
    np.testing.assert_array_equal(outputs(g2, x)[0][0], np.asarray(jax.jit(f)(x)))


def test_cse_never_matches_nodes_of_different_regions():
    """A region's node list freed during the pass could share its id with a later region's,
    and cse then reused a value from another region (invalid IR, fuzz seed 211)."""
    def f(x):
        y = jax.lax.fori_loop(0, 3, lambda i, c: c * 0.5 + jnp.tanh(c), x)
        z = jnp.nan_to_num(jnp.clip(x * 3, 0.0, 100.0))

        def b0(o):
            return jnp.nan_to_num(jnp.clip(jnp.broadcast_to(o.mean(), o.shape), -4.0, 4.0))

        def b1(o):
            return o * 2.0

        def b2(o):
            return jnp.nan_to_num(jnp.clip(jnp.broadcast_to(o.sum(), o.shape), -4.0, 4.0))
        w = jax.lax.switch((y.max() > 0.5).astype(jnp.int32), [b0, b1, b2], z)
        return w + z

    for pipeline in ("default", "inference"):
        g = nnxc.optimize(nnxc.trace(f, "f32[B,6]"), pipeline)
        x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
        np.testing.assert_array_equal(outputs(g, x)[0][0], np.asarray(jax.jit(f)(x)))
