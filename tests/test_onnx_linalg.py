"""ONNX lowerings of the linear algebra primitives (nnxc/backends/onnx/linalg.py): programs
are traced with nnxc, exported (the full ONNX checker runs on every export), run in
onnxruntime and compared with ``jax.jit`` of the same function -- at two sizes of the batch
dim ``B`` where the program has one.

Tolerance (f32): ``rtol=1e-4`` and ``atol=1e-5 * max|reference|`` per output: LAPACK and the
unrolled algorithms round differently (measured: ~1e-6 of each output's scale, eigenvectors
~1e-5). Integer outputs (lu pivots and permutations) must be equal. Eigenvectors are compared
up to the sign of each one (LAPACK's sign is arbitrary). Inputs are well conditioned
(condition number <= 8, or a + a^T + n I for positive definite ones).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session

RTOL, ATOL = 1e-4, 1e-5


def _close(got, want, name, rtol=RTOL, atol=ATOL):
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    finite = want[np.isfinite(want)]
    scale = max(float(np.max(np.abs(finite))) if finite.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=name)


def check(fn, specs, *calls, opset=None, fix=None, op=None):
    """Trace ``fn`` on ``specs``, export, and compare onnxruntime with ``jax.jit(fn)`` on each
    argument tuple in ``calls``. ``fix(name, got, want)`` may adjust a pair first (signs);
    ``op``: the primitive the traced graph must hold."""
    graph = nnxc.trace(fn, *specs)
    assert op is None or any(n.op == op for n in graph.walk()), graph.text()
    model = export_onnx(graph, opset=opset)
    session = onnx_session(model)
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    reference = jax.jit(fn)
    for args in calls:
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(reference(*args))]
        got = session.run(None, dict(zip(names, args)))
        assert len(got) == len(want)
        for name, g, w in zip(outs, got, want):
            if fix is not None:
                g = fix(name, g, w)
            _close(g, w, name)
    return model


def well_conditioned(rng, *shape, lo=1.0, hi=8.0):
    """U diag(s) V^T with s in [lo, hi]: condition number <= hi/lo, entries of mixed sign
    (so partial pivoting swaps rows)."""
    *batch, m, n = shape
    u, _ = np.linalg.qr(rng.standard_normal((*batch, m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((*batch, n, n)))
    s = np.zeros((*batch, m, n))
    k = min(m, n)
    idx = np.arange(k)
    s[..., idx, idx] = rng.uniform(lo, hi, (*batch, k))
    return (u @ s @ np.swapaxes(v, -1, -2)).astype(np.float32)


def spd(rng, *shape):
    a = rng.standard_normal(shape)
    n = shape[-1]
    return (a @ np.swapaxes(a, -1, -2) / n + np.eye(n)).astype(np.float32)


def symmetric_with_gaps(rng, *shape):
    """Q diag(w) Q^T with eigenvalues at least 0.5 apart (eigenvectors well defined)."""
    *batch, n, _ = shape
    q, _ = np.linalg.qr(rng.standard_normal((*batch, n, n)))
    w = np.sort(rng.uniform(-1, 1, (*batch, n)), axis=-1) + 0.5 * np.arange(n) - 0.25 * n
    return ((q * w[..., None, :]) @ np.swapaxes(q, -1, -2)).astype(np.float32)


# -- cholesky, triangular_solve ---------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 8])
def test_cholesky_batched(n):
    rng = np.random.default_rng(n)
    check(jnp.linalg.cholesky, [f"f32[B,{n},{n}]"], (spd(rng, 1, n, n),), (spd(rng, 3, n, n),))


def test_cholesky_reads_the_lower_triangle_and_fails_with_nan():
    rng = np.random.default_rng(1)
    a = spd(rng, 3, 5, 5)
    a[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] = 1e3  # never read
    a[1] = -a[1]  # not positive definite: all NaN, like LAPACK's failure in JAX
    f = lambda a: lax.linalg.cholesky(a, symmetrize_input=False)  # noqa: E731
    check(f, ["f32[3,5,5]"], (a,))
    got = onnx_session(export_onnx(nnxc.trace(f, "f32[3,5,5]"))).run(None, {"a": a})[0]
    assert np.isnan(got[1][np.tril_indices(5)]).all() and np.isfinite(got[[0, 2]]).all()


def _triangular(rng, batch, m):
    """Lower and upper triangles that are well conditioned, and a large junk value on both
    sides: only the triangle the attributes name may be read."""
    a = rng.standard_normal((*batch, m, m)).astype(np.float32) * 0.3
    a[..., np.arange(m), np.arange(m)] = rng.uniform(1, 2, (*batch, m)) * rng.choice([-1, 1], (*batch, m))
    return a


def test_triangular_solve_every_attribute_combination():
    def f(a, bl, br):
        out = {}
        for left in (True, False):
            for lower in (True, False):
                for trans in (False, True):
                    for conj in (False, True):
                        for unit in (False, True):
                            key = f"l{int(left)}lo{int(lower)}t{int(trans)}c{int(conj)}u{int(unit)}"
                            out[key] = lax.linalg.triangular_solve(
                                a, bl if left else br, left_side=left, lower=lower,
                                transpose_a=trans, conjugate_a=conj, unit_diagonal=unit)
        return out
    rng = np.random.default_rng(2)
    calls = []
    for b in (1, 3):
        a = _triangular(rng, (b,), 5)
        calls.append((a, rng.standard_normal((b, 5, 3)).astype(np.float32),
                      rng.standard_normal((b, 3, 5)).astype(np.float32)))
    check(f, ["f32[B,5,5]", "f32[B,5,3]", "f32[B,3,5]"], *calls)


def test_triangular_solve_does_not_read_the_other_triangle():
    rng = np.random.default_rng(3)
    a = _triangular(rng, (), 6)
    junk = a.copy()
    iu = np.triu_indices(6, 1)
    junk[iu] = np.nan  # lower=True must never look above the diagonal
    junk[np.arange(6), np.arange(6)] = a[np.arange(6), np.arange(6)]
    b = rng.standard_normal((6, 2)).astype(np.float32)
    f = lambda a, b: lax.linalg.triangular_solve(a, b, left_side=True, lower=True)  # noqa: E731
    got = onnx_session(export_onnx(nnxc.trace(f, "f32[6,6]", "f32[6,2]"))).run(None, {"a": junk, "b": b})[0]
    _close(got, np.asarray(jax.jit(f)(np.tril(a), b)), "triangular_solve")


# -- lu and what jnp.linalg builds on it ------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6), (1, 1), (7, 7)])
def test_lu_with_pivoting(shape):
    rng = np.random.default_rng(sum(shape))
    check(lax.linalg.lu, [f"f32[B,{shape[0]},{shape[1]}]"],
          (well_conditioned(rng, 1, *shape),), (well_conditioned(rng, 3, *shape),))


def test_lu_pivots_swap_rows():
    """The inputs do pivot (so the test would see a rule that does not)."""
    rng = np.random.default_rng(5)
    a = well_conditioned(rng, 3, 6, 6)
    _, pivots, _ = jax.jit(lax.linalg.lu)(a)
    assert (np.asarray(pivots) != np.arange(6)).any()


def test_lu_of_singular_matrices():
    a = np.stack([np.zeros((3, 3)), [[1, 2, 3], [2, 4, 6], [1, 0, 1]], [[0, 0, 1], [0, 0, 2], [0, 0, 3]]]).astype(np.float32)
    check(lax.linalg.lu, ["f32[3,3,3]"], (a,))


def test_lu_pivots_to_permutation():
    rng = np.random.default_rng(6)
    calls = [(np.stack([rng.integers(np.arange(5), 7) for _ in range(b)]).astype(np.int32),) for b in (1, 3)]
    check(lambda p: lax.linalg.lu_pivots_to_permutation(p, 7), ["i32[B,5]"], *calls, op="lu_pivots_to_permutation")


def test_solve_inv_det_slogdet():
    def f(a, b, v):
        sign, logdet = jnp.linalg.slogdet(a)
        return {"solve": jnp.linalg.solve(a, b), "solve_vec": jnp.linalg.solve(a[0], v),
                "inv": jnp.linalg.inv(a), "det": jnp.linalg.det(a), "sign": sign, "logdet": logdet}
    rng = np.random.default_rng(7)
    calls = [(well_conditioned(rng, b, 5, 5), rng.standard_normal((b, 5, 2)).astype(np.float32),
              rng.standard_normal(5).astype(np.float32)) for b in (1, 3)]
    check(f, ["f32[B,5,5]", "f32[B,5,2]", "f32[5]"], *calls)


def test_det_of_a_singular_matrix_is_zero():
    a = np.asarray([[[1, 2, 3], [2, 4, 6], [1, 0, 1]], [[2, 0, 0], [0, 3, 0], [0, 0, -1]]], np.float32)
    check(lambda a: (jnp.linalg.det(a), *jnp.linalg.slogdet(a)), ["f32[2,3,3]"], (a,))


# -- qr, householder_product --------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
@pytest.mark.parametrize("mode", ["reduced", "complete"])
def test_qr(shape, mode):
    rng = np.random.default_rng(sum(shape))
    check(lambda a: jnp.linalg.qr(a, mode=mode), [f"f32[B,{shape[0]},{shape[1]}]"],
          (well_conditioned(rng, 1, *shape),), (well_conditioned(rng, 3, *shape),))


def test_geqrf_and_householder_product():
    from jax._src.lax.linalg import geqrf  # not in jax.lax.linalg's public names

    def f(a, t):
        r, taus = geqrf(a)
        return {"r": r, "taus": taus, "q": lax.linalg.householder_product(a, t)}
    rng = np.random.default_rng(8)
    calls = [(well_conditioned(rng, b, 6, 4), rng.uniform(0, 2, (b, 3)).astype(np.float32)) for b in (1, 3)]
    check(f, ["f32[B,6,4]", "f32[B,3]"], *calls)


@pytest.mark.parametrize("m, n, k", [(6, 4, 3), (5, 5, 5), (4, 4, 2), (7, 3, 1)])
def test_householder_product(m, n, k):
    """The first n columns of H_0 ... H_{k-1}, H_i = I - tau_i v_i v_i^T with v_i below the
    diagonal of column i (a 1 on it); any taus, not only geqrf's."""
    rng = np.random.default_rng(m * 10 + n + k)
    calls = [(rng.standard_normal((b, m, n)).astype(np.float32), rng.uniform(0, 2, (b, k)).astype(np.float32))
             for b in (1, 3)]
    check(lax.linalg.householder_product, [f"f32[B,{m},{n}]", f"f32[B,{k}]"], *calls, op="householder_product")


