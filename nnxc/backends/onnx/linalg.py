"""dot_general -> MatMul (or Einsum), conv_general_dilated -> Conv; the linear algebra
primitives (cholesky, triangular_solve, lu, qr, eigh, tridiagonal, ...) unrolled for static
sizes, tridiagonal_solve as ONNX Loops over the rows."""
from __future__ import annotations

import math

import numpy as np

from ...ir.types import to_dtype
from . import reductions
from .shape import INT64_MIN, dim_add, dim_mul, interior_pad, reshape
from .table import Refused, rule


@rule("dot_general")
def _dot_general(b, node, xs):
    """Batch dims first, then [M, K] @ [K, N] with the free and contracting dims merged."""
    (lc, rc), (lb, rb) = node.attrs["dimension_numbers"]
    lt, rt, ot = node.inputs[0].type, node.inputs[1].type, node.outputs[0].type
    x, y = b.cast(xs[0], lt.dtype, ot.dtype), b.cast(xs[1], rt.dtype, ot.dtype)
    lfree = [i for i in range(lt.rank) if i not in lc and i not in lb]
    rfree = [j for j in range(rt.rank) if j not in rc and j not in rb]
    x = b.transpose(x, [*lb, *lfree, *lc])
    y = b.transpose(y, [*rb, *rc, *rfree])
    k = dim_mul(*[lt.shape[i] for i in lc])
    n = dim_mul(*[rt.shape[j] for j in rfree])
    if not lb and isinstance(k, int) and isinstance(n, int):  # x[..., K] @ w[K, N]: no reshape of x
        if len(lc) != 1:
            x = reshape(b, x, [lt.shape[i] for i in lfree] + [k])
        if len(rc) != 1 or len(rfree) != 1:
            y = reshape(b, y, [k] + ([n] if rfree else []))
        out = b.op("MatMul", x, y)
        return out if len(rfree) == 1 else reshape(b, out, ot.shape)
    batch = [lt.shape[i] for i in lb]
    m = dim_mul(*[lt.shape[i] for i in lfree])
    if len(lfree) != 1 or len(lc) != 1:
        x = reshape(b, x, batch + [m, k])
    if len(rfree) != 1 or len(rc) != 1:
        y = reshape(b, y, batch + [k, n])
    out = b.op("MatMul", x, y)
    return out if len(lfree) == 1 and len(rfree) == 1 else reshape(b, out, ot.shape)


@rule("conv_general_dilated")
def _conv(b, node, xs):
    a = node.attrs
    if a.get("batch_group_count", 1) != 1:
        raise Refused("batch_group_count > 1 (a convolution's weight gradient)")
    dn = a["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = (tuple(dn.get(k)) for k in ("lhs_spec", "rhs_spec", "out_spec"))
    lt, ot = node.inputs[0].type, node.outputs[0].type
    if not ot.dtype.startswith("f"):
        raise Refused(f"convolution on {ot.dtype} (onnxruntime convolves floats only)")
    x = b.cast(b.transpose(xs[0], lhs_spec), lt.dtype, ot.dtype)
    w = b.cast(b.transpose(xs[1], rhs_spec), node.inputs[1].type.dtype, ot.dtype)
    rank, nsp = lt.rank, lt.rank - 2
    shape = [lt.shape[i] for i in lhs_spec]
    for i, d in enumerate(a.get("lhs_dilation") or (1,) * nsp):
        if d != 1:  # transposed convolution: spread the input out, then convolve
            x = interior_pad(b, x, shape, 2 + i, d - 1, b.scalar(0, ot.dtype), ot.dtype)
            shape[2 + i] = dim_add(dim_mul(shape[2 + i], d), 1 - d)
    pads = list(a["padding"])
    crop = [(2 + i, lo, hi) for i, (lo, hi) in enumerate(pads) if lo < 0 or hi < 0]
    if crop:
        x = b.slice(x, [-min(lo, 0) for _, lo, _ in crop],
                    [hi if hi < 0 else 2**63 - 1 for _, _, hi in crop], [i for i, _, _ in crop])
    out = b.op("Conv", x, w, strides=list(a["window_strides"]),
               pads=[max(lo, 0) for lo, _ in pads] + [max(hi, 0) for _, hi in pads],
               dilations=list(a.get("rhs_dilation") or (1,) * nsp),
               group=a.get("feature_group_count", 1))
    return b.transpose(out, [out_spec.index(i) for i in range(rank)])


# -- linear algebra: exact decompositions unrolled for static matrix sizes ------------------
#
# LAPACK's algorithms written out step by step in ONNX ops (ONNX has no decompositions): one
# group of nodes per column (cholesky, lu, geqrf, householder_product), per row
# (triangular_solve) or per Jacobi rotation step (eigh). Batch dims (leading axes) may be
# symbolic; the matrix dims must be static and at most MAX_N, so the graph stays bounded
# (at 32x32: cholesky ~500 nodes, lu ~950, qr ~1300, eigh ~9700). Results agree with JAX's
# LAPACK kernels to rounding: within 5e-6 of each output's scale in f32 on well-conditioned
# inputs (tests/test_onnx_linalg.py checks rtol 1e-4, atol 1e-5 of scale); eigenvectors agree
# up to the sign of each one (LAPACK's sign is not a convention anyone can reproduce).

MAX_N = 32
_LINALG_DTYPES = ("f32", "f64")


def _matrix(node, i: int = 0, square: bool = False) -> tuple[int, int, list]:
    """(rows, cols, batch dims) of matrix input ``i``; refuses what nnxc cannot unroll."""
    t = node.inputs[i].type
    if t.dtype not in _LINALG_DTYPES:
        kind = "complex" if t.dtype.startswith("c") else t.dtype
        raise Refused(f"{node.op} on {kind} matrices ({t}): nnxc lowers linear algebra to ONNX "
                      f"for f32 and f64 only")
    m, n = t.shape[-2:]
    if not isinstance(m, int) or not isinstance(n, int):
        raise Refused(f"{node.op} on {t}: the matrix dims ({m}x{n}) must be static, nnxc unrolls "
                      f"the decomposition into ONNX ops (batch dims may be symbolic)")
    if max(m, n) > MAX_N:
        raise Refused(f"{node.op} on a {m}x{n} matrix ({t}): nnxc unrolls it into ONNX ops for "
                      f"matrices up to {MAX_N}x{MAX_N}")
    if square and m != n:
        raise Refused(f"{node.op} on a non-square {m}x{n} matrix")
    return m, n, list(t.shape[:-2])


def _part(b, x: str, r: int, rows=None, cols=None) -> str:
    """``x[..., rows[0]:rows[1], cols[0]:cols[1]]`` for a rank-``r`` tensor."""
    starts, ends, axes = [], [], []
    for rng, axis in ((rows, r - 2), (cols, r - 1)):
        if rng is not None:
            starts.append(rng[0])
            ends.append(rng[1])
            axes.append(axis)
    return b.slice(x, starts, ends, axes)


def _mT(b, x: str, r: int) -> str:
    """Swap the last two axes."""
    return b.transpose(x, [*range(r - 2), r - 1, r - 2])


def _cat(b, parts: list, axis: int) -> str:
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=axis)


