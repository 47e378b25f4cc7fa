"""``reduce`` and ``reduce_window`` with a reducer of the user's own (lax.reduce / lax.reduce_window
with a function JAX does not recognise as a monoid, a non-identity initial value, or several
operands): the frontend keeps the reducer as a region, the IR text round-trips, XLA binds the
primitive again (bit for bit against ``jax.jit``), and ONNX (nnxc/backends/onnx/reducers.py)
pools / reduces a recognised monoid and folds any other reducer in XLA's CPU order.

Tolerances (ONNX vs jax.jit, f32): folded reducers, max / min / and / or and integer reducers
must be equal bit for bit; a float sum or product of a monoid reducer (ReduceSum, Conv
pooling) is compared with rtol=atol=1e-6 (measured: <= 5e-7). ``horner(a, x) = a/2 + x`` is not
associative, so a fold in any other order than XLA's would show (windows over several dims are
unpadded here: XLA's CPU emitter reorders some padded ones). Symbolic batch dims are run at
sizes 1 and 3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.errors import UnsupportedOpError
from nnxc.ir import parse
from nnxc.ir.verify import verify
from nnxc.runtime.onnx_io import onnx_session


def horner(a, x):
    return a * 0.5 + x


def first_max(a, x):
    """(value, index) of the larger value, the smaller index on ties: argmax as a reducer."""
    (av, ai), (xv, xi) = a, x
    pick = (av > xv) | ((av == xv) & (ai < xi))
    return lax.select(pick, av, xv), lax.select(pick, ai, xi)


def with_index(x, axis):
    return x, lax.broadcasted_iota(jnp.int32, x.shape, axis)


def sizes(spec: str, batch: int) -> list[int]:
    return [batch if d == "B" else int(d) for d in spec[spec.index("[") + 1:-1].split(",")]


def arrays(spec: str, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed + batch)
    shape, dtype = sizes(spec, batch), spec[:spec.index("[")]
    if dtype == "bool":
        return rng.standard_normal(shape) > 0
    if dtype.startswith("i"):
        return rng.integers(-9, 10, shape).astype(dtype.replace("i", "int"))
    return rng.standard_normal(shape).astype(np.float32)


def run(fn, spec: str, op: str, exact: bool = True):
    """Trace ``fn``; check the IR holds ``op`` with its region, round-trips and verifies; XLA
    bit-exact; ONNX exact or within 1e-6 -- at batch sizes 1 and 3 when ``spec`` has ``B``."""
    graph = nnxc.trace(fn, spec)
    nodes = [n for n in graph.nodes if n.op == op]
    assert nodes and all(len(n.regions) == 1 for n in nodes), graph.text()
    text = graph.text()
    again = parse(text)
    assert again.text() == text
    verify(graph), verify(again)
    exe, session = nnxc.compile(again), onnx_session(export_onnx(graph))
    for batch in ((1, 3) if "B" in spec else (1,)):
        x = arrays(spec, batch)
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jax.jit(fn)(x))]
        xla = [np.asarray(g) for g in jax.tree_util.tree_leaves(exe(x))]
        got = session.run(None, {session.get_inputs()[0].name: x})
        for w, xg, og in zip(want, xla, got):
            assert xg.dtype == w.dtype and xg.shape == w.shape and np.array_equal(xg, w, equal_nan=True)
            assert og.dtype == w.dtype and og.shape == w.shape, (og.dtype, og.shape, w.dtype, w.shape)
            if exact:
                np.testing.assert_array_equal(og, w)
            else:
                np.testing.assert_allclose(og, w, rtol=1e-6, atol=1e-6)


# -- reduce -------------------------------------------------------------------------------------

REDUCE = {
    # folded in row-major order of the reduced dims
    "horner_row": (lambda x: lax.reduce(x, 0.25, horner, (1,)), "f32[B,20]"),
    "horner_two_dims": (lambda x: lax.reduce(x, 0.25, horner, (0, 2)), "f32[3,B,7]"),
    # XLA splits reductions longer than 32 (windows of 32, each from the initial value)
    "horner_split": (lambda x: lax.reduce(x, 0.25, horner, (1,)), "f32[B,100]"),
    "horner_split_unevenly": (lambda x: lax.reduce(x, 0.25, horner, (1,)), "f32[B,63]"),
    "horner_split_twice": (lambda x: lax.reduce(x, 0.25, horner, (0,)), "f32[1100,B]"),
    "horner_split_two_dims": (lambda x: lax.reduce(x, 0.25, horner, (0, 1)), "f32[40,50]"),
    "add_init_split": (lambda x: lax.reduce(x, 1.0, lax.add, (1,)), "f32[B,70]"),  # the init counts 4 times
    "int_add_init": (lambda x: lax.reduce(x, np.int32(3), lax.add, (1,)), "i32[B,40]"),
    "int_custom": (lambda x: lax.reduce(x, np.int32(1), lambda a, v: a * 3 - v, (1,)), "i32[B,40]"),
    "bool_xor_chain": (lambda x: lax.reduce(x, True, lambda a, v: a != v, (1,)), "bool[B,9]"),
    # variadic: XLA never splits these, and the fold runs over a symbolic dim too
    "argmax": (lambda x: lax.reduce(with_index(x, 1), (-jnp.inf, 0), first_max, (1,)), "f32[B,50]"),
    "argmax_over_batch": (lambda x: lax.reduce(with_index(x, 0), (-jnp.inf, 0), first_max, (0,)), "f32[B,6]"),
    # one element per result (B = 1) is a reshape: XLA drops the initial value
    "two_horners_over_batch": (lambda x: lax.reduce(with_index(x, 1), (0.5, 7), lambda a, v: (
        horner(a[0], v[0]), a[1] * 3 + v[1]), (0,)), "f32[B,6]"),
    # monoids: the ONNX reductions, then the initial value once
    "max_init": (lambda x: lax.reduce(x, 0.5, lax.max, (1,)), "f32[B,100]"),
    "min_init_over_batch": (lambda x: lax.reduce(x, -0.5, lax.min, (0,)), "f32[B,5]"),
    # (a traced initial value: JAX binds reduce_and / reduce_or for a constant identity)
    "and_bool": (lambda x: lax.reduce(x, x[0, 0], lax.bitwise_and, (1,)), "bool[B,5]"),
    "or_bool": (lambda x: lax.reduce(x, x[0, 1], lax.bitwise_or, (0, 1)), "bool[B,5]"),
    "mul_int": (lambda x: lax.reduce(x, np.int32(2), lax.mul, (1,)), "i32[B,7]"),
}
REDUCE_CLOSE = {
    "add_init": (lambda x: lax.reduce(x, 1.0, lax.add, (1,)), "f32[B,30]"),
    "mul_init": (lambda x: lax.reduce(x, 2.0, lax.mul, (1,)), "f32[B,8]"),
}


@pytest.mark.parametrize("name", sorted(REDUCE))
def test_reduce_exact(name):
    fn, spec = REDUCE[name]
    run(fn, spec, "reduce")


@pytest.mark.parametrize("name", sorted(REDUCE_CLOSE))
def test_reduce_monoid_float_sums(name):
    fn, spec = REDUCE_CLOSE[name]
    run(fn, spec, "reduce", exact=False)


# -- reduce_window --------------------------------------------------------------------------------

WINDOWS = {
    # folded: each window from the initial value, row-major, padding and holes skipped
    "horner_valid": (lambda x: lax.reduce_window(x, 0.5, horner, (2, 2), (1, 1), "VALID"), "f32[B,12]"),
    "horner_strided": (lambda x: lax.reduce_window(x, 0.5, horner, (2, 3), (1, 2), "VALID"), "f32[B,12]"),
    "horner_padded_1d": (lambda x: lax.reduce_window(x, 0.5, horner, (1, 3), (1, 1), ((0, 0), (1, 1))), "f32[B,12]"),
    "horner_dilated": (lambda x: lax.reduce_window(x, 0.5, horner, (1, 3), (1, 2), ((0, 0), (2, 1)), (1, 2), (1, 2)),
                       "f32[B,12]"),
    "horner_negative_pad": (lambda x: lax.reduce_window(x, 0.5, horner, (1, 3), (1, 2), ((0, 0), (-2, 1)), (1, 2)),
                            "f32[B,12]"),
    "horner_disjoint": (lambda x: lax.reduce_window(x, 0.5, horner, (1, 4), (1, 4), ((0, 0), (1, 1))), "f32[B,12]"),
    "horner_long_window": (lambda x: lax.reduce_window(x, 0.5, horner, (1, 12), (1, 1), ((0, 0), (5, 6))),
                           "f32[B,12]"),  # 12 positions: an ONNX Loop
    "horner_over_batch": (lambda x: lax.reduce_window(x, 0.5, horner, (2, 1), (1, 1), "VALID"), "f32[B,5]"),
    "mul": (lambda x: lax.reduce_window(x, 1.0, lax.mul, (1, 3), (1, 1), "SAME"), "f32[B,12]"),
    "int_add": (lambda x: lax.reduce_window(x, np.int32(7), lax.add, (2, 2), (1, 1), "SAME"), "i32[B,12]"),
    "argmax_pool": (lambda x: lax.reduce_window(with_index(x, 1), (-jnp.inf, 0), first_max, (2, 3), (1, 2), "SAME"),
                    "f32[B,12]"),
    # monoids: pooling, then the initial value once per window
    "max_init": (lambda x: lax.reduce_window(x, 0.0, lax.max, (2, 3), (1, 2), "SAME"), "f32[B,12]"),
    "min_int": (lambda x: lax.reduce_window(x, np.int32(5), lax.min, (1, 3), (1, 1), "SAME"), "i32[B,12]"),
    "and_bool": (lambda x: lax.reduce_window(x, True, lax.bitwise_and, (2, 2), (1, 1), "SAME"), "bool[B,12]"),
    "or_bool": (lambda x: lax.reduce_window(x, x[0, 0], lax.bitwise_or, (1, 3), (1, 2), "VALID"), "bool[B,12]"),
}


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_reduce_window_exact(name):
    fn, spec = WINDOWS[name]
    run(fn, spec, "reduce_window")


def test_reduce_window_monoid_float_sum():
    run(lambda x: lax.reduce_window(x, 2.0, lax.add, (2, 3), (1, 1), "SAME"), "f32[B,12]", "reduce_window", exact=False)


# -- what the IR and the refusals say ------------------------------------------------------------

def test_reducer_region_in_the_ir():
    graph = nnxc.trace(lambda x: lax.reduce(with_index(x, 1), (-jnp.inf, 0), first_max, (1,)), "f32[B,8]")
    text = graph.text(locs=False)
    assert "= reduce(%x, %0, -inf:f32, 0:i32) {dimensions=(1,)} {" in text
    assert "^(%3: f32[], %4: i32[], %5: f32[], %6: i32[]):" in text
    bad = parse(text.replace("^(%3: f32[], %4: i32[]", "^(%3: f32[], %4: f32[]"))
    with pytest.raises(Exception, match="reduce reducer arguments"):
        verify(bad)


def test_reducer_with_control_flow_is_refused_on_onnx():
    def fn(x):
        return lax.reduce(x, 0.0, lambda a, v: lax.cond(v > 0, lambda: a + v, lambda: a - v), (1,))
    graph = nnxc.trace(fn, "f32[B,8]")
    x = arrays("f32[B,8]", 3)
    np.testing.assert_array_equal(nnxc.compile(graph)(x), jax.jit(fn)(x))
    with pytest.raises(UnsupportedOpError, match=r"reduce at .*test_onnx_reduce_body.py:\d+: .*cond \(control flow\)"):
        export_onnx(graph)


def test_custom_reduce_over_a_symbolic_dim_is_refused_on_onnx():
    fn = lambda x: lax.reduce(x, 0.25, horner, (1,))  # noqa: E731
    with pytest.raises(UnsupportedOpError, match="reduce .*over the symbolic dim T: XLA's CPU backend splits"):
        export_onnx(nnxc.trace(fn, "f32[2,T]"))
