"""dot_general -> MatMul (or Einsum), conv_general_dilated -> Conv."""
from __future__ import annotations

from .shape import dim_add, dim_mul, interior_pad, reshape
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