def _tri_mask(rows: int, cols: int, k: int, upper: bool) -> np.ndarray:
    """Boolean ``triu(ones, k)`` (upper) or ``tril(ones, k)``."""
    i, j = np.arange(rows)[:, None], np.arange(cols)[None, :]
    return (j - i >= k) if upper else (j - i <= k)


def _rows_mask(n: int, i: int) -> np.ndarray:
    """An [n, 1] boolean column, true at row ``i``."""
    return (np.arange(n) == i).reshape(n, 1)


@rule("cholesky")
def _cholesky(b, node, xs):
    """Left-looking Cholesky of the lower triangle, column by column. Like JAX's LAPACK
    kernel: the upper triangle keeps the input's values, and a matrix that is not positive
    definite (a pivot <= 0 or NaN) becomes all NaN."""
    n, _, _ = _matrix(node, square=True)
    t = node.inputs[0].type
    r, dt = t.rank, t.dtype
    a = xs[0]
    low, ok = None, None  # low: the columns so far, [..., n, j]
    for j in range(n):
        v = _part(b, a, r, rows=(j, n), cols=(j, j + 1))  # [..., n-j, 1]
        if j:
            lj = _part(b, low, r, rows=(j, j + 1))  # [..., 1, j]
            v = b.op("Sub", v, b.op("MatMul", _part(b, low, r, rows=(j, n)), _mT(b, lj, r)))
        d = _part(b, v, r, rows=(0, 1))
        good = b.op("Greater", d, b.scalar(0, dt))  # False for NaN too
        ok = good if ok is None else b.op("And", ok, good)
        sd = b.op("Sqrt", d)
        col = sd if j == n - 1 else b.op("Concat", sd, b.op("Div", _part(b, v, r, rows=(1, n - j)), sd),
                                         axis=r - 2)
        if j:
            col = b.op("Pad", col, b.i64(*[0] * (r - 2), j, 0, *[0] * r))
        low = col if low is None else b.op("Concat", low, col, axis=r - 1)
    out = b.where(b.const(_tri_mask(n, n, 1, upper=True)), a, low, dt)
    return b.where(ok, out, b.scalar(np.nan, dt), dt)


