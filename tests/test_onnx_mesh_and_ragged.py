"""Placement ops and grouped matmuls: lax.with_sharding_constraint, in functions and NNX models
(a ``sharding_constraint`` node keeping its spec; XLA re-binds it, ONNX: identity), jax.device_put
to one device inside the traced function (a ``device_put`` node, an identity on both backends) and
lax.ragged_dot (a ``ragged_dot_general`` node; XLA re-binds it, ONNX gathers rhs per row and
multiplies the rows as a batch). XLA: bit for bit against jax.jit of the user's function; ONNX:
onnxruntime within ``rtol=1e-5, atol=1e-5`` (ragged_dot, f32, measured at k=64, 100 rows, 8
groups: at most 3.4e-7 of the largest output magnitude off, ~1e-5 absolute at magnitudes ~30)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P, SingleDeviceSharding

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.errors import UnsupportedOpError
from nnxc.ir.parser import parse
from nnxc.runtime.onnx_io import onnx_session

MESH = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))


def bits(x) -> tuple:
    a = np.asarray(x)
    return a.shape, a.dtype, a.tobytes()


def rows(n: int, cols: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + n).standard_normal((n, cols)).astype(np.float32)


def ops(graph) -> set:
    return {n.op for n in graph.walk()}


def run_both(graph, ref, calls, rtol=1e-5, atol=1e-5):
    """XLA: nnxc.compile(graph) equals ``ref`` (jax.jit of the user's function) bit for bit;
    ONNX: onnxruntime within tolerance. The IR text round-trips."""
    assert str(parse(str(graph))) == str(graph)
    exe = nnxc.compile(graph)
    session = onnx_session(export_onnx(graph))
    names = [i.name for i in session.get_inputs()]
    for args in calls:
        want = jax.tree_util.tree_leaves(ref(*args))
        assert [bits(g) for g in jax.tree_util.tree_leaves(exe(*args))] == [bits(w) for w in want]
        got = session.run(None, dict(zip(names, [np.asarray(a) for a in args])))
        for o, w in zip(got, want):
            assert o.shape == np.shape(w) and o.dtype == np.asarray(w).dtype
            np.testing.assert_allclose(o, np.asarray(w), rtol=rtol, atol=atol)


# -- sharding_constraint ------------------------------------------------------------------------

def test_with_sharding_constraint_in_a_one_device_mesh():
    def f(x, w):
        h = lax.with_sharding_constraint(jnp.tanh(x @ w), P("data", None))
        return lax.with_sharding_constraint(h * 2, NamedSharding(MESH, P(None, "data"))) + 1

    w = rows(4, 3, seed=7)
    with jax.set_mesh(MESH):
        g = nnxc.trace(f, "f32[B,4]", w)
        assert "sharding_constraint" in ops(g)
        assert 'NamedSharding(spec=("data",None))' in str(g)
        run_both(g, jax.jit(f), [(rows(1), w), (rows(3), w)])


def test_with_sharding_constraint_under_the_mesh_context_manager():
    def f(x):
        return lax.with_sharding_constraint(x * 3, P("data")) - 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # `with mesh:`: JAX prefers jax.set_mesh
        MESH.__enter__()
    try:
        g = nnxc.trace(f, "f32[B,4]")
        assert "sharding_constraint" in ops(g)
        run_both(g, jax.jit(f), [(rows(1),), (rows(3),)])
    finally:
        MESH.__exit__(None, None, None)


def test_with_sharding_constraint_to_a_single_device_outside_a_mesh():
    def f(x):
        return lax.with_sharding_constraint(x * 3, SingleDeviceSharding(jax.devices()[0])) - 1

    g = nnxc.trace(f, "f32[B,4]")
    assert "SingleDeviceSharding()" in str(g)
    run_both(g, jax.jit(f), [(rows(1),), (rows(3),)])


class ShardedBlock(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(4, 8, rngs=rngs)
        self.down = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        # (this flax has no nnx.with_sharding_constraint: models call JAX's)
        h = lax.with_sharding_constraint(nnx.gelu(self.up(x)), P("data", None))
        return lax.with_sharding_constraint(self.down(h), P("data"))


def test_with_sharding_constraint_in_an_nnx_model():
    model = ShardedBlock(nnx.Rngs(0))
    ref = nnx.jit(lambda m, x: m(x))
    with jax.set_mesh(MESH):
        g = nnxc.trace(model, "f32[B,4]")
        assert "sharding_constraint" in ops(g)
        run_both(g, lambda x: ref(model, x), [(rows(1),), (rows(3),)])


# -- device_put ---------------------------------------------------------------------------------

def test_device_put_to_one_device_inside_the_function():
    def f(x, y):
        a, b = jax.device_put((x * 2, y), jax.devices()[0])
        return jax.device_put(a + b) - jax.device_put(x, SingleDeviceSharding(jax.devices()[0]))

    g = nnxc.trace(f, "f32[B,4]", "f32[B,4]")
    assert "device_put" in ops(g)
    run_both(g, jax.jit(f), [(rows(1), rows(1, seed=5)), (rows(3), rows(3, seed=5))])


def test_device_put_on_a_one_device_mesh():
    def f(x):
        return jax.device_put(x + 1, NamedSharding(MESH, P("data"))) * 2

    with jax.set_mesh(MESH):
        g = nnxc.trace(f, "f32[B,4]")
        run_both(g, jax.jit(f), [(rows(1),), (rows(3),)])


def test_device_put_over_more_devices_is_refused_at_trace():
    from jax.sharding import AbstractMesh
    two = AbstractMesh((2,), ("x",), axis_types=(AxisType.Auto,))

    def f(x):
        return jax.device_put(x, NamedSharding(two, P("x")))

    with pytest.raises(UnsupportedOpError, match="placement on more than one device"):
        nnxc.trace(f, "f32[4,2]")


# -- ragged_dot ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[2, 0, 3, 1], [6, 0, 0, 0], [1, 1, 1, 0]])  # the last leaves 3 rows out
def test_ragged_dot(sizes):
    def ragged(x, w, sizes):
        return lax.ragged_dot(x, w, sizes)

    w = np.random.default_rng(1).standard_normal((4, 5, 3)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)
    g = nnxc.trace(ragged, "f32[6,5]", "f32[4,5,3]", "i32[4]")
    assert "ragged_dot_general" in ops(g)
    run_both(g, jax.jit(ragged), [(x, w, np.asarray(sizes, np.int32))])


def test_ragged_dot_over_a_symbolic_number_of_tokens():
    """A mixture-of-experts step: tokens sorted by expert, group sizes counted, a bias after."""
    def moe(x, w, expert):
        order = jnp.argsort(expert)
        sizes = jnp.bincount(expert, length=w.shape[0]).astype(jnp.int32)
        y = lax.ragged_dot(x[order], w, sizes)
        return jnp.zeros_like(y).at[order].set(y) + 0.5

    w = np.random.default_rng(3).standard_normal((3, 4, 2)).astype(np.float32)
    g = nnxc.trace(moe, "f32[B,4]", w, "i32[B]")
    assert "ragged_dot_general" in ops(g)
    calls = [(rows(n), w, np.random.default_rng(n).integers(0, 3, n).astype(np.int32)) for n in (1, 3, 7)]
    run_both(g, jax.jit(moe), calls)


def test_ragged_dot_general_of_another_form_is_refused_on_onnx():
    dn = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((1,), (1,)), ((), ())),
                                       lhs_ragged_dimensions=(1,), rhs_group_dimensions=())

    def f(x, w, sizes):  # ragged contracting dim: one [m,n] result per group
        return lax.ragged_dot_general(x, w, sizes, dn)

    g = nnxc.trace(f, "f32[2,6]", "f32[3,6]", "i32[4]")
    x, w = rows(2, 6), rows(3, 6)
    sizes = np.asarray([2, 1, 3, 0], np.int32)
    assert bits(nnxc.compile(g)(x, w, sizes)) == bits(jax.jit(f)(x, w, sizes))
    with pytest.raises(UnsupportedOpError, match="lhs_ragged_dimensions=\\(1,\\)"):
        export_onnx(g)
