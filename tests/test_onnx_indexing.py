"""ONNX rules for indexing: gather / scatter in the forms jnp indexing, ``.at[]`` updates and
nnx.Embed produce (out-of-bounds modes included), dynamic_slice / dynamic_update_slice
(with JAX's clamping), sort / argsort / lexsort / top_k (ties, NaN, -0.0)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from test_onnx_ops import RNG, check, ints, normal

X = normal(6, 5, 4)
I3 = np.array([0, 5, 2], np.int32)
J3 = np.array([1, 4, 0], np.int32)

GATHERS = {
    "x[i]": (lambda a, i: a[i], (X, I3)),
    "x[negative i]": (lambda a, i: a[i], (X, np.array([-1, 3, -6], np.int32))),
    "x[:, i]": (lambda a, i: a[:, i], (X, J3)),
    "x[..., i]": (lambda a, i: a[..., i], (X, J3 % 4)),
    "x[i, j]": (lambda a, i, j: a[i, j], (X, I3, J3)),
    "x[i, :, j]": (lambda a, i, j: a[i, :, j], (X, I3, J3 % 4)),
    "x[:, i, j]": (lambda a, i, j: a[:, i, j], (X, J3, J3 % 4)),
    "x[i2d]": (lambda a, i: a[i], (X, ints(2, 3, lo=0, hi=6))),
    "x[scalar]": (lambda a, i: a[i[0]], (X, I3)),
    "x[None, i, 1]": (lambda a, i: a[None, i, 1], (X, I3)),
    "strided": (lambda a: a[::2, 1:, ::-2], (X,)),
    "dynamic_slice_in_dim": (lambda a, i: lax.dynamic_slice_in_dim(a, i[1], 2, 1), (X, I3)),
    "take fill": (lambda a, i: jnp.take(a, i, axis=0, mode="fill"), (X, np.array([0, 9, -9], np.int32))),
    "take clip": (lambda a, i: jnp.take(a, i, axis=1, mode="clip"), (X, np.array([0, 9, -9], np.int32))),
    "take_along_axis": (lambda a, i: jnp.take_along_axis(a, i, axis=1), (X, ints(6, 3, 4, lo=0, hi=5))),
    "take_along_axis 2d": (lambda a, i: jnp.take_along_axis(a, i, axis=0), (X[:, :, 0], ints(2, 5, lo=0, hi=6))),
    "embedding": (lambda e, i: e[i], (normal(10, 4), ints(2, 7, lo=0, hi=10))),
}


@pytest.mark.parametrize("name", sorted(GATHERS))
def test_gather(name):
    fn, args = GATHERS[name]
    check(fn, *args)


SCATTERS = {
    "set": (lambda a, i, u: a.at[i].set(u), (X, np.array([1, 3], np.int32), normal(2, 5, 4))),
    "add duplicates": (lambda a, i, u: a.at[i].add(u), (X, np.array([1, 3, 1], np.int32), normal(3, 5, 4))),
    "multiply": (lambda a, i, u: a.at[i].multiply(u), (X, np.array([1, 3, 1], np.int32), normal(3, 5, 4))),
    "max": (lambda a, i, u: a.at[i].max(u), (X, np.array([1, 3, 1], np.int32), normal(3, 5, 4))),
    "min columns": (lambda a, i, u: a.at[:, i].min(u), (X, np.array([1, 3, 1], np.int32), normal(6, 3, 4))),
    "set out of bounds": (lambda a, i, u: a.at[i].set(u), (X, np.array([1, 9, -8], np.int32), normal(3, 5, 4))),
    "add drop": (lambda a, i, u: a.at[i].add(u, mode="drop"), (X, np.array([1, 9, -8], np.int32), normal(3, 5, 4))),
    "add clip": (lambda a, i, u: a.at[i].add(u, mode="clip"), (X, np.array([1, 9, -8], np.int32), normal(3, 5, 4))),
    "set slice": (lambda a, u: a.at[:, 1:3].set(u), (X, normal(6, 2, 4))),
    "set [i, j]": (lambda a, i, j, u: a.at[i, j].set(u), (X, I3[:2], J3[:2], normal(2, 4))),
    "add scalar": (lambda a, i: a.at[i, 2].add(1.0), (X, I3)),
    "int add": (lambda a, i, u: a.at[i].add(u), (ints(6, 3), np.array([1, 3, 1], np.int32), ints(3, 3))),
    "dynamic_update_slice": (lambda a, u, i: lax.dynamic_update_slice(a, u, (i[0], 1, 0)), (X, normal(2, 3, 4), I3)),
    "dynamic_update_slice clamped": (lambda a, u, i: lax.dynamic_update_slice(a, u, (i[1], 4, -1)),
                                     (X, normal(2, 3, 4), I3)),
    "dynamic_slice clamped": (lambda a, i: lax.dynamic_slice(a, (i[1], 3, 0), (3, 3, 4)), (X, I3)),
}


@pytest.mark.parametrize("name", sorted(SCATTERS))
def test_scatter_and_dynamic_slices(name):
    fn, args = SCATTERS[name]
    check(fn, *args)


SYMBOLIC = {
    "x[:, i]": (lambda a, i: a[:, i % 5], ("f32[B,5,4]", "i32[3]")),
    "x[i]": (lambda a, i: a[i % a.shape[0]], ("f32[B,5,4]", "i32[3]")),
    "scatter": (lambda a, i: a.at[:, i % 5].add(1.0), ("f32[B,5,4]", "i32[3]")),
    "dynamic_slice": (lambda a, i: lax.dynamic_slice_in_dim(a, i[0], 2, 1), ("f32[B,5,4]", "i32[3]")),
    "sort": (lambda a, i: jnp.sort(a, 0) + i[0], ("f32[B,5,4]", "i32[3]")),
}


@pytest.mark.parametrize("name", sorted(SYMBOLIC))
def test_symbolic_indexing(name):
    fn, specs = SYMBOLIC[name]
    check(fn, normal(4, 5, 4), J3, specs=specs, more=[(normal(1, 5, 4), J3)])
    u = lambda b: normal(b, 2, 4)  # noqa: E731
    check(lambda a, v, i: lax.dynamic_update_slice(a, v, (0, i[0], 0)), normal(4, 5, 4), u(4), J3,
          specs=["f32[B,5,4]", "f32[B,2,4]", "i32[3]"], more=[(normal(1, 5, 4), u(1), J3)])


SPECIAL = np.array([[np.nan, 1.0, -np.inf, -0.0, 0.0, np.inf, -np.nan, 3.0, 0.0, -0.0]], np.float32)
SORTS = {
    "sort": (lambda a: jnp.sort(a, axis=1), X),
    "sort ties": (lambda a: jnp.sort(a, axis=0), np.round(X * 2)),
    "argsort": (lambda a: jnp.argsort(a, axis=1), X),
    "argsort ties": (lambda a: jnp.argsort(a, axis=-1, stable=True), np.round(X)),
    "argsort descending": (lambda a: jnp.argsort(-a, axis=-1), np.round(X)),
    "lexsort": (lambda a: jnp.lexsort((a, jnp.round(a * 0.3)), axis=-1), np.round(X)),
    "sort int": (lambda a: jnp.sort(a, axis=0), ints(5, 4, lo=-9, hi=9)),
    "sort bool": (lambda a: jnp.sort(a, axis=0), RNG.random((5, 4)) < 0.5),
    "sort u32": (lambda a: jnp.argsort(a), RNG.integers(0, 2**32, 9, dtype=np.uint64).astype(np.uint32)),
    "sort nan -0": (lambda a: (jnp.sort(a, -1), jnp.argsort(a, -1)), SPECIAL),
    "sort nan -0 f16": (lambda a: (jnp.sort(a, -1), jnp.argsort(a, -1)), SPECIAL.astype(np.float16)),
    "top_k": (lambda a: lax.top_k(a, 3), X),
    "top_k ties -0": (lambda a: lax.top_k(a, 2), np.round(X)),
    "top_k nan": (lambda a: lax.top_k(a, 6), SPECIAL),
    "top_k int": (lambda a: lax.top_k(a, 2), ints(5, 4, lo=-9, hi=9)),
    "median": (lambda a: jnp.median(a, axis=0), X),
    "approx_max_k": (lambda a: lax.approx_max_k(a, 2), X),
    "approx_min_k": (lambda a: lax.approx_min_k(a, 2, reduction_dimension=0), X),
}


@pytest.mark.parametrize("name", sorted(SORTS))
def test_sort(name):
    fn, x = SORTS[name]
    check(fn, x)


@pytest.mark.parametrize("opset", [13, 18])
def test_sort_without_bitcast(opset):  # older opsets: NaNs still sort last, through a second key
    check(lambda a: (jnp.sort(a, -1), jnp.argsort(a, -1)), SPECIAL, opset=opset)