@rule("triangular_solve")
def _triangular_solve(b, node, xs):
    """Substitution row by row on the triangle of ``a`` the attributes name (the other one is
    never read), for every combination of left_side, lower, transpose_a and unit_diagonal
    (conjugate_a is a no-op on real matrices)."""
    attrs = node.attrs
    m, _, _ = _matrix(node, 0, square=True)
    _matrix(node, 1)
    r = node.inputs[1].type.rank
    if node.inputs[0].type.rank != r:
        raise Refused(f"triangular_solve with batch dims {node.inputs[0].type} vs {node.inputs[1].type}")
    left, lower = bool(attrs.get("left_side", False)), bool(attrs.get("lower", False))
    trans, unit = bool(attrs.get("transpose_a", False)), bool(attrs.get("unit_diagonal", False))
    a, c = xs
    if left:  # op(a) x = c
        eff, eff_lower = (_mT(b, a, r) if trans else a), lower != trans
    else:  # x op(a) = c  <=>  op(a)^T x^T = c^T
        eff, eff_lower = (a if trans else _mT(b, a, r)), lower == trans
        c = _mT(b, c, r)
    x = None
    for i in (range(m) if eff_lower else range(m - 1, -1, -1)):
        ri = _part(b, c, r, rows=(i, i + 1))
        if x is not None:
            known = _part(b, eff, r, rows=(i, i + 1), cols=(0, i) if eff_lower else (i + 1, m))
            ri = b.op("Sub", ri, b.op("MatMul", known, x))
        if not unit:
            ri = b.op("Div", ri, _part(b, eff, r, rows=(i, i + 1), cols=(i, i + 1)))
        x = ri if x is None else b.op("Concat", *((x, ri) if eff_lower else (ri, x)), axis=r - 2)
    return x if left else _mT(b, x, r)


def _swap(b, x: str, axis: int, n: int, j: int, p: str, where_dtype: str, index_shape) -> str:
    """Swap entries ``j`` (static) and ``p`` (a tensor broadcasting along ``axis``) of ``x``
    along ``axis`` (n long); ``index_shape``: IR dims of the gathered slice."""
    shape = [1] * (len(index_shape))
    shape[axis] = n
    iota = b.const(np.arange(n, dtype=np.int64).reshape(shape))
    at_j = b.const((np.arange(n) == j).reshape(shape))
    x_p = b.op("GatherElements", x, b.expand(p, index_shape), axis=axis)
    x_j = b.slice(x, [j], [j + 1], [axis])
    x = b.where(b.op("Equal", iota, p), x_j, x, where_dtype)
    return b.where(at_j, x_p, x, where_dtype)


@rule("lu")
def _lu(b, node, xs):
    """LU with partial pivoting as LAPACK's getrf does it: per column, the first row of
    largest magnitude becomes the pivot (whole rows are swapped), the column below it is
    divided by the pivot (left as it is when the pivot is 0, a singular matrix) and the
    trailing block takes the rank-1 update. Outputs lu, pivots and the permutation."""
    m, n, batch = _matrix(node)
    t = node.inputs[0].type
    r, dt = t.rank, t.dtype
    pt = node.outputs[1].type.dtype
    k = min(m, n)
    a = xs[0]
    perm = b.expand(b.const(np.arange(m, dtype=np.int64)), [*batch, m])
    pivots = []
    for j in range(k):
        if j == m - 1:  # the last row: its own pivot
            pivots.append(b.expand(b.const(np.asarray([j], dtype=np.int64)), [*batch, 1]))
            continue
        col = _part(b, a, r, rows=(j, m), cols=(j, j + 1))
        p = b.op("ArgMax", b.op("Abs", col), axis=r - 2, keepdims=1)  # [..., 1, 1], the first max
        if j:
            p = b.op("Add", p, b.scalar(j, "i64"))
        a = _swap(b, a, r - 2, m, j, p, dt, [*batch, 1, n])
        pv = b.squeeze(p, [r - 1])  # [..., 1]
        perm = _swap(b, perm, r - 2, m, j, pv, "i64", [*batch, 1])
        pivots.append(pv)
        piv = _part(b, a, r, rows=(j, j + 1), cols=(j, j + 1))
        below = _part(b, a, r, rows=(j + 1, m), cols=(j, j + 1))
        low = b.where(b.op("Equal", piv, b.scalar(0, dt)), below, b.op("Div", below, piv), dt)
        parts = [_part(b, a, r, rows=(j + 1, m), cols=(0, j))] if j else []
        parts.append(low)
        if j < n - 1:
            trail = _part(b, a, r, rows=(j + 1, m), cols=(j + 1, n))
            urow = _part(b, a, r, rows=(j, j + 1), cols=(j + 1, n))
            parts.append(b.op("Sub", trail, b.op("Mul", low, urow)))
        a = b.op("Concat", _part(b, a, r, rows=(0, j + 1)), _cat(b, parts, r - 1), axis=r - 2)
    piv_out = b.cast(_cat(b, pivots, r - 2), "i64", pt)
    return [a, piv_out, b.cast(perm, "i64", node.outputs[2].type.dtype)]


@rule("lu_pivots_to_permutation")
def _lu_pivots_to_permutation(b, node, xs):
    """Apply the row swaps ``i <-> pivots[i]`` in order to ``arange(permutation_size)``."""
    pt = node.inputs[0].type
    size, k = node.attrs["permutation_size"], pt.shape[-1]
    if not isinstance(k, int) or not isinstance(size, int):
        raise Refused(f"lu_pivots_to_permutation on {pt} (permutation_size={size}): the sizes "
                      f"must be static, nnxc unrolls the swaps")
    if max(k, size) > MAX_N:
        raise Refused(f"lu_pivots_to_permutation of {k} pivots into {size} entries: nnxc unrolls "
                      f"the swaps for up to {MAX_N}")
    batch, r = list(pt.shape[:-1]), pt.rank
    piv = b.cast(xs[0], pt.dtype, "i64")
    perm = b.expand(b.const(np.arange(size, dtype=np.int64)), [*batch, size])
    for j in range(k):
        perm = _swap(b, perm, r - 1, size, j, b.slice(piv, [j], [j + 1], [r - 1]), "i64", [*batch, 1])
    return b.cast(perm, "i64", node.outputs[0].type.dtype)