# -- tridiagonal, tridiagonal_solve ------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("lower", [True, False])
def test_tridiagonal(n, lower):
    """sytd2's reflectors, d, e and taus; the other triangle is never read (here junk) and comes
    back as it was. Measured: within 4e-6 of each output's scale at 8x8 (4e-5 at 32x32) in f32."""
    rng = np.random.default_rng(n + 20 * lower)
    calls = [(rng.standard_normal((b, n, n)).astype(np.float32),) for b in (1, 3)]
    check(lambda a: lax.linalg.tridiagonal(a, lower=lower), [f"f32[B,{n},{n}]"], *calls, op="tridiagonal")


def _tridiagonal_system(rng, batch, m, k, dtype=np.float32):
    dl, d, du = (rng.standard_normal((batch, m)).astype(dtype) for _ in range(3))
    dl[:, 0], du[:, -1] = 0, 0
    return dl, d, du, rng.standard_normal((batch, m, k)).astype(dtype)


@pytest.mark.parametrize("m, k", [(1, 1), (2, 3), (5, 1), (40, 2)])
def test_tridiagonal_solve(m, k):
    """gtsv with its row swaps (the diagonals are not dominant, so some rows swap); measured
    equal to LAPACK's result bit for bit."""
    rng = np.random.default_rng(m + k)
    specs = [f"f32[B,{m}]"] * 3 + [f"f32[B,{m},{k}]"]
    check(lax.linalg.tridiagonal_solve, specs, _tridiagonal_system(rng, 1, m, k), _tridiagonal_system(rng, 3, m, k),
          op="tridiagonal_solve")


