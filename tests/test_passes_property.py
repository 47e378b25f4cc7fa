"""Property tests: random compositions of jax.numpy ops and layers, traced with nnxc.trace;
each pass alone and the whole pipelines keep the verifier clean and the results equal (bit
for bit for the cleanups), are idempotent and deterministic. Failing examples found so far
are pinned with @example."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nnxc
from nnxc.ir import parse, verify
from nnxc.passes import PASSES, PRESETS
from test_passes import eager

W = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32) * 0.5
BIAS = np.linspace(-1, 1, 4, dtype=np.float32)


def _ln(a):
    m = a.mean(-1, keepdims=True)
    return (a - m) / jnp.sqrt(((a - m) ** 2).mean(-1, keepdims=True) + 1e-5)


OPS = {  # name: f(a, b) on [B,4] float32 values -> [B,4]
    "add": lambda a, b: a + b, "mul": lambda a, b: a * b, "sub": lambda a, b: a - b,
    "tanh": lambda a, b: jnp.tanh(a), "neg": lambda a, b: -a, "sin": lambda a, b: jnp.sin(a),
    "mul1": lambda a, b: a * 1.0, "add0": lambda a, b: 0.0 + a, "div1": lambda a, b: a / 1.0,
    "double_t": lambda a, b: a.T.T, "reshape": lambda a, b: a.reshape(a.shape[0], 2, 2).reshape(a.shape),
    "dup": lambda a, b: jnp.tanh(a) * jnp.tanh(a), "const": lambda a, b: a + jnp.arange(4.0) * 0.5,
    "stop_gradient": lambda a, b: jax.lax.stop_gradient(a) + b,
    "where": lambda a, b: jnp.where(a > 0, a, b), "max_inf": lambda a, b: jnp.maximum(a, -jnp.inf),
    "cast": lambda a, b: a.astype(jnp.float16).astype(jnp.float32),
    "softmax": lambda a, b: jax.nn.softmax(a, -1), "gelu": lambda a, b: jax.nn.gelu(a),
    "gelu_erf": lambda a, b: jax.nn.gelu(a, approximate=False), "silu": lambda a, b: jax.nn.silu(a),
    "layer_norm": lambda a, b: _ln(a), "linear": lambda a, b: a @ W + BIAS,
    "rms_norm": lambda a, b: a * jax.lax.rsqrt((a * a).mean(-1, keepdims=True) + 1e-6),
    "matmul": lambda a, b: a @ W.T,
}
NAMES = sorted(OPS)
program = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 50), st.integers(0, 50)),
                   min_size=1, max_size=10)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def build(prog, n_out: int = 2):
    def f(x, y):
        pool = [x, y]
        for name, i, j in prog:
            pool.append(OPS[name](pool[i % len(pool)], pool[j % len(pool)]))
        return tuple(pool[-n_out:])
    return f


def trace(prog):
    return nnxc.trace(build(prog), "f32[B,4]", "f32[B,4]", name="prog")


XS = [np.random.default_rng(s).standard_normal((3, 4)).astype(np.float32) for s in (0, 1)]
EXACT = {"dce", "cse", "simplify", "fold-constants", "strip-stop-gradient", "freeze", "prune"}


def check(g, g2, exact: bool):
    verify(g2)
    assert str(parse(str(g2))) == str(g2)
    for a, b in zip(eager(g, *XS), eager(g2, *XS)):
        if exact:
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(program, st.sampled_from(sorted(PASSES)))
@example([("layer_norm", 0, 0), ("softmax", 2, 0)], "fuse-norms")
@example([("dup", 0, 0), ("dup", 0, 0)], "cse")
@example([("reshape", 0, 0), ("double_t", 2, 0), ("mul1", 3, 0)], "simplify")
def test_each_pass_alone_keeps_results(prog, name):
    g = trace(prog)
    before = g.text()
    g2 = PASSES[name][0](g)
    assert g.text() == before  # the input is never modified
    check(g, g2, exact=name in EXACT)
    assert PASSES[name][0](g2).text() == g2.text() if name != "fold-batchnorm" else True


@SETTINGS
@given(program, st.sampled_from(["default", "inference"]))
@example([("linear", 0, 0), ("gelu", 2, 0), ("linear", 3, 0)], "default")
@example([("softmax", 0, 0), ("layer_norm", 2, 0), ("silu", 3, 1)], "inference")
@example([("add", 0, 0), ("add", 0, 0), ("where", 2, 3)], "default")  # cse exposed a select_n
def test_pipelines_keep_results_and_are_idempotent(prog, pipeline):
    g = trace(prog)
    g2 = nnxc.optimize(g, pipeline)
    check(g, g2, exact=False)
    again = nnxc.optimize(g2, PRESETS[pipeline])
    assert again.text() == g2.text()
    assert nnxc.optimize(trace(prog), pipeline).text() == g2.text()  # deterministic


@SETTINGS
@given(program)
def test_cleanup_pipeline_is_bit_exact(prog):
    g = trace(prog)
    check(g, nnxc.optimize(g, ["simplify", "fold-constants", "cse", "dce", "strip-stop-gradient"]),
          exact=True)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program, st.sampled_from(["default", "inference"]))
def test_pipelines_many_random_programs(prog, pipeline):
    g = trace(prog)
    check(g, nnxc.optimize(g, pipeline), exact=False)