@rule("platform_index")
def _platform_index(b, node, xs):
    """``lax.platform_dependent`` (jnp.linalg.det picks a Mosaic branch this way): ONNX is
    not a JAX platform, so the default branch, else the CPU one."""
    platforms = list(node.attrs["platforms"])
    pick = next((i for i, ps in enumerate(platforms) if ps is None), None)
    if pick is None:
        pick = next((i for i, ps in enumerate(platforms) if "cpu" in ps), None)
    if pick is None:
        raise Refused(f"platform_dependent with branches for {platforms} only (no default or "
                      f"CPU branch for ONNX to run)")
    return b.scalar(pick, node.outputs[0].type.dtype)


def _reflector(b, alpha: str, rest: str, r: int, dt: str) -> tuple[str, str, str]:
    """LAPACK's dlarfg on the column ``[alpha; rest]`` ([..., 1, 1] and [..., k, 1]): (tau,
    beta, v) with ``H = I - tau [1; v] [1; v]^T`` taking the column to ``[beta; 0]``."""
    ss = b.op("MatMul", _mT(b, rest, r), rest)  # |rest|^2, [..., 1, 1]
    norm = b.op("Sqrt", b.op("Add", b.op("Mul", alpha, alpha), ss))
    sign = b.where(b.op("Less", alpha, b.scalar(0, dt)), b.scalar(1, dt), b.scalar(-1, dt), dt)
    beta = b.op("Mul", sign, norm)  # -sign(alpha) * |x|
    trivial = b.op("Equal", ss, b.scalar(0, dt))  # H = I: tau = 0, the column stays
    tau = b.where(trivial, b.scalar(0, dt), b.op("Div", b.op("Sub", beta, alpha), beta), dt)
    v = b.where(trivial, rest, b.op("Mul", rest, b.op("Div", b.scalar(1, dt), b.op("Sub", alpha, beta))), dt)
    return tau, b.where(trivial, alpha, beta, dt), v


def _geqrf(b, a: str, m: int, n: int, batch: list, r: int, dt: str) -> tuple[str, list]:
    """Householder QR as LAPACK's geqr2/dlarfg: returns R above the diagonal with the
    reflectors' vectors below it, and the taus ([..., 1, 1] each)."""
    taus = []
    for j in range(min(m, n)):
        if j == m - 1:  # a one-element column: H = I
            taus.append(b.expand(b.scalar(0, dt), [*batch, 1, 1]))
            continue
        x = _part(b, a, r, rows=(j, m), cols=(j, j + 1))
        tau, beta, v = _reflector(b, _part(b, x, r, rows=(0, 1)), _part(b, x, r, rows=(1, m - j)), r, dt)
        newcol = b.op("Concat", beta, v, axis=r - 2)
        parts = [_part(b, a, r, rows=(j, m), cols=(0, j))] if j else []
        parts.append(newcol)
        if j < n - 1:  # H = I - tau v v^T on the trailing columns (dlarf)
            trail = _part(b, a, r, rows=(j, m), cols=(j + 1, n))
            vf = b.where(b.const(_rows_mask(m - j, 0)), b.scalar(1, dt), newcol, dt)
            w = b.op("MatMul", _mT(b, vf, r), trail)
            parts.append(b.op("Sub", trail, b.op("Mul", vf, b.op("Mul", tau, w))))
        bottom = _cat(b, parts, r - 1)
        a = b.op("Concat", _part(b, a, r, rows=(0, j)), bottom, axis=r - 2) if j else bottom
        taus.append(tau)
    return a, taus


def _householder_product(b, a: str, taus: list, m: int, cols: int, batch: list, r: int, dt: str) -> str:
    """The first ``cols`` columns of H_0 H_1 ... H_{k-1} (LAPACK's orgqr), accumulated from
    the last reflector back; ``a`` holds the vectors below its diagonal."""
    q = b.expand(b.const(np.eye(m, cols, dtype=to_dtype(dt))), [*batch, m, cols])
    for i in range(len(taus) - 1, -1, -1):
        v = b.where(b.const(_rows_mask(m - i, 0)), b.scalar(1, dt),
                    _part(b, a, r, rows=(i, m), cols=(i, i + 1)), dt)
        qi = _part(b, q, r, rows=(i, m))
        w = b.op("MatMul", _mT(b, v, r), qi)
        qi = b.op("Sub", qi, b.op("Mul", v, b.op("Mul", taus[i], w)))
        q = b.op("Concat", _part(b, q, r, rows=(0, i)), qi, axis=r - 2) if i else qi
    return q


@rule("geqrf")
def _geqrf_rule(b, node, xs):
    m, n, batch = _matrix(node)
    t = node.inputs[0].type
    a, taus = _geqrf(b, xs[0], m, n, batch, t.rank, t.dtype)
    return [a, b.squeeze(_cat(b, taus, t.rank - 1), [t.rank - 2])]