def test_tridiagonal_solve_of_a_singular_system_is_nan():
    """A zero pivot is LAPACK's info > 0: JAX returns NaN for that system, the others solve."""
    dl = np.asarray([[0, 1, 1], [0, 1, 2], [0, 0, 0]], np.float32)
    d = np.asarray([[0, 1, 1], [4, 2, 3], [1, 2, 0]], np.float32)
    du = np.asarray([[0, 1, 0], [1, 1, 0], [1, 1, 0]], np.float32)
    rhs = np.ones((3, 3, 2), np.float32)
    want = np.asarray(jax.jit(lax.linalg.tridiagonal_solve)(dl, d, du, rhs))
    assert np.isnan(want[0]).all() and np.isnan(want[2]).all() and np.isfinite(want[1]).all()
    check(lax.linalg.tridiagonal_solve, ["f32[3,3]"] * 3 + ["f32[3,3,2]"], (dl, d, du, rhs))


def test_tridiagonal_f64():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((2, 6, 6))
    system = _tridiagonal_system(rng, 2, 9, 2, np.float64)
    f = lambda a, dl, d, du, b: (lax.linalg.tridiagonal(a), lax.linalg.tridiagonal_solve(dl, d, du, b))  # noqa: E731
    with jax.enable_x64(True):
        got = onnx_session(export_onnx(nnxc.trace(f, a, *system))).run(None, dict(zip(["a", "dl", "d", "du", "b"],
                                                                                       (a, *system))))
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jax.jit(f)(a, *system))]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * max(np.abs(w).max(), 1))


