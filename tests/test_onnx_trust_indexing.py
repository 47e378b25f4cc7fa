"""Regressions found by random-program testing of the ONNX export (indexing, shapes, pooling).

Each test traces a small JAX program (on symbolic specs like ``f32[B,5]`` where the bug
needed one), exports it, runs it in onnxruntime at several sizes (B = 1 included) and
compares with ``jax.jit`` of the same program:

- slices, rolls, edge pads and circular convolutions whose starts / limits are dim
  expressions (``B-1``, ``mod(-2,B)``), which used to raise a raw ValueError;
- reshapes to a dim that is 0 at run time (``(B-1)*5`` at B=1), which onnxruntime read as
  "copy the input's dim", and broadcasts to a static 0, which its optimizer got wrong;
- pooling with padding >= the window (onnxruntime's MaxPool refuses it, and fills its own
  padding with the lowest float rather than -inf), NaN propagation of max / min pooling;
- scatter in every mode and reducer with negative, out-of-range and duplicate indices,
  NaN in scatter max / min, and dtypes onnxruntime's ScatterND / Pad do not take.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session
from test_onnx_ops import check, ints, normal


def at_sizes(fn, spec: str, sizes=(1, 2, 5), **kw):
    """``check`` of ``fn`` traced on ``spec`` (one symbolic dim B), run at each B in ``sizes``."""
    dims = spec[spec.index("[") + 1:-1].split(",")
    args = [(normal(*[n if d == "B" else int(d) for d in dims]),) for n in sizes]
    return check(fn, *args[0], specs=[spec], more=args[1:], **kw)


# -- 1. slices, rolls, pads and circular convolutions along a symbolic dim ---------------------

SYMBOLIC_SLICES = {
    "roll": lambda x: jnp.roll(x, 2, axis=0),
    "roll negative": lambda x: jnp.roll(x, -3, axis=0),
    "lax.slice to B": lambda x: lax.slice(x, (1, 0), (x.shape[0], 5)),
    "lax.slice strided": lambda x: lax.slice(x, (0, 1), (x.shape[0], 5), (2, 2)),
    "x[1:]": lambda x: x[1:],
    "x[:-1]": lambda x: x[:-1],
    "x[-2:]": lambda x: x[-2:],
    "concatenate": lambda x: jnp.concatenate([x, x]),
    "diff": lambda x: jnp.diff(x, axis=0),
    "pad edge": lambda x: jnp.pad(x, ((1, 2), (0, 1)), mode="edge"),
    "pad wrap": lambda x: jnp.pad(x, ((0, 0), (2, 3)), mode="wrap"),
    "pad reflect": lambda x: jnp.pad(x, ((0, 0), (2, 1)), mode="reflect"),
    "split": lambda x: jnp.split(x, [1], axis=0),
    "edge then slice": lambda x: jnp.pad(x, ((2, 2), (0, 0)), mode="edge")[3:],
    "x[::2] (floordiv)": lambda x: x[::2] * 2,
    "x[1::3]": lambda x: jnp.concatenate([x[1::3], x[::-2]]),
    "pad interior": lambda x: lax.pad(x, 0.0, ((1, -1, 2), (0, 0, 0)))[1:],
}


@pytest.mark.parametrize("name", sorted(SYMBOLIC_SLICES))
def test_symbolic_slices(name):
    at_sizes(SYMBOLIC_SLICES[name], "f32[B,5]")


def _edge_pad_step(c):
    return c[0] + 1, jnp.pad(c[1], ((1, 1), (0, 0)), mode="edge")[1:-1] + 1


SYMBOLIC_IN_REGIONS = {  # the same shape computations inside Loop / If bodies
    "scan roll": lambda x: lax.scan(lambda c, r: (jnp.roll(c, 1, 0), r), x, jnp.arange(3))[0],
    "while edge pad": lambda x: lax.while_loop(lambda c: c[0] < 2, _edge_pad_step, (0, x))[1],
    "cond diff": lambda x: lax.cond(x.sum() > 0, lambda a: jnp.diff(a, axis=0).T.reshape(-1),
                                    lambda a: a[1:].T.reshape(-1), x),
}


@pytest.mark.parametrize("name", sorted(SYMBOLIC_IN_REGIONS))
def test_symbolic_slices_in_regions(name):
    at_sizes(SYMBOLIC_IN_REGIONS[name], "f32[B,5]")


def test_circular_conv_module():
    model = nnx.Conv(3, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(0))
    graph = nnxc.trace(model, "f32[B,8,8,3]")
    session = onnx_session(export_onnx(graph))
    (name,) = [i.name for i in session.get_inputs()]
    reference = jax.jit(lambda x: model(x))
    for n in (1, 3):
        x = normal(n, 8, 8, 3)
        np.testing.assert_allclose(session.run(None, {name: x})[0], reference(x), rtol=1e-5, atol=1e-5)


def test_static_edge_pad():  # broadcasts to a static 0: onnxruntime's optimizer kept the 1
    check(lambda x: jnp.pad(x, ((1, 2), (0, 1)), mode="edge"), normal(4, 5))
    check(lambda x: (jnp.broadcast_to(x[:, :1, None], (4, 1, 0)) + 1).reshape(4, 0), normal(4, 5))
    check(lambda x: x + lax.broadcasted_iota(jnp.float32, (0, 5), 1).sum(0), normal(4, 5))


def test_negative_pad_that_crops_into_the_other_padding():  # fuzz seed 30951
    # low -1 on an empty axis removes the first of the two high padding values
    check(lambda x: lax.pad(x, 7.0, ((1, 0, 0), (-1, 2, 0))), normal(4, 0))
    check(lambda x: lax.pad(x != 0, jnp.array(True), ((0, 0, 0), (-3, 4, 0))), normal(2, 2))
    check(lambda x: lax.pad(x, -1.0, ((3, -4, 0), (0, 0, 0))), normal(2, 3))
    check(lambda x: lax.pad(x, 0.5, ((-2, 3, 1), (0, 0, 0))), normal(2, 3))


# -- 4. reshapes with symbolic dims ------------------------------------------------------------

SYMBOLIC_RESHAPES = {
    "B*5": lambda x: x.reshape(x.shape[0] * 5),
    "-1,5 after transpose": lambda x: x.T.reshape(-1, 5),
    "B,5,1 after transposes": lambda x: (x.T * 2).T.reshape(x.shape[0], 5, 1),
    "merge B with others": lambda x: x.T.reshape(5, x.shape[0], 1).transpose(1, 0, 2).reshape(-1),
    "B-1 (0 at B=1)": lambda x: jnp.diff(x, axis=0).reshape(-1, 5).T.reshape(-1),
    "2*B": lambda x: jnp.concatenate([x, x]).reshape(2, -1),
    "B*B": lambda x: (x @ x.T).reshape(-1),
    "outer": lambda x: (x[:, None, :] * x[None, :, :]).reshape(-1, 5),
}


@pytest.mark.parametrize("name", sorted(SYMBOLIC_RESHAPES))
def test_symbolic_reshapes(name):
    at_sizes(SYMBOLIC_RESHAPES[name], "f32[B,5]")


def test_symbolic_reshape_4d():
    at_sizes(lambda x: x.reshape(x.shape[0], 12, 2).transpose(2, 0, 1).reshape(-1, 3), "f32[B,3,4,2]")


# -- 2. pooling: padding >= the window, NaN and -inf -----------------------------------------

def _pool_input(*shape):
    x = normal(*shape)
    flat = x.reshape(-1)
    flat[::7] = -np.inf  # windows of only -inf stay -inf, not the lowest float
    flat[::23] = np.nan  # XLA's max / min propagate NaN
    return x


POOL_GRID = list(itertools.product(
    [(2, 2), (3, 1), (1, 3)],  # window
    [(1, 1), (2, 3)],  # strides
    [((0, 0), (0, 0)), ((2, 2), (2, 2)), ((3, 1), (0, 4)), ((-1, 2), (1, -1))],  # padding
    [(1, 1), (2, 1)],  # window dilation
    [(1, 1), (1, 2)],  # base dilation
))


def _pools(reducer, init):
    def fn(x):
        out = {}
        for i, (win, stride, pads, wdil, bdil) in enumerate(POOL_GRID):
            out[f"{i}"] = lax.reduce_window(x, init, reducer, (1, *win, 1), (1, *stride, 1),
                                            ((0, 0), *pads, (0, 0)), base_dilation=(1, *bdil, 1),
                                            window_dilation=(1, *wdil, 1))
        return out
    return fn


@pytest.mark.parametrize("reducer", ["max", "min", "sum"])
def test_reduce_window_grid(reducer):
    fn = {"max": _pools(lax.max, -jnp.inf), "min": _pools(lax.min, jnp.inf),
          "sum": _pools(lax.add, 0.0)}[reducer]
    x = _pool_input(2, 7, 6, 3)
    if reducer == "sum":
        x = np.nan_to_num(x, neginf=-3.0)  # keep sums finite, NaN aside
        x.reshape(-1)[::23] = np.nan
    check(fn, x)


def test_pool_big_padding():
    x = _pool_input(2, 8, 8, 3)
    check(lambda a: lax.reduce_window(a, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1),
                                      ((0, 0), (2, 2), (2, 2), (0, 0))), x)
    check(lambda a: {"max": nnx.max_pool(a, (2, 2), strides=(1, 1), padding=((3, 3), (2, 2))),
                     "min": nnx.min_pool(a, (3, 3), strides=(2, 2), padding=((3, 4), (5, 3))),
                     "avg": nnx.avg_pool(a, (2, 2), strides=(1, 1), padding=((3, 3), (2, 2))),
                     "avg excl": nnx.avg_pool(jnp.nan_to_num(a), (2, 3), strides=(2, 1),
                                              padding=((2, 2), (3, 3)), count_include_pad=False)}, x)


def test_pool_symbolic_and_int():
    at_sizes(lambda a: nnx.max_pool(a, (2, 2), strides=(1, 1), padding=((3, 3), (2, 2))), "f32[B,8,8,3]",
             sizes=(1, 2))
    at_sizes(lambda a: lax.reduce_window(a, jnp.inf, lax.min, (2, 1), (1, 1), ((2, 2), (1, 1))), "f32[B,5]")

    def big(a):  # windows entirely in the padding hold the identity
        info = jnp.iinfo(a.dtype)
        return {"max": lax.reduce_window(a, np.array(info.min, a.dtype), lax.max, (2, 2), (1, 1),
                                         ((2, 2), (3, 3))),
                "min": lax.reduce_window(a, np.array(info.max, a.dtype), lax.min, (2, 2), (1, 2),
                                         ((2, 3), (2, 2)), base_dilation=(2, 1))}
    check(big, ints(5, 4))
    check(big, ints(5, 4, lo=0, hi=200, dtype=np.uint8))

    def bf16(a):  # onnxruntime's MaxPool takes no bf16; in and out as f32
        return lax.reduce_window(a.astype(jnp.bfloat16), -jnp.inf, lax.max, (2, 2), (2, 1),
                                 ((2, 2), (2, 2))).astype(jnp.float32)
    check(bf16, _pool_input(5, 4))


# -- 3. scatter: modes, reducers, bad and duplicate indices -------------------------------------

X = normal(6, 4)
IDX = np.array([1, -1, 3, 1, 9, -9, -7, 5, 0, 6, -6, 1], np.int32)  # duplicates, negative, out of range
UPD = normal(12, 4)
MODES = [None, "clip", "drop", "fill", "promise_in_bounds"]
REDUCERS = ["set", "add", "multiply", "min", "max"]


def _at(x, index, reducer, u, mode):
    return getattr(x.at[index], reducer)(u, mode=mode)


@pytest.mark.parametrize("reducer", REDUCERS)
def test_scatter_modes(reducer):
    def fn(x, i, u):
        return {f"{mode}": _at(x, i, reducer, u, mode) for mode in MODES} | \
               {f"cols {mode}": _at(x, (slice(None), i % 7 - 2), reducer, jnp.concatenate([u.T, u.T])[:6], mode)
                for mode in MODES} | \
               {f"ij {mode}": _at(x, (i, i % 4), reducer, u[:, 0], mode) for mode in MODES}
    check(fn, X, IDX, UPD)


DN = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                 scatter_dims_to_operand_dims=(0,))
DN_WINDOW = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(),
                                        scatter_dims_to_operand_dims=(0,))
LAX_SCATTERS = {"set": lax.scatter, "add": lax.scatter_add, "mul": lax.scatter_mul,
                "min": lax.scatter_min, "max": lax.scatter_max}


@pytest.mark.parametrize("reducer", sorted(LAX_SCATTERS))
def test_lax_scatter_raw_indices(reducer):  # no normalization of negative indices: XLA's own modes
    op = LAX_SCATTERS[reducer]

    def fn(x, i, u):
        out = {}
        for mode in ("clip", "fill", "promise_in_bounds"):
            out[mode] = op(x, i[:, None], u, DN, mode=mode)
            out[f"window {mode}"] = op(x[:, 0], i[:, None], u[:, :2], DN_WINDOW, mode=mode)
        return out
    check(fn, X, IDX, UPD)


@pytest.mark.parametrize("reducer", ["min", "max"])
def test_scatter_nan(reducer):  # XLA's max / min propagate NaN, from the operand or an update
    x, u = X.copy(), UPD.copy()
    x[1, 2] = x[4, 0] = np.nan
    u[0, 1] = u[3, 3] = u[4, 0] = u[8, 2] = np.nan
    check(lambda a, i, v: {f"{m}": _at(a, i, reducer, v, m) for m in MODES}, x, IDX, u)


def _small_ints(*shape):  # non-negative integers every dtype holds
    return np.random.default_rng(sum(shape)).integers(0, 50, shape)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int16", "uint16", "int8", "uint8", "uint32", "bool"])
def test_scatter_dtypes(dtype):  # bf16 goes in and out as f32 (onnxruntime's numpy has no bf16)
    via = np.float32 if dtype == "bfloat16" else dtype
    x, u = _small_ints(6, 4).astype(via), _small_ints(12, 4).astype(via)
    reducers = ["set", "min", "max"] if dtype == "bool" else REDUCERS

    def fn(a, i, v):
        a, v = a.astype(dtype), v.astype(dtype)
        return {f"{r} {m}": _at(a, i, r, v, m).astype(via) for r in reducers for m in (None, "clip", "drop")}
    check(fn, x, IDX, u, tol=(1e-2, 1e-2) if "float" in dtype else None)


def test_scatter_symbolic():
    def fn(x, i, u):
        return {f"{r} {m}": _at(x, i, r, u, m) for r in REDUCERS for m in ("clip", "drop")}
    args = [(normal(n, 5), np.random.default_rng(n).integers(-3 * n, 3 * n, n).astype(np.int32), normal(n, 5))
            for n in (1, 3, 6)]
    check(fn, *args[0], specs=["f32[B,5]", "i32[B]", "f32[B,5]"], more=args[1:])


@pytest.mark.parametrize("opset", [13, 16])
def test_older_opsets(opset):  # no Reshape allowzero before 14: right while no symbolic dim is 0
    def fn(x):
        out = {"roll": jnp.roll(x, 2, axis=0), "reshape": x.T.reshape(-1, 5),
               "pool": lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (2, 1), ((2, 2), (2, 2)))}
        if opset >= 16:  # ScatterND reduction (16), a reshape to a static 0 (14)
            out["edge"] = jnp.pad(x, ((1, 2), (0, 1)), mode="edge")
            out["scatter add"] = x.at[jnp.array([1, -1, 9, 1])].add(1.0, mode="drop")
        return out
    at_sizes(fn, "f32[B,5]", sizes=(2, 5), opset=opset)


def test_refusals_are_clear():
    g = nnxc.trace(lambda x: jnp.pad(x, ((1, 2), (0, 1)), mode="edge"), "f32[B,5]")
    with pytest.raises(nnxc.UnsupportedOpError, match=r"reshape to an empty shape needs opset >= 14"):
        export_onnx(g, opset=13)


def test_dim_powers_and_zero_sized_reshapes_through_the_one_dim_parser():
    """``(x @ x.T).reshape(-1)`` has the dim ``B^2``; ``x[1:].reshape(-1)`` is 0 long at B=1.
    Both are built from nnxc.ir.types.parse_dim (the parser both backends share)."""
    import onnxruntime as ort
    for f in (lambda x: (x @ x.T).reshape(-1), lambda x: x[1:].reshape(-1)):
        m = nnxc.export_onnx(nnxc.trace(f, "f32[B,3]"))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for b in (1, 3):
            x = np.random.default_rng(b).random((b, 3)).astype(np.float32)
            np.testing.assert_allclose(s.run(None, {"x": x})[0], np.asarray(jax.jit(f)(x)), rtol=1e-6)
