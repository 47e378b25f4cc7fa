"""ONNX lowerings of JAX's special functions, bit counts, rng_uniform and integer reductions
(nnxc/backends/onnx/special.py), compared with ``jax.jit`` of the same function.

Each special function runs on a grid over its domain: small and large arguments, poles and
zeros, negative arguments where defined, +-0, +-inf and NaN. onnxruntime must give NaN exactly
where JAX does, the same infinity where JAX gives one, and elsewhere |onnx - jax| <= tol with
the tolerance stated per function below (f32 unless said):

  lgamma, digamma    1e-5 * max(|jax|, 1): relative, absolute near the zeros (f64: 1e-13)
  polygamma, zeta    2e-5 relative (f64: 1e-13)
  bessel_i0e / i1e   2e-6 relative (f64: 1e-14)
  erf_inv (f64)      1e-13 relative
  igamma, igammac,   1e-5 + 2 eps * cond relative, where cond = |a log x| + x + |lgamma a| is the
  igamma_grad_a,     size of the terms of log(x^a e^-x / Gamma(a)) (an f32 rounding of them is an
  random_gamma_grad  eps * cond relative error of the result, in XLA's evaluation as in this one:
                     at a = x = 1e5 the two legitimately differ by 13%); relative to |1 - jax|
                     where the value is computed as 1 - (the other tail). f64: 1e-12 + 2 eps cond
  betainc            the same, with cond = |lgamma a| + |lgamma b| + |lgamma(a+b)| + |a log x| +
                     |b log1p(-x)|, relative to |1 - jax| where the symmetry I = 1 - I' is used
  f16 / bf16         computed in f32 and rounded once, as XLA: within 2 (f16) / 1 (bf16) units
                     in the last place, plus 1e-3 absolute near the zeros of lgamma / digamma

All tolerances include one unit in the last place of each side's rounding of the result (2 eps
|jax|) and the smallest normal float (subnormal results, which XLA on CPU flushes to zero and
onnxruntime does not, compare as zero). Where a subnormal intermediate was flushed inside XLA,
JAX's own f32 result is off from its f64 result by more than the tolerance; there onnxruntime
must be at least as close to the f64 result (rounded to f32) as JAX's f32 result is.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import pytest
import scipy.special as sps
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.errors import UnsupportedOpError
from nnxc.runtime.onnx_io import onnx_session

RNG = np.random.default_rng(0)
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


def x64(dtype):
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def onnx_run(fn, *args, specs=None, opset=None, more=()):
    """Trace ``fn``, export it, and run onnxruntime on ``args`` (and each tuple in ``more``)."""
    model = export_onnx(nnxc.trace(fn, *(specs or args)), opset=opset)
    session = onnx_session(model)
    names = [i.name for i in session.get_inputs()]
    runs = [session.run(None, dict(zip(names, call))) for call in (args, *more)]
    return runs if more else runs[0]


def jax_f64(fn, *args):
    """JAX's result in f64 on the same (f32) inputs, rounded to f32."""
    with jax.enable_x64(True):
        return np.asarray(jax.jit(fn)(*[np.asarray(a, np.float64) for a in args])).astype(np.float32)


