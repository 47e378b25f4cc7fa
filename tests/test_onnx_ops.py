"""ONNX rules, op by op: small jnp / lax functions traced with nnxc, exported (the full ONNX
checker runs on every export), run in onnxruntime and compared with JAX's own result.

Elementwise math, comparisons, casts, shifts, dot_general, convolutions, reductions,
cumulative ops, pooling and shape ops, over generated shapes, dtypes and attributes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session

TOL = {"float32": (1e-5, 1e-6), "float16": (2e-3, 2e-3), "float64": (1e-12, 1e-12)}
RNG = np.random.default_rng(0)


def host(x) -> np.ndarray:
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def check(fn, *args, specs=None, more=(), opset=None, tol=None):
    """Trace ``fn`` (on ``specs`` or ``args``), export, and compare onnxruntime with JAX at
    ``args`` and at each argument tuple in ``more`` (other sizes of symbolic dims).

    Tests batch many ops into one function returning a dict: one trace, one export, one
    XLA compilation of the reference; a mismatch names its output (the dict key)."""
    graph = nnxc.trace(fn, *(specs or args))
    model = export_onnx(graph, opset=opset)
    session = onnx_session(model)
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    reference = jax.jit(fn)
    for call in (args, *more):
        want = [host(x) for x in jax.tree_util.tree_leaves(reference(*call))]
        got = session.run(None, dict(zip(names, [host(x) for x in jax.tree_util.tree_leaves(call)])))
        assert len(got) == len(want)
        for name, w, g in zip(outs, want, got):
            assert (g.shape, g.dtype) == (w.shape, w.dtype), name
            if w.dtype.kind in "fc":
                rtol, atol = tol or TOL[w.dtype.name]
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)
            else:
                np.testing.assert_array_equal(g, w, err_msg=name)
    return model


def normal(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def ints(*shape, lo=-20, hi=20, dtype=np.int32):
    return RNG.integers(lo, hi, shape).astype(dtype)


# -- elementwise ------------------------------------------------------------------------

POSITIVE = lambda x: np.abs(x) + 0.1  # noqa: E731
UNARY = {
    "exp": (jnp.exp, None), "log": (jnp.log, POSITIVE), "tanh": (jnp.tanh, None),
    "logistic": (jax.nn.sigmoid, None), "sin": (jnp.sin, None), "cos": (jnp.cos, None),
    "tan": (jnp.tan, None), "asin": (jnp.arcsin, lambda x: x / 4), "acos": (jnp.arccos, lambda x: x / 4),
    "atan": (jnp.arctan, None), "sinh": (jnp.sinh, None), "cosh": (jnp.cosh, None),
    "asinh": (jnp.arcsinh, None), "acosh": (jnp.arccosh, lambda x: POSITIVE(x) + 1),
    "atanh": (jnp.arctanh, lambda x: x / 4), "sqrt": (jnp.sqrt, POSITIVE), "rsqrt": (lax.rsqrt, POSITIVE),
    "cbrt": (jnp.cbrt, None), "exp2": (jnp.exp2, None), "log1p": (jnp.log1p, lambda x: POSITIVE(x) * 1e-3),
    "expm1": (jnp.expm1, lambda x: x * 1e-3), "erf": (lax.erf, None), "erfc": (lax.erfc, None),
    "erf_inv": (lax.erf_inv, lambda x: np.tanh(x) * 0.99), "is_finite": (jnp.isfinite, None),
    "round_even": (jnp.round, lambda x: x * 3), "floor": (jnp.floor, None), "ceil": (jnp.ceil, None),
    "round_away": (lambda x: lax.round(x, lax.RoundingMethod.AWAY_FROM_ZERO), lambda x: np.round(x * 4) / 2),
    "sign": (jnp.sign, None), "abs": (jnp.abs, None), "neg": (jnp.negative, None),
    "square": (jnp.square, None), "gelu_tanh": (jax.nn.gelu, None),
    "gelu_erf": (lambda x: jax.nn.gelu(x, approximate=False), None), "softmax": (jax.nn.softmax, None),
    "log_softmax": (jax.nn.log_softmax, None), "silu": (jax.nn.silu, None), "relu": (jax.nn.relu, None),
}


@pytest.mark.parametrize("shape,dtype", [((), np.float32), ((2, 3, 4), np.float32), ((5,), np.float16)])
def test_unary(shape, dtype):
    ops = {op: f for op, f in UNARY.items() if shape or op not in ("softmax", "log_softmax")}
    inputs = {op: ((prep or (lambda x: x))(normal(*shape))).astype(dtype) for op, (_, prep) in ops.items()}
    check(lambda xs: {op: ops[op][0](x) for op, x in xs.items()}, inputs)


def test_integer_pow():
    powers = [-3, -2, -1, 0, 1, 2, 3, 4, 7]
    check(lambda x: {f"y={y}": lax.integer_pow(x, y) for y in powers}, POSITIVE(normal(3, 4)))
    check(lambda x: {f"y={y}": lax.integer_pow(x, y) for y in powers if y >= 0}, ints(5, lo=-4, hi=4))


BINARY = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide,
          "max": jnp.maximum, "min": jnp.minimum, "pow": lambda a, b: jnp.power(jnp.abs(a) + 0.5, b),
          "atan2": jnp.arctan2, "rem": jnp.fmod, "eq": jnp.equal, "ne": jnp.not_equal,
          "lt": jnp.less, "le": jnp.less_equal, "gt": jnp.greater, "ge": jnp.greater_equal,
          "nextafter": jnp.nextafter}


@settings(max_examples=12, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4),
       dtype=st.sampled_from([np.float32, np.float16]))
def test_binary_broadcasting(shapes, dtype):
    a, b = (normal(*s).astype(dtype) for s in shapes.input_shapes)
    check(lambda a, b: {op: f(a, b) for op, f in BINARY.items()}, a, b)


INT_BINARY = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": lax.div,
              "rem": lax.rem, "floor_divide": jnp.floor_divide, "mod": jnp.mod, "max": jnp.maximum,
              "min": jnp.minimum, "and": jnp.bitwise_and, "or": jnp.bitwise_or, "xor": jnp.bitwise_xor,
              "not": lambda a, b: ~a, "lt": jnp.less, "eq": jnp.equal,
              "shift_left": lax.shift_left, "shift_right_logical": lax.shift_right_logical,
              "shift_right_arithmetic": lax.shift_right_arithmetic}


def _int_ops(a, b):
    return {op: f(a, b if not op.startswith("shift") else b * 5) for op, f in INT_BINARY.items()}


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.uint32, np.int16, np.uint16, np.int8])
def test_integer_binary(dtype):  # shift amounts reach past the bit width
    check(_int_ops, ints(3, 5, lo=-100, hi=100).astype(dtype), ints(3, 5, lo=1, hi=9).astype(dtype))


def test_int64_binary():
    with jax.enable_x64(True):
        a = ints(3, 5, lo=-(2**40), hi=2**40, dtype=np.int64)
        b = ints(3, 5, lo=1, hi=13, dtype=np.int64)
        check(_int_ops, a, b)
        check(_int_ops, a.astype(np.uint64), b.astype(np.uint64))


def test_int64_unary_large_values():  # onnxruntime's vectorized int64 Sign is wrong past 2**31
    with jax.enable_x64(True):
        x = ints(40, lo=-(2**62), hi=2**62, dtype=np.int64)
        check(lambda v: (jnp.sign(v), jnp.abs(v), -v, v // 7, v % 7), x)


def test_bool_binary():
    fns = {"and": jnp.logical_and, "or": jnp.logical_or, "xor": jnp.logical_xor,
           "not": lambda a, b: ~a, "eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less,
           "ge": jnp.greater_equal, "max": jnp.maximum, "min": jnp.minimum, "add": jnp.add}
    check(lambda a, b: {op: f(a, b) for op, f in fns.items()}, RNG.random((3, 4)) < 0.5, RNG.random((3, 4)) < 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.bool_, np.uint8, np.int16])
def test_select(dtype):
    a, b, c = (normal(3, 4) * 5 for _ in range(3))
    a, b, c = ((x > 0) if dtype == np.bool_ else x.astype(dtype) for x in (a, b, c))
    check(lambda p, x, y: jnp.where(p, x, y), RNG.random((3, 4)) < 0.5, a, b)
    check(lambda i, x, y, z: lax.select_n(i, x, y, z), ints(3, 4, lo=0, hi=3), a, b, c)


def test_clamp():
    x = normal(3, 4)
    check(lambda v: jnp.clip(v, -0.5, 0.5), x)
    check(lambda v, lo, hi: lax.clamp(lo, v, hi), x, x - 1, x + 0.5)
    check(lambda v: jnp.clip(v, -3, 3), ints(3, 4))


CASTS = [np.float32, np.float16, np.int32, np.int8, np.uint8, np.bool_]


@pytest.mark.parametrize("src", CASTS)
def test_convert_element_type(src):
    x = normal(4, 3) * 5
    x = x > 0 if src == np.bool_ else x.astype(src)
    check(lambda v: {np.dtype(d).name: (jnp.abs(v) if d == np.uint8 and src != np.bool_ else v).astype(d)
                     for d in CASTS}, x)


@pytest.mark.parametrize("pair", [(np.float32, jnp.int32), (np.int32, jnp.float32),
                                  (np.uint32, jnp.float32), (np.float16, jnp.int16)])
def test_bitcast(pair):
    src, dst = pair
    x = normal(3, 4).astype(src) if src in (np.float32, np.float16) else ints(3, 4, hi=2**20, dtype=src)
    check(lambda v: lax.bitcast_convert_type(v, dst), x)


@pytest.mark.parametrize("opset", [18, 25])
def test_bits_to_float_before_bitcast(opset):  # arithmetic on the fields, bit for bit
    bits = RNG.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0, 1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x7F800000, 0xFF800000, 0x80000001]
    model = check(lambda v: lax.bitcast_convert_type(v, jnp.float32), bits, opset=opset)
    got = onnx_session(model).run(None, {"v": bits})[0]
    assert np.all((got.view(np.uint32) == bits) | np.isnan(got))
    halves = np.array([0, 1, 0x3C00, 0x7C00, 0xFC00, 0x8001, 0x0400, 0x7BFF, 0xB800], np.uint16)
    check(lambda v: lax.bitcast_convert_type(v, jnp.float16), halves, opset=opset)


# -- dot_general and convolutions ------------------------------------------------------------

EINSUMS = [("ij,jk->ik", (3, 4), (4, 5)), ("bij,jk->bik", (2, 3, 4), (4, 5)),
           ("ij,kj->ik", (3, 4), (5, 4)), ("ji,jk->ik", (4, 3), (4, 5)),
           ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)), ("bthd,bshd->bhts", (2, 3, 2, 4), (2, 5, 2, 4)),
           ("bhts,bshd->bthd", (2, 2, 3, 5), (2, 5, 2, 4)), ("btd,dhk->bthk", (2, 3, 4), (4, 2, 5)),
           ("bthk,hkd->btd", (2, 3, 2, 5), (2, 5, 4)), ("i,i->", (4,), (4,)), ("ij,j->i", (3, 4), (4,)),
           ("j,jk->k", (4,), (4, 5)), ("bi,bi->b", (3, 4), (3, 4)), ("abc,cbd->ad", (2, 3, 4), (4, 3, 5)),
           ("ij,kl->ijkl", (2, 3), (4, 5)), ("btqhd,bthd->bthq", (2, 3, 1, 2, 4), (2, 3, 2, 4))]


@pytest.mark.parametrize("eq,sa,sb", EINSUMS, ids=[e[0] for e in EINSUMS])
def test_dot_general(eq, sa, sb):
    check(lambda a, b: jnp.einsum(eq, a, b), normal(*sa), normal(*sb), tol=(2e-5, 2e-6))


def test_dot_general_symbolic_and_mixed_precision():
    fn = lambda a, b: jnp.einsum("bthd,bshd->bhts", a, b)  # noqa: E731
    check(fn, normal(2, 3, 2, 4), normal(2, 5, 2, 4), specs=["f32[B,T,2,4]", "f32[B,S,2,4]"],
          more=[(normal(1, 1, 2, 4), normal(1, 2, 2, 4))], tol=(2e-5, 2e-6))
    check(lambda a, b: jnp.einsum("btd,dhk->bthk", a, b), normal(2, 3, 4), normal(4, 2, 5),
          specs=["f32[B,3,4]", "f32[4,2,5]"], more=[(normal(1, 3, 4), normal(4, 2, 5))])
    check(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.int32), ints(3, 4, lo=-5, hi=5, dtype=np.int8),
          ints(4, 5, lo=-5, hi=5, dtype=np.int8))
    check(lambda a, b: a @ b, normal(2, 3, 4, dtype=np.float16), normal(4, 5, dtype=np.float16), tol=(3e-3, 3e-3))


def conv(*args, **kw):
    return lambda x, w: lax.conv_general_dilated(x, w, *args, **kw)


NHWC = ("NHWC", "HWIO", "NHWC")
CONVS = {
    "nhwc_same": (conv((1, 1), "SAME", dimension_numbers=NHWC), (2, 6, 6, 3), (3, 3, 3, 4)),
    "nchw_strided": (conv((2, 1), ((1, 0), (2, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")),
                     (2, 3, 7, 6), (4, 3, 3, 2)),
    "dilated": (conv((1, 1), "VALID", rhs_dilation=(2, 2), dimension_numbers=NHWC), (1, 9, 9, 2), (3, 3, 2, 4)),
    "groups": (conv((1, 1), "SAME", feature_group_count=2, dimension_numbers=NHWC), (2, 6, 6, 4), (3, 3, 2, 6)),
    "depthwise": (conv((1, 1), "SAME", feature_group_count=4, dimension_numbers=NHWC), (2, 6, 6, 4), (3, 3, 1, 4)),
    "conv1d": (conv((2,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")), (2, 9, 3), (3, 3, 4)),
    "conv3d": (conv((1, 2, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")), (1, 4, 5, 6, 2), (2, 3, 3, 2, 3)),
    "lhs_dilation": (conv((1, 1), ((2, 2), (1, 2)), lhs_dilation=(2, 3), dimension_numbers=NHWC), (1, 4, 4, 3), (3, 3, 3, 2)),
    "transpose": (lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=NHWC), (1, 4, 4, 3), (3, 3, 3, 2)),
    "negative_pad": (conv((1, 1), ((-1, 0), (1, -1)), dimension_numbers=NHWC), (1, 6, 6, 2), (2, 2, 2, 3)),
    "mixed_layouts": (conv((1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NHWC")), (2, 3, 6, 5), (3, 3, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv(name):
    fn, sx, sw = CONVS[name]
    check(fn, normal(*sx), normal(*sw), tol=(2e-5, 2e-6))


def test_conv_symbolic_and_f16():
    fn = conv((1, 1), "SAME", dimension_numbers=NHWC)
    check(fn, normal(2, 6, 6, 3), normal(3, 3, 3, 4), specs=["f32[B,H,W,3]", "f32[3,3,3,4]"],
          more=[(normal(1, 5, 7, 3), normal(3, 3, 3, 4))], tol=(2e-5, 2e-6))
    check(fn, normal(2, 6, 6, 3, dtype=np.float16), normal(3, 3, 3, 4, dtype=np.float16), tol=(3e-3, 3e-3))


# -- reductions, cumulative ops, pooling -------------------------------------------------------

REDUCTIONS = {
    "sum": lambda a: a.sum(1), "sum_all": jnp.sum, "max": lambda a: a.max((0, 2)),
    "min": lambda a: a.min(-1), "prod": lambda a: a.prod(1), "mean": lambda a: a.mean(2),
    "argmax": lambda a: a.argmax(1), "argmin": lambda a: a.argmin(-1),
    "cumsum": lambda a: jnp.cumsum(a, 1), "cumsum_reverse": lambda a: lax.cumsum(a, 2, reverse=True),
    "cumprod": lambda a: jnp.cumprod(a, 2), "cummax": lambda a: lax.cummax(a, 1),
    "cummin_reverse": lambda a: lax.cummin(a, 2, reverse=True), "logcumsumexp": lambda a: lax.cumlogsumexp(a, 2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float16])
def test_reduction(dtype):
    ops = {k: f for k, f in REDUCTIONS.items() if dtype != np.int32 or k not in ("mean", "logcumsumexp")}
    x = normal(2, 3, 4) if dtype != np.int32 else ints(2, 3, 4, lo=-4, hi=4)
    check(lambda a: {k: f(a) for k, f in ops.items()}, x.astype(dtype),
          tol=(3e-3, 3e-3) if dtype == np.float16 else None)


def test_bool_reduction():
    fns = {"any": lambda a: a.any(1), "all": lambda a: a.all((0, 2)), "argmax": lambda a: a.argmax(1),
           "sum": lambda a: a.sum(1), "cumsum": lambda a: jnp.cumsum(a, 2)}
    check(lambda a: {k: f(a) for k, f in fns.items()}, RNG.random((2, 3, 4)) < 0.5)


def test_argmax_nan_and_symbolic():
    x = normal(2, 3, 4)
    x[0, 1, 2] = x[1, 2, 0] = np.nan
    check(lambda a: (a.argmax(2), a.argmin(1)), x)
    check(lambda a: a.sum(0), normal(3, 4), specs=["f32[B,4]"], more=[(normal(1, 4),)])


POOLS = {
    "max": lambda a: nnx.max_pool(a, (2, 2), (2, 2)),
    "max_same": lambda a: nnx.max_pool(a, (3, 3), (2, 2), padding="SAME"),
    "avg_same": lambda a: nnx.avg_pool(a, (3, 3), (1, 1), padding="SAME"),
    "avg_excluding_pad": lambda a: nnx.avg_pool(a, (3, 3), (2, 2), padding="SAME", count_include_pad=False),
    "min": lambda a: nnx.min_pool(a, (2, 2), (1, 1)),
    "window_dilation": lambda a: lax.reduce_window(a, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "VALID",
                                                   window_dilation=(1, 2, 2, 1)),
    "base_dilation": lambda a: lax.reduce_window(a, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID",
                                                 base_dilation=(1, 2, 2, 1)),
    "over_channels": lambda a: lax.reduce_window(a, -jnp.inf, lax.max, (1, 1, 2, 3), (1, 1, 2, 1), "SAME"),
}


def test_pooling():
    check(lambda a: {k: f(a) for k, f in POOLS.items()}, normal(2, 8, 8, 3))


def test_pooling_symbolic_and_int():
    check(POOLS["max"], normal(2, 8, 8, 3), specs=["f32[B,8,8,3]"], more=[(normal(1, 8, 8, 3),)])
    check(POOLS["max_same"], ints(2, 5, 5, 1))
    check(lambda a: lax.reduce_window(a, -jnp.inf, lax.max, (3,), (2,), "SAME"), normal(9))


# -- shape ops --------------------------------------------------------------------------------

SHAPE_OPS = {
    "broadcast": lambda a: jnp.broadcast_to(a[:, None], (4, 3, 5, 6)),
    "reshape": lambda a: a.reshape(20, 6), "transpose": lambda a: a.transpose(2, 0, 1),
    "squeeze": lambda a: a[:, :1].squeeze(1), "expand_dims": lambda a: a[None, :, None],
    "concatenate": lambda a: jnp.concatenate([a, a * 2], 1), "stack": lambda a: jnp.stack([a, a], -1),
    "unstack": lambda a: jnp.unstack(a, axis=1), "pad": lambda a: jnp.pad(a, ((1, 2), (0, 1), (3, 0))),
    "pad_interior_negative": lambda a: lax.pad(a, 0.5, ((1, 2, 1), (0, 0, 2), (-1, -2, 0))),
    "slice_strided": lambda a: a[1:3, ::2, 4:1:-1], "rev": lambda a: a[::-1, :, ::-1],
    "split": lambda a: jnp.split(a, [2, 5], axis=2), "iota": lambda a: a + jnp.arange(6.0),
    "tile": lambda a: jnp.tile(a, (1, 2, 1)), "repeat": lambda a: jnp.repeat(a, 2, axis=1),
    "roll": lambda a: jnp.roll(a, 2, axis=2), "tril": lambda a: jnp.tril(a[0]),
    "one_hot": lambda a: jax.nn.one_hot(jnp.argmax(a, -1), 6), "eye": lambda a: a[0, :5, :5] @ jnp.eye(5),
}


def test_shape_ops():
    check(lambda a: {k: f(a) for k, f in SHAPE_OPS.items()}, normal(4, 5, 6))


SYMBOLIC_SHAPE_OPS = {
    "reshape": lambda a: a.reshape(-1, 30), "merge": lambda a: a.reshape(a.shape[0] * 5, 6),
    "broadcast": lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], 3, 5, 6)),
    "slice": lambda a: a[:, 1:3], "iota": lambda a: a + jnp.arange(a.shape[0], dtype=jnp.float32)[:, None, None],
    "pad_interior": lambda a: lax.pad(a, 0.0, ((1, 1, 1), (0, 0, 0), (0, 0, 1))),
    "concatenate": lambda a: jnp.concatenate([a, a], 0), "rev": lambda a: a[::-1],
    "dim_expressions": lambda a: jnp.zeros((2 * a.shape[0] + 1, 3)) + a.shape[0] // 2,
}


def test_symbolic_shape_ops():
    check(lambda a: {k: f(a) for k, f in SYMBOLIC_SHAPE_OPS.items()}, normal(3, 5, 6), specs=["f32[B,5,6]"],
          more=[(normal(1, 5, 6),), (normal(4, 5, 6),)])


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_slice_generated(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    check(lambda a: a[index], normal(*shape))