# -- eigh ---------------------------------------------------------------------------------------

def _signs(name, got, want):
    """Eigenvectors (rank >= 2 outputs) flipped to the reference's sign, column by column."""
    if got.ndim < 2:
        return got
    s = np.sign(np.sum(got * want, axis=-2, keepdims=True))
    return got * np.where(s == 0, 1, s)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_eigh(n):
    rng = np.random.default_rng(n)
    check(jnp.linalg.eigh, [f"f32[B,{n},{n}]"], (symmetric_with_gaps(rng, 1, n, n),),
          (symmetric_with_gaps(rng, 3, n, n),), fix=_signs)


def test_eigh_reads_the_named_triangle():
    rng = np.random.default_rng(9)
    a = symmetric_with_gaps(rng, 2, 6, 6)
    for lower in (True, False):
        junk = a.copy()
        i, j = np.triu_indices(6, 1) if lower else np.tril_indices(6, -1)
        junk[..., i, j] = 1e3
        f = lambda a: lax.linalg.eigh(a, lower=lower, symmetrize_input=False)  # noqa: E731, B023
        got = onnx_session(export_onnx(nnxc.trace(f, "f32[2,6,6]"))).run(None, {"a": junk})
        want = [np.asarray(w) for w in jax.jit(jnp.linalg.eigh)(a)]
        _close(got[1], want[0], "eigenvalues")
        _close(_signs("v", got[0], want[1]), want[1], "eigenvectors")


