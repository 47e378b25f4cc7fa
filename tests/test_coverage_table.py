"""docs/coverage.md (tools/coverage.py): it is current, and every JAX primitive in it is covered
on each backend or says why not. Plus the XLA path of the primitives that no model test
reaches: each program in ``XLA_SAMPLES`` must bind the primitive it is named after (checked in
its jaxpr), and nnxc's traced + compiled program must equal ``jax.jit`` of it bit for bit.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.ad_checkpoint import checkpoint_name

import nnxc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def coverage():
    spec = importlib.util.spec_from_file_location("nnxc_tools_coverage", os.path.join(ROOT, "tools", "coverage.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coverage_doc_is_current():
    cov = coverage()
    with open(cov.DOC, encoding="utf-8") as f:
        on_disk = f.read()
    assert on_disk == cov.render(), "docs/coverage.md is stale: run .venv/bin/python tools/coverage.py"


def test_every_primitive_is_covered_or_explained():
    cov = coverage()
    table = cov.rows()
    assert len(table) > 150  # the enumeration found JAX's primitives
    names = {r["name"] for r in table}
    assert {"add", "dot_general", "lgamma", "scan", "psum", "random_bits", "custom_jvp_call"} <= names  # coverage: names only
    missing = cov.unexplained(table)
    assert not missing, ("primitives neither covered by a test nor given a reason in tools/coverage.py "
                         "(XLA_REASONS / ONNX_REASONS):\n  " + "\n  ".join(missing))


def test_the_totals_count_the_rows():
    cov = coverage()
    table = cov.rows()
    head = cov.render().splitlines()[2]
    xla, onnx = sum(r["xla_covered"] for r in table), sum(r["onnx_covered"] for r in table)
    assert head == f"**Covered on XLA: {xla} / {len(table)}. Covered on ONNX: {onnx} / {len(table)}.**"
    assert all(r["xla_test"] for r in table if r["xla_covered"])
    assert all(r["onnx_test"] for r in table if r["onnx_covered"])


def test_unexplained_primitives_are_reported():
    """The check can fail: a primitive with no test and no reason is named, and so is a reason
    kept for a primitive that is covered."""
    cov = coverage()
    assert cov._judge(True, "binds the primitive", "", None) == (False, "binds the primitive; no test names it", False)
    assert cov._judge(True, "binds the primitive", "", "why") == (False, "not covered: why", True)
    assert cov._judge(True, "binds the primitive", "tests/x.py", None) == (True, "binds the primitive", True)
    row = dict(next(r for r in cov.rows() if r["name"] == "lgamma"))  # coverage: names only
    row.update(explained=False, xla="binds the primitive; no test names it")
    assert cov.unexplained([row]) == [f"lgamma (XLA: binds the primitive; no test names it; ONNX: {row['onnx']})"]  # coverage: names only
    cov.XLA_REASONS["lgamma"] = "a stale reason"  # coverage: names only
    try:
        assert cov.stale_reasons([row]) == ["lgamma is covered on XLA but has a reason in tools/coverage.py"]  # coverage: names only
    finally:
        del cov.XLA_REASONS["lgamma"]  # coverage: names only


# -- XLA: programs binding primitives no model test reaches ---------------------------------------------

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4)).astype(np.float32)
P = (np.abs(X) + 0.5).astype(np.float32)  # positive
I = RNG.integers(-50, 50, (3, 4)).astype(np.int32)
U = RNG.integers(0, 2**32, (3, 4), dtype=np.uint64).astype(np.uint32)
B = X > 0
UI = U.view(np.int32)
SPD = (X.T @ X + 4 * np.eye(4)).astype(np.float32)


def _custom_vjp_sin(x):
    @jax.custom_vjp
    def f(y):
        return jnp.sin(y)
    f.defvjp(lambda y: (jnp.sin(y), y), lambda r, g: (g * jnp.cos(r),))
    return f(x)


def _pool(y):
    return lax.reduce_window(y, -jnp.inf, lax.max, (2, 2), (1, 1), "VALID")


XLA_SAMPLES = {
    # basic arithmetic, shapes and control flow (each also reached by model tests)
    "add": (lax.add, X, P), "sub": (lax.sub, X, P), "mul": (lax.mul, X, P), "div": (lax.div, X, P),
    "neg": (lax.neg, X), "abs": (lax.abs, X), "exp": (lax.exp, X), "log": (lax.log, P), "sqrt": (lax.sqrt, P),
    "rsqrt": (lax.rsqrt, P), "tanh": (lax.tanh, X), "logistic": (lax.logistic, X), "sin": (lax.sin, X),
    "cos": (lax.cos, X), "square": (lax.square, X), "integer_pow": (lambda x: lax.integer_pow(x, 3), X),
    "expm1": (lax.expm1, X), "log1p": (lax.log1p, P), "cbrt": (lax.cbrt, X), "is_finite": (lax.is_finite, X),
    "erf": (lax.erf, X), "max": (lax.max, X, P), "min": (lax.min, X, P), "select_n": (lax.select_n, B, X, P),
    "convert_element_type": (lambda x: lax.convert_element_type(x * 9, jnp.int8), X),
    "bitcast_convert_type": (lambda x: lax.bitcast_convert_type(x, jnp.int32), X),
    "shift_right_logical": (lambda u: lax.shift_right_logical(u, u % 40), U),
    "broadcast_in_dim": (lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)), X),
    "reshape": (lambda x: lax.reshape(x, (4, 3)), X), "transpose": (lambda x: lax.transpose(x, (1, 0)), X),
    "concatenate": (lambda x, p: lax.concatenate([x, p], 0), X, P), "iota": (lambda x: x + lax.iota(jnp.float32, 4), X),
    "pad": (lambda x: lax.pad(x, 0.5, ((1, 0, 1), (0, 2, 0))), X), "slice": (lambda x: lax.slice(x, (1, 0), (3, 4), (1, 2)), X),
    "gather": (lambda x, i: x[jnp.abs(i[0]) % 3], X, I), "scatter": (lambda x: x.at[jnp.array([2, 0])].set(7.0), X),
    "dot_general": (lambda x, p: jnp.einsum("ij,kj->ik", x, p), X, P),
    "conv_general_dilated": (lambda x, p: lax.conv_general_dilated(x[None, None], p[None, None, :2, :2], (1, 1), "SAME"), X, P),
    "reduce_sum": (lambda x: lax.reduce_sum(x, (1,)), X), "reduce_max": (lambda x: lax.reduce_max(x, (0,)), X),
    "reduce_min": (lambda x: lax.reduce_min(x, (0, 1)), X), "reduce_prod": (lambda x: lax.reduce_prod(x, (1,)), X),
    "argmax": (lambda x: jnp.argmax(x, 0), X), "cumsum": (lambda x: lax.cumsum(x, 1), X),
    "cumprod": (lambda x: lax.cumprod(x, 0), X), "sort": (lambda x: lax.sort(x, dimension=1), X),
    "reduce": (lambda x: lax.reduce(x, np.float32(0.5), lambda a, v: a * 0.5 + v, (1,)), X),
    "reduce_window": (lambda x: lax.reduce_window(x, np.float32(0.5), lambda a, v: a * 0.5 + v, (2, 2), (1, 1), "SAME"), X),
    "eq_to": (lambda x: jnp.searchsorted(jnp.sort(x[0] + 1j * x[1]), x[2] + 1j * x[0], method="scan"), X),
    "lt_to": (lambda x: jnp.searchsorted(jnp.sort(x[0]), x[1], method="compare_all"), X),
    "stop_gradient": (lambda x: lax.stop_gradient(x) * 2, X),
    "cond": (lambda x: lax.cond(x[0, 0] > 0, jnp.sin, jnp.cos, x), X),
    "while": (lambda x: lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2 + 1), (0, x))[1], X),
    "scan": (lambda x: lax.scan(lambda c, y: (c + y, c * y), x[0], x)[1], X),
    "custom_jvp_call": (jax.nn.relu, X), "jit": (lambda x: jax.jit(jnp.sin)(x), X),
    "random_seed": (lambda x: jax.random.key_data(jax.random.key(11)), X),
    "random_bits": (lambda x: jax.random.bits(jax.random.key(3), (3, 4)), X),
    "threefry2x32": (lambda u: jax.extend.random.threefry_2x32(u[0, :2], u[1]), U),
    "random_wrap": (lambda u: jax.random.key_data(jax.random.wrap_key_data(u[0, :2])), U),
    "random_unwrap": (lambda x: jax.random.key_data(jax.random.key(4)), X),
    # elementwise math
    "acos": (lambda x: lax.acos(x / 4), X), "acosh": (lambda p: lax.acosh(p + 1), P),
    "asin": (lambda x: lax.asin(x / 4), X), "asinh": (lax.asinh, X), "atan": (lax.atan, X),
    "atanh": (lambda x: lax.atanh(x / 4), X), "atan2": (lax.atan2, X, P), "cosh": (lax.cosh, X),
    "sinh": (lax.sinh, X), "tan": (lax.tan, X), "ceil": (lax.ceil, X), "floor": (lax.floor, X),
    "round": (lambda x: lax.round(x * 3), X), "sign": (lax.sign, X), "erfc": (lax.erfc, X),
    "erf_inv": (lambda x: lax.erf_inv(jnp.tanh(x)), X), "exp2": (lax.exp2, X),
    "pow": (lax.pow, P, X), "rem": (lax.rem, X, P), "nextafter": (lax.nextafter, X, P),
    "clamp": (lambda x: lax.clamp(-0.5, x, 0.5), X),
    "eq": (lax.eq, X, P), "ne": (lax.ne, X, P), "lt": (lax.lt, X, P), "le": (lax.le, X, P),
    "gt": (lax.gt, X, P), "ge": (lax.ge, X, P),
    "le_to": (lambda x: jnp.searchsorted(jnp.sort(x.ravel()), x.ravel()), X),
    "lgamma": (lax.lgamma, X), "digamma": (lax.digamma, X), "bessel_i0e": (lax.bessel_i0e, X),
    "bessel_i1e": (lax.bessel_i1e, X), "igamma": (lambda p: lax.igamma(p, p + 1), P), "igammac": (lambda p: lax.igammac(p, p + 1), P),
    "igamma_grad_a": (lambda p: lax.igamma_grad_a(p, p + 1), P), "polygamma": (lambda p: lax.polygamma(jnp.ones_like(p), p), P),
    "zeta": (lambda p: lax.zeta(p + 1, p), P),
    "regularized_incomplete_beta": (lambda p: lax.betainc(p, p + 1, p / (p + 2)), P),
    "reduce_precision": (lambda x: lax.reduce_precision(x, 5, 10), X),
    # integers and bits
    "and": (lax.bitwise_and, I, UI), "or": (lambda i: lax.bitwise_or(i, i + 3), I),
    "xor": (lambda u: lax.bitwise_xor(u, u >> 3), U),
    "not": (lax.bitwise_not, I), "shift_left": (lambda u: lax.shift_left(u, u % 40), U),
    "shift_right_arithmetic": (lambda i: lax.shift_right_arithmetic(i, i % 40), I),
    "clz": (lax.clz, U), "population_count": (lax.population_count, U),
    # reductions, cumulative ops, pooling
    "argmin": (lambda x: jnp.argmin(x, 1), X), "reduce_and": (lambda b: lax.reduce_and(b, (1,)), B),
    "reduce_or": (lambda b: lax.reduce_or(b, (0,)), B), "reduce_xor": (lambda b: lax.reduce_xor(b, (1,)), B),
    "cummax": (lambda x: lax.cummax(x, 1), X), "cummin": (lambda x: lax.cummin(x, 0, reverse=True), X),
    "cumlogsumexp": (lambda x: lax.cumlogsumexp(x, 1), X),
    "reduce_window_max": (_pool, X), "reduce_window_min": (lambda y: lax.reduce_window(y, jnp.inf, lax.min, (2, 2), (1, 2), "SAME"), X),
    "reduce_window_sum": (lambda y: lax.reduce_window(y, 0.0, lax.add, (2, 2), (1, 1), "VALID"), X),
    "top_k": (lambda x: lax.top_k(x, 2), X), "approx_top_k": (lambda x: lax.approx_max_k(x, 2), X),
    # shapes and indexing
    "rev": (lambda x: lax.rev(x, (1,)), X), "squeeze": (lambda x: lax.squeeze(x[:1], (0,)), X),
    "tile": (lambda x: jnp.tile(x, (2, 1)), X), "stack": (lambda x: jnp.stack([x, -x]), X),
    "unstack": (lambda x: jnp.unstack(x), X), "split": (lambda x: lax.split(x, (1, 3), axis=1), X),
    "dynamic_slice": (lambda x, i: lax.dynamic_slice(x, (i[0, 0] % 3, 1), (2, 2)), X, I),
    "dynamic_update_slice": (lambda x, i: lax.dynamic_update_slice(x, -x[:2, :2], (i[0, 1] % 2, 1)), X, I),
    "scatter-add": (lambda x: x.at[jnp.array([0, 2, 0])].add(1.5), X),
    "scatter-mul": (lambda x: x.at[jnp.array([0, 2, 0])].multiply(1.5), X),
    "scatter-min": (lambda x: x.at[jnp.array([0, 2, 0])].min(0.1), X),
    "scatter-max": (lambda x: x.at[jnp.array([0, 2, 0])].max(0.1), X),
    # linear algebra (the same LAPACK calls on both sides)
    "cholesky": (lambda a: jnp.linalg.cholesky(a), SPD), "platform_index": (jnp.linalg.det, SPD), "eigh": (lambda a: jnp.linalg.eigh(a)[0], SPD),
    "eig": (lambda a: jnp.abs(jnp.linalg.eigvals(a)), SPD), "qr": (lambda a: jnp.linalg.qr(a)[1], SPD),
    "svd": (lambda a: jnp.linalg.svd(a, compute_uv=False), SPD), "lu": (lambda a: lax.linalg.lu(a)[0], SPD),
    "lu_pivots_to_permutation": (lambda i: lax.linalg.lu_pivots_to_permutation(jnp.abs(i[0, :3]) % 5, 5), I),
    "triangular_solve": (lambda a: lax.linalg.triangular_solve(a, a[:, :2], left_side=True, lower=True), SPD),
    "schur": (lambda a: lax.linalg.schur(a)[0], SPD), "hessenberg": (lambda a: lax.linalg.hessenberg(a)[0], SPD),
    "householder_product": (lambda a: lax.linalg.householder_product(a[:, :3], a[0, :3] / 10), SPD),
    "tridiagonal": (lambda a: lax.linalg.tridiagonal(a)[1], SPD),
    "tridiagonal_solve": (lambda a: lax.linalg.tridiagonal_solve(a[0] * 0, a[1] + 5, a[2] * 0.1, a[:, :1]), SPD),
    "symmetric_product": (lambda a: lax.linalg.symmetric_product(a[:3], a[:3, :3]), SPD),
    "cholesky_update": (lambda a: lax.linalg.cholesky_update(jnp.linalg.cholesky(a), a[0] / 10), SPD),
    "ormqr": (lambda a: lax.linalg.ormqr(a[:, :3], a[0, :3] / 10, a), SPD),
    # complex numbers
    "complex": (lambda x, p: jnp.abs(lax.complex(x, p)), X, P), "real": (lambda x: lax.real(x * 1j + 2), X),
    "imag": (lambda x: lax.imag(x * 1j + 2), X), "conj": (lambda x: lax.conj(x * 1j + 2).imag, X),
    # random numbers
    "random_split": (lambda x: jax.random.key_data(jax.random.split(jax.random.key(3), 4)), X),
    "random_fold_in": (lambda x: jax.random.key_data(jax.random.fold_in(jax.random.key(3), 7)), X),
    "random_gamma": (lambda p: jax.random.gamma(jax.random.key(2), p), P),
    "rng_bit_generator": (lambda x: lax.rng_bit_generator(jnp.arange(4, dtype=jnp.uint32), (3, 4))[1], X),
    "random_clone": (lambda x: jax.random.key_data(jax.random.clone(jax.random.key(5))), X),
    "iota_2x32_shape": (lambda x: jax._src.random.prng.iota_2x32_shape((3, 4))[1], X),  # jax.random's own helper
    # calls, transforms and annotations
    "remat2": (lambda x: jax.checkpoint(jnp.sin)(x), X), "name": (lambda x: checkpoint_name(jnp.sin(x), "f"), X), "custom_vjp_call": (_custom_vjp_sin, X),
    "copy": (lambda x: jnp.array(x, copy=True) * 2, X),
    "optimization_barrier": (lambda x: lax.optimization_barrier(x) * 2, X),
}

def _jaxpr_primitives(jaxpr, acc: set) -> set:
    for eqn in jaxpr.eqns:
        acc.add(eqn.primitive.name)
        for p in eqn.params.values():
            for q in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(q, "jaxpr", q)
                if hasattr(inner, "eqns"):
                    _jaxpr_primitives(inner, acc)
    return acc


ARGS = {"X": X, "P": P, "I": I, "U": U, "UI": UI, "B": B, "SPD": SPD}


def _arg_names(args) -> list[str]:
    return [next(k for k, v in ARGS.items() if v is a) for a in args]


def test_xla_samples_bind_their_primitive():
    for name, (fn, *args) in XLA_SAMPLES.items():
        assert name in _jaxpr_primitives(jax.make_jaxpr(fn)(*args).jaxpr, set()), name


def test_xla_samples_are_bit_exact():
    """All samples in one program (one trace, one compilation), compared output by output."""
    samples = {name: (fn, _arg_names(args)) for name, (fn, *args) in XLA_SAMPLES.items()}

    def everything(*arrays):
        named = dict(zip(ARGS, arrays))
        return {name: fn(*[named[k] for k in keys]) for name, (fn, keys) in samples.items()}
    args = list(ARGS.values())
    got = nnxc.compile(nnxc.trace(everything, *args))(*args)
    want = jax.jit(everything)(*args)
    assert sorted(got) == sorted(want)
    for name in sorted(want):
        g, w = jax.tree_util.tree_leaves(got[name]), jax.tree_util.tree_leaves(want[name])
        assert len(g) == len(w), name
        for gg, ww in zip(g, w):
            gg, ww = np.asarray(gg), np.asarray(ww)
            assert (gg.dtype, gg.shape) == (ww.dtype, ww.shape), name
            np.testing.assert_array_equal(gg, ww, err_msg=name)


def test_xla_rng_uniform():
    """XLA's stateful generator: a draw in [a, b) of the requested shape and dtype."""
    fn = lambda a: (lax.rng_uniform(a, a + 3.0, (1000,)), lax.rng_uniform(0, 7, (500,)))  # noqa: E731
    f, i = nnxc.compile(nnxc.trace(fn, np.float32(1.0)))(np.float32(1.0))
    f, i = np.asarray(f), np.asarray(i)
    assert f.dtype == np.float32 and f.shape == (1000,) and f.min() >= 1 and f.max() < 4 and f.std() > 0.5
    assert i.dtype == np.int32 and set(np.unique(i)) == set(range(7))