@rule("householder_product")
def _householder_product_rule(b, node, xs):
    m, n, batch = _matrix(node)
    t = node.inputs[0].type
    tt = node.inputs[1].type
    k = tt.shape[-1]
    if not isinstance(k, int) or k > min(m, n):
        raise Refused(f"householder_product with taus {tt} for a {m}x{n} matrix")
    taus = [b.unsqueeze(b.slice(xs[1], [i], [i + 1], [tt.rank - 1]), [tt.rank]) for i in range(k)]
    return _householder_product(b, xs[0], taus, m, n, batch, t.rank, t.dtype)


@rule("qr")
def _qr(b, node, xs):
    """geqrf then householder_product, as JAX's own lowering composes them."""
    if node.attrs.get("pivoting"):
        raise Refused("qr with pivoting=True (LAPACK's geqp3) has no ONNX lowering in nnxc")
    m, n, batch = _matrix(node)
    t = node.inputs[0].type
    r, dt = t.rank, t.dtype
    a, taus = _geqrf(b, xs[0], m, n, batch, r, dt)
    if m < n or node.attrs.get("full_matrices"):
        q = _householder_product(b, a, taus, m, m, batch, r, dt)
    else:
        q = _householder_product(b, a, taus, m, n, batch, r, dt)
        a = _part(b, a, r, rows=(0, n))
    rows = min(m, n) if not node.attrs.get("full_matrices") else m
    zero = b.scalar(0, dt)
    return [q, b.where(b.const(_tri_mask(rows, n, 0, upper=True)), a, zero, dt)]


@rule("tridiagonal")
def _tridiagonal(b, node, xs):
    """LAPACK's sytd2 (what sytrd runs up to 32x32), Householder reduction of the named
    triangle to T = Q^T A Q: per column i, the reflector (dlarfg) of the column below the
    subdiagonal, ``w = tau A v - tau/2 (tau v^T A v) v`` and ``A -= v w^T + w v^T`` on the
    trailing block (kept whole and symmetric here, where LAPACK updates its triangle). Outputs
    the reflectors below the subdiagonal with T's diagonals on it (the other triangle keeps
    the input's values), d, e and the taus. ``lower=False`` is the same on the matrix with its
    rows and columns reversed, whose results come back reversed."""
    n, _, batch = _matrix(node, square=True)
    t = node.inputs[0].type
    r, dt = t.rank, t.dtype
    lower = bool(node.attrs.get("lower", True))
    flip = lambda x, axes: b.slice(x, [-1] * len(axes), [INT64_MIN] * len(axes), axes, [-1] * len(axes))  # noqa: E731
    a = xs[0] if lower else flip(xs[0], [r - 2, r - 1])
    low = b.const(_tri_mask(n, n, 0, upper=False))
    blk = b.where(low, a, _mT(b, a, r), dt)  # the symmetric matrix, then its trailing block
    d, e, taus, cols = [], [], [], []
    zero = b.scalar(0, dt)
    for i in range(n - 1):
        m = n - i
        d.append(_part(b, blk, r, rows=(0, 1), cols=(0, 1)))
        x = _part(b, blk, r, rows=(1, m), cols=(0, 1))  # [..., m-1, 1]
        alpha = _part(b, x, r, rows=(0, 1))
        if m == 2:  # a one-element reflector: H = I
            e.append(alpha)
            taus.append(b.expand(zero, [*batch, 1, 1]))
            cols.append(b.op("Concat", d[-1], alpha, axis=r - 2))
            blk = _part(b, blk, r, rows=(1, 2), cols=(1, 2))
            break
        tau, beta, v = _reflector(b, alpha, _part(b, x, r, rows=(1, m - 1)), r, dt)
        e.append(beta)
        taus.append(tau)
        cols.append(b.op("Concat", d[-1], beta, v, axis=r - 2))
        a22 = _part(b, blk, r, rows=(1, m), cols=(1, m))
        vf = b.op("Concat", b.expand(b.scalar(1, dt), [*batch, 1, 1]), v, axis=r - 2)
        y = b.op("Mul", tau, b.op("MatMul", a22, vf))  # tau A v
        half = b.op("Mul", b.op("Mul", b.scalar(-0.5, dt), tau), b.op("MatMul", _mT(b, y, r), vf))
        w = b.op("Add", y, b.op("Mul", half, vf))
        upd = b.op("Sub", b.op("Sub", a22, b.op("MatMul", vf, _mT(b, w, r))), b.op("MatMul", w, _mT(b, vf, r)))
        blk = b.where(b.op("Equal", tau, zero), a22, upd, dt)  # LAPACK skips H = I
    d.append(blk)  # the last 1x1 block
    cols.append(d[-1])
    pad_top = [b.op("Pad", c, b.i64(*[0] * (r - 2), n - c_len, 0, *[0] * r)) if c_len < n else c
               for c, c_len in zip(cols, range(n, 0, -1))]
    arr = b.where(low, _cat(b, pad_top, r - 1), a, dt)
    vec = lambda parts: b.squeeze(_cat(b, parts, r - 1), [r - 2])  # noqa: E731 - [..., 1, k] -> [..., k]
    outs = [arr, vec(d), vec(e) if e else b.expand(zero, [*batch, 0]),
            vec(taus) if taus else b.expand(zero, [*batch, 0])]
    if lower:
        return outs
    return [flip(outs[0], [r - 2, r - 1])] + [flip(o, [r - 2]) for o in outs[1:]]