def compare(name, got, want, tol, alt=None, alt_tol=None):
    """NaN exactly where ``want`` is NaN, the same infinities, else |got - want| <= tol (an
    array or a number) + 2 ulp + the smallest normal float; where ``alt`` (JAX in f64) is
    given and JAX's own f32 result is off from it by more than ``alt_tol``, being no further
    from ``alt`` than JAX is passes too. Returns the largest |got - want| / tol (<= 1 passes)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, name
    g, w = got.astype(np.float64), want.astype(np.float64)
    fi = np.finfo(want.dtype)
    with np.errstate(invalid="ignore"):
        tol = np.asarray(tol, np.float64) + 2 * float(fi.eps) * np.nan_to_num(np.abs(w)) + float(fi.tiny)
    tol = np.broadcast_to(tol, w.shape)
    nan = np.isnan(w)
    bad_nan = np.nonzero(np.isnan(g) != nan)[0]
    assert bad_nan.size == 0, f"{name}: NaN mismatch at {bad_nan[:8]}: got {g[bad_nan[:8]]}, want {w[bad_nan[:8]]}"
    inf = np.isinf(w)
    bad_inf = np.nonzero(inf & (g != w))[0]
    assert bad_inf.size == 0, f"{name}: inf mismatch at {bad_inf[:8]}: got {g[bad_inf[:8]]}, want {w[bad_inf[:8]]}"
    fin = ~nan & ~inf
    with np.errstate(invalid="ignore"):
        diff = np.where(fin, np.abs(g - w), 0.0)
    err = np.where(diff == 0, 0.0, diff / np.where(tol > 0, tol, 1e-300))
    if alt is not None:
        a = np.asarray(alt, np.float64)
        at = tol if alt_tol is None else np.broadcast_to(np.asarray(alt_tol, np.float64), w.shape)
        with np.errstate(invalid="ignore"):
            jax_off = ~(np.abs(w - a) <= at + float(fi.tiny))
            err = np.where(jax_off & (np.abs(g - a) <= np.abs(w - a)), 0.0, err)
    bad = np.nonzero(err > 1)[0]
    assert bad.size == 0, (f"{name}: {bad.size} elements out of tolerance, e.g. at {bad[:6]}: "
                           f"got {g[bad[:6]]}, want {w[bad[:6]]}, tol {tol[bad[:6]]}")
    return float(err.max(initial=0.0))


def grid(*axes, dtype=np.float32):
    return [v.ravel() for v in np.meshgrid(*[np.asarray(a, dtype) for a in axes], indexing="ij")]


SPECIALS = [np.inf, -np.inf, np.nan, 0.0, -0.0]


# -- one-argument functions -------------------------------------------------------------------------

def _gamma_points(dtype):
    poles = np.concatenate([[-k + d for d in (-1e-3, -1e-6, 0.0, 1e-6, 1e-3)] for k in range(0, 12)])
    zeros = [1.0, 2.0, 1 - 1e-6, 2 + 1e-6, -2.4570247, -2.7476826, 1.4616321]  # lgamma / digamma zeros
    far = [1e-30, 1e-7, 0.1, 0.5, 100.5, 1e4, 1e10, 1e30, 3e38, -1e5 + 0.5, -3e7 + 0.5, -1e30]
    return np.concatenate([np.linspace(-20, 20, 4001), poles, zeros, far, SPECIALS]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lgamma_digamma(dtype):
    x = _gamma_points(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    with x64(dtype):
        fns = {"lgamma": lax.lgamma, "digamma": lax.digamma, "gammaln": jss.gammaln}
        got = onnx_run(lambda v: {k: f(v) for k, f in fns.items()}, x)
        want = jax.jit(lambda v: {k: f(v) for k, f in fns.items()})(x)
    for (k, w), g in zip(sorted(want.items()), got):
        compare(k, g, w, rtol * np.maximum(np.abs(np.asarray(w, np.float64)), 1.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bessel_i0e_i1e(dtype):
    x = np.concatenate([np.linspace(-50, 50, 2001), [8.0, 8 - 1e-6, 8 + 1e-6, -8.0, 1e-30, 1e-8, 1e3, 1e10,
                                                     3e38, -3e38], SPECIALS]).astype(dtype)
    rtol = 2e-6 if dtype == np.float32 else 1e-14
    with x64(dtype):
        fns = {"i0e": lax.bessel_i0e, "i1e": lax.bessel_i1e, "i0": jss.i0, "i1": jss.i1}
        got = onnx_run(lambda v: {k: f(v) for k, f in fns.items()}, x)
        want = jax.jit(lambda v: {k: f(v) for k, f in fns.items()})(x)
    for (k, w), g in zip(sorted(want.items()), got):
        compare(k, g, w, rtol * np.abs(np.asarray(w, np.float64)))


def test_erf_inv_f64():
    x = np.concatenate([np.linspace(-1, 1, 4001), [1 - 1e-10, -1 + 1e-12, 1 - 2**-53, 1e-300, 0.9, 0.99999,
                                                   1.0, -1.0, 1.5, -2.0], SPECIALS])
    with jax.enable_x64(True):
        got = onnx_run(lambda v: (lax.erf_inv(v), jss.erfinv(v)), x)
        want = jax.jit(lambda v: (lax.erf_inv(v), jss.erfinv(v)))(x)
    for g, w in zip(got, want):
        compare("erf_inv", g, w, 1e-13 * np.abs(np.asarray(w)))
    assert (got[0][x == 1] == np.inf).all() and (got[0][x == -1] == -np.inf).all()


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_low_precision_computed_in_f32(dtype):
    x = _gamma_points(np.float32)
    x = x[(np.abs(x) <= float(jnp.finfo(dtype).max)) | ~np.isfinite(x)].astype(dtype)
    fns = {"lgamma": lax.lgamma, "digamma": lax.digamma, "i0e": lax.bessel_i0e, "i1e": lax.bessel_i1e}
    x = x.astype(np.float32)  # onnxruntime's Python API takes no bf16 arrays: cast inside

    def fn(v):
        out = {k: f(v.astype(dtype)).astype(np.float32) for k, f in fns.items()}
        out["igamma"] = lax.igamma(jnp.abs(v).astype(dtype), (jnp.abs(v) * 0.5 + 1).astype(dtype)).astype(np.float32)
        return out
    got = onnx_run(fn, x)
    want = jax.jit(fn)(x)
    ulp = 2 * 2.0**-10 if dtype == np.float16 else 2.0**-7
    for (k, w), g in zip(sorted(want.items()), got):
        w64 = np.asarray(w, np.float64)
        atol = 1e-3 if k in ("lgamma", "digamma") else 0.0
        compare(k, g, w, 2 * ulp * np.abs(w64) + atol)


# -- zeta and polygamma -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zeta_polygamma(dtype):
    s, q = grid([1, 1 + 1e-3, 1.5, 2, 3, 4.5, 7, 10, 30, 100, 0.5, 0.0, -1, -2, np.inf, np.nan],
                [-3, -2.5, -1, -1e-3, 0, 1e-3, 0.5, 1, 2, 7.5, 100, 1e4, 1e8, np.inf, -np.inf, np.nan], dtype=dtype)
    n, x = grid(np.arange(0, 11), [-3.5, -2, -0.5, -0.25, 0, 1e-3, 0.5, 1, 1.4616321, 2, 7.5, 100, 1e4,
                                   np.inf, -np.inf, np.nan], dtype=dtype)
    n_bad = np.asarray([-1, 1.5, 0.5, -2, np.nan, np.inf], dtype)
    rtol = 2e-5 if dtype == np.float32 else 1e-13
    with x64(dtype):
        fns = (lambda s, q, n, x, nb: (lax.zeta(s, q), jss.zeta(s, q), lax.polygamma(n, x),
                                       jss.polygamma(n.astype(int), x), lax.polygamma(nb, jnp.ones_like(nb))))
        got = onnx_run(fns, s, q, n, x, n_bad)
        want = [np.asarray(w) for w in jax.jit(fns)(s, q, n, x, n_bad)]
    alt = [jax_f64(lax.zeta, s, q)] * 2 + [jax_f64(lax.polygamma, n, x)] * 2 if dtype == np.float32 else [None] * 4
    for name, g, w, a in zip(["zeta", "jss.zeta", "polygamma", "jss.polygamma"], got, want, alt):
        tol = rtol * np.abs(w.astype(np.float64))
        compare(name, g, w, tol, alt=a, alt_tol=None if a is None else rtol * np.abs(a.astype(np.float64)))
    assert np.isnan(got[4]).all() and np.isnan(want[4]).all()  # n must be a natural number


# -- incomplete gamma and beta: loops until convergence ------------------------------------------------

A_POINTS = [0, 1e-30, 1e-6, 0.01, 0.1, 0.5, 1, 1.5, 2, 3.7, 10, 25.5, 100, 1e3, 1e4, 1e5, -1, -0.5, np.inf, np.nan]
X_POINTS = [0, 1e-30, 1e-6, 0.01, 0.1, 0.5, 0.99, 1, 1.01, 2, 3.7, 9.9, 10, 25.5, 99, 101, 1e3, 1.02e3, 1e4,
            1e5, 1e6, -1, np.inf, -np.inf, np.nan]


def _gamma_cond(a, x):
    """|a log x| + |x| + |lgamma(a)| in f64: the size of the terms of log(x^a e^-x / Gamma(a))."""
    with np.errstate(all="ignore"):
        a64, x64_ = np.asarray(a, np.float64), np.asarray(x, np.float64)
        c = np.abs(a64 * np.log(x64_)) + np.abs(x64_) + np.abs(sps.gammaln(a64))
    return np.nan_to_num(c, nan=0.0, posinf=0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_incomplete_gamma(dtype):
    a, x = grid(A_POINTS, X_POINTS, dtype=dtype)
    eps, base = EPS[dtype], (1e-5 if dtype == np.float32 else 1e-12)
    fns = {"igamma": lax.igamma, "igammac": lax.igammac, "igamma_grad_a": lax.igamma_grad_a,
           "random_gamma_grad": lax.random_gamma_grad, "gammainc": jss.gammainc, "gammaincc": jss.gammaincc}
    with x64(dtype):
        got = onnx_run(lambda a, x: {k: f(a, x) for k, f in fns.items()}, a, x)
        want = {k: np.asarray(v) for k, v in jax.jit(lambda a, x: {k: f(a, x) for k, f in fns.items()})(a, x).items()}
    rel = base + 2 * eps * _gamma_cond(a, x)
    series = (x < 1) | (x <= a)  # where P is summed directly (else Q by the continued fraction)
    for (k, w), g in zip(sorted(want.items()), got):
        w64 = w.astype(np.float64)
        if k in ("igamma", "gammainc"):
            scale = np.where(series, np.abs(w64), np.abs(1 - w64))
        elif k in ("igammac", "gammaincc"):
            scale = np.where(series, np.abs(1 - w64), np.abs(w64))
        else:
            scale = np.abs(w64)
        alt = jax_f64(fns[k], a, x) if dtype == np.float32 else None
        compare(k, g, w, rel * scale, alt=alt,
                alt_tol=None if alt is None else rel * np.abs(alt.astype(np.float64)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularized_incomplete_beta(dtype):
    points = [0, 1e-30, 1e-6, 0.1, 0.5, 1, 2, 5, 30, 200, 1e4, np.inf, -1, np.nan]
    a, b, x = grid(points, points, [0, 1e-30, 1e-6, 0.1, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6, 1, 1.5, -0.5, np.nan],
                   dtype=dtype)
    eps, base = EPS[dtype], (1e-5 if dtype == np.float32 else 1e-12)
    with x64(dtype):
        got = onnx_run(lambda a, b, x: (lax.betainc(a, b, x), jss.betainc(a, b, x)), a, b, x)
        want = [np.asarray(w) for w in jax.jit(lambda a, b, x: (lax.betainc(a, b, x), jss.betainc(a, b, x)))(a, b, x)]
    with np.errstate(all="ignore"):
        a64, b64, x64_ = (v.astype(np.float64) for v in (a, b, x))
        cond = (np.abs(sps.gammaln(a64)) + np.abs(sps.gammaln(b64)) + np.abs(sps.gammaln(a64 + b64))
                + np.abs(a64 * np.log(x64_)) + np.abs(b64 * np.log1p(-x64_)))
        direct = x < (a + 1) / (a + b + 2)  # else computed as 1 - I_{1-x}(b, a)
    cond = np.nan_to_num(cond, nan=0.0, posinf=0.0)
    rel = base + 2 * eps * cond
    alt = jax_f64(lax.betainc, a, b, x) if dtype == np.float32 else None
    for name, g, w in zip(["betainc", "jss.betainc"], got, want):
        w64 = w.astype(np.float64)
        tol = rel * np.where(direct, np.abs(w64), np.abs(1 - w64))
        compare(name, g, w, tol, alt=alt,
                alt_tol=None if alt is None else rel * np.where(direct, np.abs(alt), np.abs(1 - alt.astype(np.float64))))


def test_special_loops_symbolic_scalar_and_old_opset():
    """The Loops run on tensors whose size is only known at run time, on scalars, at opset 13."""
    a, x = grid([0.5, 3.0, 40.0], [0.2, 3.0, 60.0, 1e3])
    a, x = a.reshape(3, 4), x.reshape(3, 4)
    fn = lambda a, x: (lax.igamma(a, x), lax.igammac(a, x), lax.betainc(a, a + 1, 1 / (1 + x)), lax.lgamma(a))  # noqa: E731
    def check(name, got, want):  # 1e-4: these points' condition (above) reaches 2e-5
        for g, w in zip(got, want):
            compare(name, g.ravel(), np.asarray(w).ravel(), 1e-4 * np.abs(np.asarray(w, np.float64).ravel()))
    runs = onnx_run(fn, a, x, specs=["f32[B,4]", "f32[B,4]"], more=[(a[:1], x[:1])])
    for got, args in zip(runs, [(a, x), (a[:1], x[:1])]):
        check("symbolic", got, jax.jit(fn)(*args))
    s = (np.asarray(2.5, np.float32), np.asarray(1.5, np.float32))
    check("scalar", onnx_run(fn, *s), jax.jit(fn)(*s))
    check("opset 13", onnx_run(fn, a, x, opset=13), jax.jit(fn)(a, x))


def test_random_gamma_grad_of_samples():
    """jax.random.gamma's reparameterized gradient is lax.random_gamma_grad at the samples."""
    k = jax.random.key(0)
    alpha = np.asarray([0.3, 1.0, 2.5, 10.0, 150.0], np.float32)
    samples = np.asarray(jax.random.gamma(k, alpha, (64, 5)))
    alphas = np.broadcast_to(alpha, samples.shape).copy()
    got = onnx_run(lax.random_gamma_grad, alphas, samples)[0]
    want = np.asarray(jax.jit(lax.random_gamma_grad)(alphas, samples))
    compare("random_gamma_grad", got, want, (1e-5 + 2 * EPS[np.float32] * _gamma_cond(alphas, samples)) * np.abs(want))