def test_eigh_subset_by_index():
    """JAX has no CPU kernel for subset_by_index: compared with the full eigh, sliced."""
    rng = np.random.default_rng(10)
    a = symmetric_with_gaps(rng, 2, 5, 5)
    f = lambda a: lax.linalg.eigh(a, subset_by_index=(1, 4))  # noqa: E731
    v, w = onnx_session(export_onnx(nnxc.trace(f, "f32[2,5,5]"))).run(None, {"a": a})
    vw, ww = (np.asarray(x) for x in jax.jit(lambda a: lax.linalg.eigh(a))(a))
    _close(w, ww[..., 1:4], "eigenvalues")
    _close(_signs("v", v, vw[..., 1:4]), vw[..., 1:4], "eigenvectors")


# -- the largest size, and refusals ---------------------------------------------------------

def test_32x32():
    rng = np.random.default_rng(11)
    def f(a, s, h):
        lu, piv, perm = lax.linalg.lu(a)
        return {"lu": lu, "piv": piv, "perm": perm, "chol": jnp.linalg.cholesky(s),
                "solve": jnp.linalg.solve(a, s[..., :3]), "qr": jnp.linalg.qr(a)[1],
                "eigvalsh": jnp.linalg.eigvalsh(h)}
    check(f, ["f32[32,32]"] * 3, (well_conditioned(rng, 32, 32), spd(rng, 32, 32), symmetric_with_gaps(rng, 32, 32)))


@pytest.mark.parametrize("fn, spec, words", [
    (jnp.linalg.cholesky, "f32[33,33]", ["cholesky", "33x33", "up to 32x32"]),
    (lax.linalg.lu, "f32[4,40]", ["lu", "4x40"]),
    (jnp.linalg.inv, "f32[N,N]", ["lu", "NxN", "must be static"]),
    (jnp.linalg.eigh, "f32[B,64,64]", ["eigh", "64x64"]),
    (lambda a: jnp.linalg.eig(a)[0].real, "f32[4,4]", ["eig", "non-symmetric"]),
    (lambda a: lax.linalg.schur(a)[0], "f32[4,4]", ["schur"]),
    (lambda a: lax.linalg.hessenberg(a)[0], "f32[4,4]", ["hessenberg"]),
    (lambda a: jnp.linalg.svd(a)[1], "f32[4,4]", ["svd"]),
    (lambda a: lax.linalg.qr(a, pivoting=True)[1], "f32[4,4]", ["pivoting"]),
    (lambda a: lax.linalg.tridiagonal(a)[0], "f32[40,40]", ["tridiagonal", "40x40", "up to 32x32"]),
    (lambda d: lax.linalg.tridiagonal_solve(d, d, d, d[:, None], perturb_singular=True), "f32[4]",
     ["tridiagonal_solve", "perturb_singular"]),
    (lambda d: lax.linalg.tridiagonal_solve(d, d, d, d[:, None]), "f32[N]", ["tridiagonal_solve", "symbolic size N"]),
])
def test_refusals_name_the_reason(fn, spec, words):
    try:
        graph = nnxc.trace(fn, spec)
    except Exception as e:  # noqa: BLE001 - a primitive JAX cannot trace on this platform
        pytest.skip(f"JAX does not trace it here: {e}")
    with pytest.raises(nnxc.UnsupportedOpError) as info:
        export_onnx(graph)
    text = str(info.value)
    for word in words:
        assert word in text, (word, text)


def test_f64():
    def f(a, s):
        lu, piv, perm = lax.linalg.lu(a)
        return {"lu": lu, "piv": piv, "perm": perm, "chol": jnp.linalg.cholesky(s),
                "solve": jnp.linalg.solve(a, s), "r": jnp.linalg.qr(a)[1], "w": jnp.linalg.eigvalsh(s)}
    rng = np.random.default_rng(12)
    a, s = well_conditioned(rng, 2, 7, 7).astype(np.float64), spd(rng, 2, 7, 7).astype(np.float64)
    with jax.enable_x64(True):
        got = onnx_session(export_onnx(nnxc.trace(f, a, s))).run(None, {"a": a, "s": s})
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jax.jit(f)(a, s))]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * max(np.abs(w).max(), 1))