@rule("tridiagonal_solve")
def _tridiagonal_solve(b, node, xs):
    """LAPACK's gtsv, Gaussian elimination with partial pivoting as it does it: per row, row
    i+1 is swapped up when |dl[i+1]| > |d[i]| (which fills a second superdiagonal), then back
    substitution; an ONNX Loop over the rows for each sweep, so the system size only has to be
    static. A singular system (a zero pivot) gives NaN, as JAX returns for LAPACK's info > 0."""
    if node.attrs.get("perturb_singular"):
        raise Refused("tridiagonal_solve with perturb_singular=True (a perturbation of tiny pivots "
                      "in jaxlib's own kernel) has no ONNX lowering in nnxc")
    from .control import loop
    bt = node.inputs[3].type
    dt, r, m = bt.dtype, bt.rank, bt.shape[-2]
    if dt not in _LINALG_DTYPES:
        raise Refused(f"tridiagonal_solve on {dt} ({bt}): nnxc lowers linear algebra to ONNX for f32 and f64 only")
    if not isinstance(m, int):
        raise Refused(f"tridiagonal_solve of a system of symbolic size {m} ({bt}): the size must be static")
    perm = [r - 2, *range(r - 2), r - 1]  # rows first: [..., m, k] -> [m, ..., k]
    dl, d, du = (b.transpose(b.unsqueeze(x, [r - 1]), perm) for x in xs[:3])  # [m, ..., 1]
    rhs = b.transpose(xs[3], perm)
    zero = b.scalar(0, dt)

    def row(bb, x, i):
        return bb.op("Gather", x, i if isinstance(i, str) else bb.scalar(i, "i64"), axis=0)

    def forward(sb, it, carried):  # row `it` (carried: its diagonal, superdiagonal, rhs) against row it+1
        cd, cu, cr = carried
        j = sb.op("Add", it, sb.scalar(1, "i64"))
        lo, dn, up, nb = row(sb, dl, j), row(sb, d, j), row(sb, du, j), row(sb, rhs, j)
        swap = sb.op("Less", sb.op("Abs", cd), sb.op("Abs", lo))
        keep_f, swap_f = sb.op("Div", lo, cd), sb.op("Div", cd, lo)
        pick = lambda p, q: sb.where(swap, p, q, dt)  # noqa: E731 - (rows swapped, rows kept)
        new = [pick(sb.op("Sub", cu, sb.op("Mul", swap_f, dn)), sb.op("Sub", dn, sb.op("Mul", keep_f, cu))),
               pick(sb.op("Neg", sb.op("Mul", swap_f, up)), up),
               pick(sb.op("Sub", cr, sb.op("Mul", swap_f, nb)), sb.op("Sub", nb, sb.op("Mul", keep_f, cr)))]
        done = [pick(lo, cd), pick(dn, cu), pick(up, sb.expand(zero, [1])), pick(nb, cr)]  # U's row `it`
        return new, done

    def backward(sb, it, carried):  # x[i] from x[i+1], x[i+2] for i = m-2, m-3, ...
        x1, x2 = carried
        i = sb.op("Sub", sb.scalar(m - 2, "i64"), it)
        xi = sb.op("Sub", row(sb, rr, i), sb.op("Mul", row(sb, ru, i), x1))  # LAPACK's order
        xi = sb.op("Div", sb.op("Sub", xi, sb.op("Mul", row(sb, rf, i), x2)), row(sb, rd, i))
        return [xi, x1], [xi]

    last_d, last_r = row(b, d, 0), row(b, rhs, 0)
    pivots = x_all = None
    if m > 1:
        last = b.slice(du, [m - 1], [m], [0])  # du[m-1] is not part of the matrix
        du = b.op("Concat", b.slice(du, [0], [m - 1], [0]), b.op("Expand", zero, b.op("Shape", last)), axis=0)
        trips = b.scalar(m - 1, "i64")
        (last_d, _, last_r), (rd, ru, rf, rr) = loop(
            b, trips, [(last_d, dt), (row(b, du, 0), dt), (last_r, dt)], forward, (dt,) * 4)
        pivots = rd
    x_last = b.op("Div", last_r, last_d)
    x_all = b.unsqueeze(x_last, [0])
    pivots = b.unsqueeze(last_d, [0]) if pivots is None else b.op("Concat", pivots, b.unsqueeze(last_d, [0]), axis=0)
    if m > 1:
        _, (back,) = loop(b, trips, [(x_last, dt), (b.op("Expand", zero, b.op("Shape", x_last)), dt)], backward, (dt,))
        x_all = b.op("Concat", b.slice(back, [-1], [INT64_MIN], [0], [-1]), x_all, axis=0)
    singular = reductions.reduce(b, "ReduceMax", b.cast(b.op("Equal", pivots, zero), "bool", "i32"), [0], keepdims=1)
    x_all = b.where(b.cast(singular, "i32", "bool"), b.scalar(np.nan, dt), x_all, dt)
    return b.transpose(x_all, [*range(1, r - 1), 0, r - 1])