# -- bit counting, rng_uniform ---------------------------------------------------------------------------

INT_TYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


def _int_values(dtype, n=200):
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    edges = [0, 1, 2, 3, info.max, info.min, info.max - 1, info.max // 2, info.max // 2 + 1]
    x[:len(edges)] = np.array([int(e) for e in edges], dtype=dtype)
    return x


@pytest.mark.parametrize("dtype", INT_TYPES, ids=lambda d: np.dtype(d).name)
def test_clz_population_count(dtype):
    x = _int_values(dtype)
    with jax.enable_x64(True):
        got = onnx_run(lambda v: (lax.clz(v), lax.population_count(v)), x)
        want = jax.jit(lambda v: (lax.clz(v), lax.population_count(v)))(x)
    for name, g, w in zip(("clz", "population_count"), got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype and np.array_equal(g, w), name


def test_rng_uniform():
    """A fresh draw per run (nothing to compare bit for bit): the range [a, b), the dtype,
    and the moments of a uniform distribution."""
    fn = lambda a, b: (lax.rng_uniform(a, b, (20000,)), lax.rng_uniform(a.astype(jnp.int32), b.astype(jnp.int32), (4, 5000)),  # noqa: E731
                       lax.rng_uniform(a.astype(jnp.float16), b.astype(jnp.float16), (100,)))
    lo, hi = np.asarray(-2.0, np.float32), np.asarray(6.0, np.float32)
    (f, i, h), (f2, _, _) = onnx_run(fn, lo, hi, opset=21, more=[(lo, hi)])
    assert not np.array_equal(f, f2)  # the same session draws again on the next run
    assert (f.dtype, i.dtype, h.dtype, i.shape) == (np.float32, np.int32, np.float16, (4, 5000))
    assert f.min() >= -2 and f.max() < 6 and abs(f.mean() - 2) < 0.06 and abs(f.var() - 64 / 12) < 0.2
    assert set(np.unique(i)) == set(range(-2, 6))  # every integer in [a, b), b excluded
    assert np.abs(np.bincount(i.ravel() + 2) / i.size - 1 / 8).max() < 0.01
    assert h.min() >= -2 and h.max() <= 6
    with pytest.raises(UnsupportedOpError, match="no RandomUniform kernel at opset 24; export with opset=21"):
        export_onnx(nnxc.trace(fn, lo, hi), opset=24)


# -- integer reductions: wrapping and exact, as XLA --------------------------------------------------

def _int_reductions(x):
    t = x.dtype.type
    info = np.iinfo(x.dtype)
    y = x.reshape(3, 4, -1)
    return {
        "sum": lax.reduce(y, t(0), lax.add, (1,)), "sum02": lax.reduce(y, t(0), lax.add, (0, 2)),
        "prod": lax.reduce(y, t(1), lax.mul, (2,)), "prod01": lax.reduce(y, t(1), lax.mul, (0, 1)),
        "max": lax.reduce(y, t(info.min), lax.max, (1,)), "min": lax.reduce(y, t(info.max), lax.min, (0, 2)),
        "argmax": jnp.argmax(y, 2), "argmin": jnp.argmin(y, 1), "cumsum": lax.cumsum(y, 2),
        "cumsum_rev": lax.cumsum(y, 1, reverse=True), "cumprod": lax.cumprod(y, 2),
        "cummax": lax.cummax(y, 1), "cummin": lax.cummin(y, 2, reverse=True),
        "jnp_sum": jnp.sum(y, 1, dtype=x.dtype), "jnp_sum_promoted": jnp.sum(y), "jnp_max": jnp.max(y),
    }


@pytest.mark.parametrize("dtype", INT_TYPES, ids=lambda d: np.dtype(d).name)
def test_integer_reductions_wrap_like_xla(dtype):
    """onnxruntime has no u16/i16/u32/u64 ordering kernels and no u8..u32/u64 sum kernels, and its
    i32/i64 ReduceSum/ReduceProd saturate instead of wrapping and round i64 past 2**53."""
    x = _int_values(dtype, 3 * 4 * 7)
    with jax.enable_x64(True):
        got = onnx_run(lambda v: _int_reductions(v), x)
        want = jax.jit(lambda v: _int_reductions(v))(x)
    for (k, w), g in zip(sorted(want.items()), got):
        w = np.asarray(w)
        assert g.dtype == w.dtype and np.array_equal(g, w), (k, g, w)


def test_integer_sums_exact_past_2_53_and_symbolic():
    with jax.enable_x64(True):
        x = np.asarray([[2**60 + 1, 1, 3], [2**62, 2**62, 2**62]], np.int64)
        got = onnx_run(lambda v: (v.sum(1), v.prod(1), jnp.cumsum(v, 1)), x)
        for g, w in zip(got, jax.jit(lambda v: (v.sum(1), v.prod(1), jnp.cumsum(v, 1)))(x)):
            assert np.array_equal(g, np.asarray(w))
    x = _int_values(np.uint32, 12).reshape(3, 4)
    runs = onnx_run(lambda v: (v.sum(0, dtype=jnp.uint32), v.max(0), v.argmin(0)), x, specs=["u32[B,4]"],
                    more=[(x[:1],)])
    for got, arg in zip(runs, (x, x[:1])):
        for g, w in zip(got, jax.jit(lambda v: (v.sum(0, dtype=jnp.uint32), v.max(0), v.argmin(0)))(arg)):
            assert np.array_equal(g, np.asarray(w))


@pytest.mark.parametrize("dtype", INT_TYPES + [np.bool_], ids=lambda d: np.dtype(d).name)
def test_bitwise_reductions(dtype):
    """reduce_and / or / xor of integers (pairwise Bitwise* ops; ONNX has no such reduction)."""
    x = (RNG.random((3, 5, 2)) < 0.5) if dtype == np.bool_ else _int_values(dtype, 30).reshape(3, 5, 2)
    fn = lambda v: (lax.reduce_and(v, (1,)), lax.reduce_or(v, (0, 2)), lax.reduce_xor(v, (1,)),  # noqa: E731
                    lax.reduce_xor(v, (0, 1, 2)), lax.reduce_and(v[:, :0], (1,)))
    with jax.enable_x64(True):
        got = onnx_run(fn, x)
        want = jax.jit(fn)(x)
    for k, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w)
        assert g.dtype == w.dtype and np.array_equal(g, w), k


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float16])
def test_scatter_sub(dtype):
    x = (RNG.standard_normal((5, 3)) * 10).astype(dtype)
    fn = lambda v: (v.at[jnp.array([0, 2, 0, 4])].subtract(v[:4] * 2), v.at[1:3, 1].subtract(v[0, 1]))  # noqa: E731
    for g, w in zip(onnx_run(fn, x), jax.jit(fn)(x)):
        np.testing.assert_array_equal(g, np.asarray(w))


