"""The frontend traces what the user calls: bound Linen modules with their own variables,
array keyword arguments as inputs (never baked in), and checks whose reference is the
user's own call, so a wrong graph can never be reported as matching."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import nnxc


class _Dense(nn.Module):
    @nn.compact
    def __call__(self, x, scale=1.0):
        return nn.Dense(3)(x) * scale


def _x(batch=2):
    return np.random.default_rng(0).standard_normal((batch, 4)).astype(np.float32)


def test_bound_linen_module_is_traced_with_its_bound_variables():
    m, x = _Dense(), _x()
    variables = m.init(jax.random.key(7), x)  # not key(0): a re-initialization would differ
    g = nnxc.trace(m.bind(variables), x)
    want = np.asarray(m.apply(variables, x))
    assert np.array_equal(np.asarray(nnxc.compile(g)(x)), want)
    assert nnxc.crosscheck(g, x).ok


def test_bound_module_with_variables_too_is_an_error():
    m, x = _Dense(), _x()
    variables = m.init(jax.random.key(7), x)
    with pytest.raises(nnxc.NnxcError, match="bound"):
        nnxc.trace(m.bind(variables), x, variables=variables)


def test_unbound_linen_module_without_variables_still_initializes_lazily():
    m, x = _Dense(), _x()
    g = nnxc.trace(m, "f32[B,4]")
    want = m.apply(m.init(jax.random.key(0), x), x)
    assert np.array_equal(np.asarray(nnxc.compile(g)(x)), np.asarray(want))


@pytest.mark.parametrize("kind", ["nnx", "linen", "function"])
def test_crosscheck_reference_is_the_users_call_not_the_trace(kind):
    """A graph whose weights are wrong must fail the check (it said ✓ when the reference was
    rebuilt from the trace)."""
    x = _x()
    if kind == "nnx":
        g = nnxc.trace(nnx.Linear(4, 3, rngs=nnx.Rngs(1)), x)
    elif kind == "linen":
        m = _Dense()
        g = nnxc.trace(m, x, variables=m.init(jax.random.key(3), x))
    else:
        w = np.ones((4, 3), np.float32)
        g = nnxc.trace(lambda x, w: x @ w, x, w)
    assert nnxc.crosscheck(g, *([x] if kind != "function" else [x, np.ones((4, 3), np.float32)])).ok
    if kind == "function":  # nothing to corrupt but the reference itself
        assert g.meta["reference"](x, np.ones((4, 3), np.float32)).shape == (2, 3)
        return
    var = next(v for v in g.variables if v.path.endswith("kernel"))
    var.data = np.asarray(var.data) + 1.0
    report = nnxc.crosscheck(g, x, backends=("jax", "xla"))
    assert not report.ok and "✗" in str(report)


@pytest.mark.parametrize("kind", ["nnx", "linen", "function"])
def test_array_keyword_arguments_become_inputs_named_by_keyword(kind):
    c = np.full((3,), 2.0, np.float32)
    x = _x()
    if kind == "nnx":
        class M(nnx.Module):
            def __init__(self):
                self.l = nnx.Linear(4, 3, rngs=nnx.Rngs(0))

            def __call__(self, x, *, cache):
                return self.l(x) + cache
        model = M()
        g = nnxc.trace(model, "f32[B,4]", cache=c)

        def want(x, cache):
            return model(x, cache=cache)
    elif kind == "linen":
        class L(nn.Module):
            @nn.compact
            def __call__(self, x, cache):
                return nn.Dense(3)(x) + cache
        m = L()
        variables = m.init(jax.random.key(0), x, cache=c)
        g = nnxc.trace(m, "f32[B,4]", variables=variables, cache=c)

        def want(x, cache):
            return m.apply(variables, x, cache=cache)
    else:
        def f(x, cache):
            return jnp.tanh(x[:, :3]) * cache
        g = nnxc.trace(f, "f32[B,4]", cache=c)
        want = f
    assert [v.name for v in g.inputs] == ["x", "cache"]
    assert not any(v.type.size() == 3 for v in g.consts if v.type.is_static)  # not baked in
    exe = nnxc.compile(g)
    other = np.array([1.0, -3.0, 0.5], np.float32)  # a different value than at trace time
    for b in (1, 3):
        xb = _x(b)
        assert np.array_equal(np.asarray(exe(xb, cache=other)), np.asarray(want(xb, other)))
    with pytest.raises(nnxc.NnxcError, match="cache"):
        exe(x)
    assert nnxc.crosscheck(g).ok


def test_check_names_the_first_pass_that_changes_the_bits():
    """The MLP in eval mode is bit-exact until BatchNorm is folded into the weights."""
    import zoo
    model = zoo.make("mlp")
    g = nnxc.optimize(zoo.trace("mlp", model), "inference")
    report = nnxc.crosscheck(g, backends=("jax", "xla"))
    assert report.ok and not report.exact_promised
    assert report.first_difference == "fold-batchnorm", str(report)
    assert "first pass that changes the bits: fold-batchnorm" in str(report)
    exact = nnxc.crosscheck(nnxc.optimize(zoo.trace("mlp", model), "default"), backends=("jax", "xla"))
    assert exact.ok and exact.exact_promised and "bit-exact promised" in str(exact)


def test_only_params_in_the_explicit_table_are_left_out_of_the_ir():
    """The IR leaves out a None param only where OMITTED_BY_PRIMITIVE lists it (binding puts
    it back from the table); any other None param is printed, so text always binds."""
    from flax import nnx as fnnx

    from nnxc import _jax as jc

    def f(x, m):
        y = jnp.tanh(x @ m) + jnp.exp(x) * jnp.sqrt(jnp.abs(x)) - jnp.log1p(jnp.abs(x))
        y = y + jax.nn.sigmoid(x) + jnp.sin(x) * jnp.cos(x) + jax.lax.rsqrt(1 + x * x)
        y = y.reshape(-1, 2).sum(0) + jnp.arange(2.0) + jnp.expm1(x[0, :2]) + jnp.cbrt(x[0, :2])
        z = jax.lax.conv_general_dilated(x[None, None], jnp.ones((1, 1, 2, 2)), (1, 1), "SAME")
        return y + z.sum() + fnnx.Linear(4, 2, rngs=fnnx.Rngs(0))(x).sum() + jnp.argmax(x)

    x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    g = nnxc.trace(f, x, x)
    jaxpr = jax.make_jaxpr(f)(x, x)
    left_out = {(e.primitive.name, k) for e in jaxpr.jaxpr.eqns for k, v in e.params.items()
                if v is None and k in jc.OMITTED_BY_PRIMITIVE.get(e.primitive.name, ())}
    assert len(left_out) >= 10
    text = g.text(locs=False)
    parsed = nnxc.ir.parse(text)
    for node in parsed.nodes:
        for k in jc.OMITTED_BY_PRIMITIVE.get(node.op, ()):
            assert k not in node.attrs or node.attrs[k] is not None, (node.op, k)
    np.testing.assert_array_equal(np.asarray(nnxc.compile(parsed)(x, x)), np.asarray(jax.jit(f)(x, x)))


def test_ir_text_parsed_in_a_fresh_process_compiles(tmp_path):
    """A conv model's IR text, with its constants in a sidecar, runs in a new process (the
    dropped precision/out_sharding params come from the explicit table, not from memory)."""
    import subprocess
    import sys
    model = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    g = nnxc.optimize(nnxc.trace(model, "f32[B,8,8,3]"), "inference")
    path = tmp_path / "conv.ir"
    sidecar = nnxc.ir.write_text(g, path, full_constants=False, sidecar=True)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import nnxc, numpy as np, sys; "
            f"g = nnxc.ir.parse(open({str(path)!r}).read(), sidecar={sidecar!r}); "
            f"np.save({str(tmp_path / 'y.npy')!r}, np.asarray(nnxc.compile(g)(np.load({str(tmp_path / 'x.npy')!r}))))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(nnx.jit(lambda m, x: m(x))(model, x)),
                               rtol=1e-5, atol=1e-5)


def test_batchnorm_update_of_cancelling_inputs_is_compared_at_the_variables_scale():
    """A train-mode BatchNorm mean of inputs that cancel is rounding noise (~1e-9) in both
    backends; the check compares it at the scale of the variable and its inputs."""
    bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32) * 3 + 1
    x = (x - x.mean(0)).astype(np.float32)  # every column sums to ~0 (was: relative error 1.75)
    g = nnxc.trace(bn, x)
    report = nnxc.crosscheck(g, x)
    assert report.ok, str(report)
    rows = [r for r in report.rows if "mean (update)" in r["output"]]
    assert rows and rows[0]["abs"] < 1e-6


def test_compiled_fast_path_keeps_state_and_validation():
    """Repeated calls go straight to jax.jit's dispatch once a signature is validated; state
    updates still flow (BatchNorm statistics, RNG counts) and new shapes are still checked."""
    class M(nnx.Module):
        def __init__(self):
            self.l = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
            self.bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.drop(self.bn(self.l(x)))

    model = M()
    exe = nnxc.compile(nnxc.trace(model, "f32[B,4]"))
    ref = nnx.jit(lambda m, x: m(x))
    for b in (2, 2, 3, 2):
        x = np.random.default_rng(b).standard_normal((b, 4)).astype(np.float32)
        assert np.array_equal(np.asarray(exe(x)), np.asarray(ref(model, x)))
    state = nnxc.frontend.trace.nnx_state(exe.graph, exe.state)
    for (path, a), (_, b) in zip(nnx.to_flat_state(state), nnx.to_flat_state(nnx.state(model))):
        a, b = a.get_value(), b.get_value()
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.array_equal(np.asarray(a), np.asarray(b)), path
    with pytest.raises(nnxc.NnxcError, match="shape"):
        exe(np.zeros((2, 5), np.float32))


def test_nnx_capture_traces_directly_from_the_python_api():
    """``nnxc.trace(nnx.capture(model, nnx.Intermediate), x)`` (flax 0.12's way to collect
    sown values) traces the model under the capture: outputs and intermediates as it returns."""
    import sys
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import sow
    captured = sow.captured()
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    g = nnxc.trace(captured, "f32[B,16]")
    assert not any(v.path.startswith("_nnxc") for v in g.variables)
    got = jax.tree_util.tree_leaves(nnxc.compile(g)(x))
    want = jax.tree_util.tree_leaves(sow.captured()(x))
    assert len(got) == len(want) >= 2
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_STATIC_INDEXING = {
    "stride": lambda x: x[:, ::2],
    "offset_stride": lambda x: x[:, 1::3],
    "reverse": lambda x: x[:, ::-1],
    "reverse_stride": lambda x: x[:, 6:1:-2],
    "window": lambda x: x[:, 1:4],
    "last_axis": lambda x: x[..., ::2],
    "integer": lambda x: x[:, 3],
    "integer_and_window": lambda x: x[:, 3, 1:],
    "negative_integer": lambda x: x[:, -1],
    "newaxis_and_two_axes": lambda x: x[:, None, 2:5, ::2],
    # fuzz seed 2277: the gather JAX emits for x[:, :, 0::2] with a symbolic B made XLA sum
    # the norm in another order than jax.jit's slice (1 ulp)
    "norm_of_strided": lambda x: jnp.linalg.norm(x[:, :, 0::2], axis=(0, 2), keepdims=True),
}


@pytest.mark.parametrize("name", sorted(_STATIC_INDEXING))
def test_static_indexing_traced_with_symbolic_dims_is_the_slice_jit_traces(name):
    """With a symbolic dim, jnp indexing emits iota arithmetic and a gather; nnxc reads it as
    the slice (and squeeze) JAX emits at concrete shapes, so XLA compiles what jax.jit does
    and the results are bit-exact at every size."""
    f = _STATIC_INDEXING[name]
    g = nnxc.trace(f, "f32[B,8,5,6]")
    ops = [n.op for n in g.nodes]
    assert "gather" not in ops and "iota" not in ops, ops
    exe = nnxc.compile(g)
    for B in (1, 3, 4):
        x = np.random.default_rng(B).standard_normal((B, 8, 5, 6)).astype(np.float32)
        assert np.array_equal(np.asarray(exe(x)), np.asarray(jax.jit(f)(x))), (name, B)


def test_gathers_the_user_wrote_stay_gathers():
    """Only gathers of operands with a symbolic dim are read as slices: at concrete shapes a
    gather is what the user (or JAX) chose; out-of-bounds or unsorted indices stay gathers."""
    idx = jnp.array([0, 2, 4])
    concrete = nnxc.trace(lambda x: x.at[:, idx].get(mode="promise_in_bounds"), "f32[3,8]")
    assert "gather" in [n.op for n in concrete.nodes]
    for f in (lambda x: x[:, jnp.array([4, 0, 2])],           # not a progression
              lambda x: x.at[:, jnp.array([0, 9])].get(mode="clip")):  # out of bounds
        g = nnxc.trace(f, "f32[B,8]")
        assert "gather" in [n.op for n in g.nodes]
        x = np.arange(24, dtype=np.float32).reshape(3, 8)
        assert np.array_equal(np.asarray(nnxc.compile(g)(x)), np.asarray(jax.jit(f)(x)))


def test_scans_over_a_symbolic_length_compile_at_every_size():
    """examples/rnn.py traced with x: f32[B,T,8] scans over the symbolic T (and lax.map over
    B): verify, the presets, the text round trip, the per-module table and compile work, and
    the compiled graph equals the model's nnx.jit at three sizes, 1 included."""
    import importlib.util
    import os
    from flax import nnx
    from nnxc.ir.summary import module_table
    spec = importlib.util.spec_from_file_location(
        "rnn_example", os.path.join(os.path.dirname(__file__), "..", "examples", "rnn.py"))
    rnn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rnn)
    model = rnn.rnn()
    g = nnxc.trace(model, "f32[B,T,8]")
    assert any(n.op == "scan" and not isinstance(n.attrs["length"], int) for n in g.nodes)
    for preset in ("default", "inference"):
        opt = nnxc.optimize(g, preset)
        nnxc.ir.verify(nnxc.ir.parse(str(opt)))
    rows = module_table(g, {"B": 2, "T": 5})
    assert sum(r["flops"] for r in rows) > sum(r["flops"] for r in module_table(g, {"B": 2, "T": 1}))
    exe = nnxc.compile(g)
    exported = exe.export()  # symbolic B and T kept: what `nnxc compile -o` saves
    assert "T" in str(exported.in_avals[-1].shape)
    step = nnx.jit(lambda m, x: m(x))
    for shape in [(1, 1, 8), (2, 5, 8), (3, 7, 8)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        assert np.array_equal(np.asarray(exe(x)), np.asarray(step(model, x))), shape
    f = lambda x: jax.lax.map(lambda r: jnp.sin(r).sum(), x)  # noqa: E731
    exe = nnxc.compile(nnxc.optimize(nnxc.trace(f, "f32[B,4]"), "default"))
    for b in (1, 3):
        x = np.arange(b * 4, dtype=np.float32).reshape(b, 4)
        assert np.array_equal(np.asarray(exe(x)), np.asarray(jax.jit(f)(x)))


def test_constants_passed_into_nested_jits_keep_their_boundary():
    """jnp.var passes ddof, leaky_relu its slope, into jax.jit'd functions: jax.jit's HLO has
    them as call operands, which nothing folds before XLA inlines the call. nnxc keeps them as
    jit_boundary (seed 34439: folded, XLA simplified the variance differently, 1 ulp); an
    inlined jit (inline=True) is lowered inline by JAX too, so its constants stay plain."""
    def f(x):
        return jnp.linalg.norm(jax.nn.leaky_relu(jnp.var(x, axis=3), 0.1), axis=(0, 1), keepdims=True)

    g = nnxc.trace(f, "f32[8,2,2,4]")
    crossing = sorted(str(n.inputs[0].data) for n in g.walk() if n.op == "jit_boundary")
    assert crossing == ["0", "0.1", "nan"], crossing  # ddof, the slope, _where's fill
    x = np.random.default_rng(0).standard_normal((8, 2, 2, 4)).astype(np.float32)
    assert np.array_equal(nnxc.compile(g)(x), jax.jit(f)(x))
    assert np.array_equal(nnxc.compile(nnxc.optimize(g, "default"))(x), jax.jit(f)(x))
    assert not any(n.op == "jit_boundary" for n in nnxc.optimize(g, "fast").walk())
    report = nnxc.crosscheck(g, x, per_module=True)  # ONNX reads the constants through it
    assert report.ok, report

    inlined = jax.jit(lambda x, s: x * s, inline=True)
    g2 = nnxc.trace(lambda x: inlined(x, 0.5), "f32[3]")
    assert not any(n.op == "jit_boundary" for n in g2.walk())
    assert "mul(%x, 0.5:f32)" in str(g2)