def _jacobi_rounds(n: int) -> tuple[int, list]:
    """A round-robin schedule (circle method) on ``n`` padded to even ``m``: m-1 rounds of
    m/2 disjoint pairs that together meet every pair once (a cyclic Jacobi sweep)."""
    m = n + n % 2
    idx, rounds = list(range(m)), []
    for _ in range(m - 1):
        rounds.append([tuple(sorted((idx[i], idx[m - 1 - i]))) for i in range(m // 2)])
        idx = [idx[0], idx[-1], *idx[1:-1]]
    return m, rounds


def jacobi_sweeps(n: int, dtype: str) -> int:
    """Sweeps of cyclic Jacobi: convergence is quadratic once the off-diagonal part is small;
    at these counts random symmetric matrices up to 32x32 reach their rounding floor (off-
    diagonal norm ~1e-7 relative in f32, ~1e-16 in f64) with a sweep to spare."""
    return max(1, math.ceil(math.log2(max(n, 2)))) + (3 if dtype == "f32" else 4)


@rule("eigh")
def _eigh(b, node, xs):
    """Cyclic Jacobi with a parallel (round-robin) ordering, sweeps unrolled: each step
    rotates m/2 disjoint pairs at once, ``A <- J^T A J``, ``V <- V J``, with the symmetric
    Schur rotation of Golub & Van Loan (8.4.2). The matrix is kept in a basis where each
    step's pairs are neighbours (J is block diagonal); a static permutation moves to the
    next step's pairs. Eigenvalues come out ascending (sort_eigenvalues or not; LAPACK's
    come out ascending too), eigenvectors as columns, each with a sign of its own."""
    n, _, batch = _matrix(node, square=True)
    t = node.inputs[0].type
    r, dt = t.rank, t.dtype
    subset = node.attrs.get("subset_by_index")
    lo, hi = (0, n) if subset is None else (int(subset[0]), int(subset[1]))
    a = xs[0]
    # the symmetric matrix the named triangle describes
    a = b.where(b.const(_tri_mask(n, n, 0, upper=not node.attrs.get("lower", True))), a, _mT(b, a, r), dt)
    m, rounds = _jacobi_rounds(n)
    if m != n:  # a dummy index: a zero row and column, never rotated (its pivot is 0)
        a = b.op("Pad", a, b.i64(*[0] * r, *[0] * (r - 2), 1, 1))
    h = m // 2
    v = b.expand(b.const(np.eye(m, dtype=to_dtype(dt))), [*batch, m, m])
    order = [i for pair in rounds[0] for i in pair]  # basis position -> original index
    a = b.op("Gather", b.op("Gather", a, b.const(np.asarray(order)), axis=r - 2), b.const(np.asarray(order)), axis=r - 1)
    v = b.op("Gather", v, b.const(np.asarray(order)), axis=r - 1)
    flat = np.arange(h) * 2 * (m + 1)  # positions of (2i, 2i) in the flattened matrix
    picks = b.const(np.concatenate([flat, flat + m + 1, flat + 1]).astype(np.int64))
    eye_h = b.const(np.eye(h, dtype=to_dtype(dt)).reshape(h, 1, h, 1))
    zero, one = b.scalar(0, dt), b.scalar(1, dt)
    steps = [rounds[k] for _ in range(jacobi_sweeps(n, dt)) for k in range(len(rounds))]
    for s, pairs in enumerate(steps):
        d = b.op("Gather", b.reshape(a, [*batch, m * m]), picks, axis=r - 2)  # [..., 3h]
        app, aqq, apq = (b.slice(d, [k * h], [(k + 1) * h], [r - 2]) for k in range(3))
        skip = b.op("Equal", apq, zero)  # nothing to rotate (and the dummy pairs)
        safe = b.where(skip, one, apq, dt)
        tau = b.op("Div", b.op("Sub", aqq, app), b.op("Add", safe, safe))
        sign = b.where(b.op("Less", tau, zero), b.scalar(-1, dt), one, dt)
        tt = b.op("Div", sign, b.op("Add", b.op("Abs", tau), b.op("Sqrt", b.op("Add", one, b.op("Mul", tau, tau)))))
        c = b.op("Div", one, b.op("Sqrt", b.op("Add", one, b.op("Mul", tt, tt))))
        sn = b.op("Mul", tt, c)
        c, sn = b.where(skip, one, c, dt), b.where(skip, zero, sn, dt)
        # J = blockdiag([[c, s], [-s, c]]) in this basis, then the next step's order
        blocks = b.op("Concat", *[b.unsqueeze(x, [r - 1]) for x in (c, sn, b.op("Neg", sn), c)], axis=r - 1)
        blocks = b.reshape(blocks, [*batch, h, 2, 1, 2])
        j = b.reshape(b.op("Mul", blocks, eye_h), [*batch, m, m])
        if s + 1 < len(steps):
            nxt = [i for pair in steps[s + 1] for i in pair]
            cur = [i for pair in pairs for i in pair]
            j = b.op("Gather", j, b.const(np.asarray([cur.index(i) for i in nxt])), axis=r - 1)
            order = nxt
        a = b.op("MatMul", _mT(b, j, r), b.op("MatMul", a, j))
        v = b.op("MatMul", v, j)
    keep = [p for p, i in enumerate(order) if i < n]  # drop the dummy index
    w = b.op("Gather", b.reshape(a, [*batch, m * m]), b.const(np.asarray([p * (m + 1) for p in keep])), axis=r - 2)
    v = b.op("Gather", v, b.const(np.asarray(keep)), axis=r - 1)
    if m != n:
        v = _part(b, v, r, rows=(0, n))
    w, idx = b.op("TopK", w, b.i64(n), axis=-1, largest=0, sorted=1, outs=2)
    v = b.op("GatherElements", v, b.expand(b.unsqueeze(idx, [r - 2]), [*batch, n, n]), axis=r - 1)
    if (lo, hi) != (0, n):
        w, v = b.slice(w, [lo], [hi], [r - 2]), b.slice(v, [lo], [hi], [r - 1])
    return [v, w]


def _refuse(reason: str):
    def fn(b, node, xs):
        raise Refused(reason)
    fn.always_refuses = True  # its reason beats a generic one (fft.py's complex-value guard)
    return fn


for _op, _why in {
    "eig": "a non-symmetric eigendecomposition (complex eigenvalues, LAPACK's geev) has no "
           "ONNX lowering in nnxc; for symmetric matrices use jnp.linalg.eigh",
    "schur": "a Schur decomposition (LAPACK's gees, iterative QR with shifts) has no ONNX "
             "lowering in nnxc",
    "hessenberg": "a Hessenberg reduction (LAPACK's gehrd) has no ONNX lowering in nnxc",
    "svd": "an SVD has no ONNX lowering in nnxc (for a symmetric positive semi-definite "
           "matrix, jnp.linalg.eigh gives the same factors)",
    "geqp3": "QR with column pivoting (LAPACK's geqp3) has no ONNX lowering in nnxc",
}.items():
    rule(_op)(_refuse(_why))


# -- ragged_dot_general: jax.lax.ragged_dot, the grouped matmul of mixture-of-experts layers ---

RAGGED_DOT_FORM = (((1,), (1,)), ((), ())), (0,), (0,)


@rule("ragged_dot_general")
def _ragged_dot(b, node, xs):
    """lhs [m,k], rhs [g,k,n], group_sizes [g] -> [m,n]: row r of lhs is multiplied by rhs[j],
    j the group whose rows (consecutive, in order) hold r; rows past sum(group_sizes) are 0.
    The group of each row counts the cumulative group ends at or below it; rhs is gathered per
    row and the rows multiplied as a batch of [1,k] @ [k,n]."""
    a = node.attrs
    dn = a["ragged_dot_dimension_numbers"]
    form = (dn.get("dot_dimension_numbers"), dn.get("lhs_ragged_dimensions"), dn.get("rhs_group_dimensions"))
    lt, rt, gt, ot = (v.type for v in (*node.inputs, node.outputs[0]))
    if form != RAGGED_DOT_FORM or lt.rank != 2 or rt.rank != 3 or gt.rank != 1 or a.get("group_offset") is not None:
        raise Refused(f"ragged_dot_general of the form dot_dimension_numbers={form[0]}, lhs_ragged_dimensions="
                      f"{form[1]}, rhs_group_dimensions={form[2]} on lhs {lt}, rhs {rt}: only the "
                      f"jax.lax.ragged_dot form (lhs [m,k], rhs [g,k,n], group_sizes [g]) is exported")
    if not ot.dtype.startswith(("f", "bf")):
        raise Refused(f"ragged_dot_general on {ot.dtype} (onnxruntime's MatMul of this form is for floats)")
    x, w = b.cast(xs[0], lt.dtype, ot.dtype), b.cast(xs[1], rt.dtype, ot.dtype)
    ends = b.op("CumSum", b.cast(xs[2], gt.dtype, "i64"), b.scalar(0, "i64"))
    rows = b.op("Range", b.scalar(0, "i64"), b.dim_scalar(lt.shape[0]), b.scalar(1, "i64"))
    past = b.op("LessOrEqual", b.unsqueeze(ends, [0]), b.unsqueeze(rows, [1]))  # [m,g]
    group = reductions.reduce(b, "ReduceSum", b.op("Cast", past, to=7), [1])  # [m], g: past the end
    last = b.op("Sub", b.dim_scalar(rt.shape[0]), b.scalar(1, "i64"))
    per_row = b.op("Gather", w, b.op("Min", group, last), axis=0)  # [m,k,n]
    out = b.squeeze(b.op("MatMul", b.unsqueeze(x, [1]), per_row), [1])  # [m,n]
    inside = b.op("LessOrEqual", group, last)
    return b.op("Where", b.unsqueeze(inside, [1]), out, b.scalar(0, ot.dtype))