def test_identity_and_call_primitives():
    """Annotations and calls that keep the value: copy, optimization_barrier, checkpoint_name
    (``name``), jax.checkpoint (``remat2``, inlined), custom_vjp (``custom_vjp_call``, the
    primal inlined), random_clone; and approx_top_k (exact TopK, as XLA on CPU)."""
    from jax.ad_checkpoint import checkpoint_name

    @jax.custom_vjp
    def cube(y):
        return y * y * y
    cube.defvjp(lambda y: (cube(y), y), lambda y, g: (3 * y * y * g,))

    def fn(x):
        return {"copy": jnp.array(x, copy=True) + 1, "optimization_barrier": lax.optimization_barrier(x) * 2,
                "name": checkpoint_name(jnp.sin(x), "features"), "remat2": jax.checkpoint(jnp.tanh)(x),
                "custom_vjp_call": cube(x), "approx_top_k": lax.approx_max_k(x, 3),
                "random_clone": jax.random.key_data(jax.random.clone(jax.random.key(7)))}
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    want = jax.tree_util.tree_flatten_with_path(jax.jit(fn)(x))[0]
    got = onnx_run(fn, x)
    assert len(got) == len(want) == 8
    for g, (path, w) in zip(got, want):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, err_msg=jax.tree_util.keystr(path))
