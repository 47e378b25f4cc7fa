"""ONNX rules for regions (scan -> Loop, while -> Loop, cond -> If) and for JAX's threefry
PRNG, which exports bit for bit (train-mode Dropout draws the same masks in onnxruntime)."""
from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from test_onnx_ops import check, normal


def _scan(c, xs):
    def step(c, x):
        c = jnp.tanh(c * 0.5 + x)
        return c, c * 2
    return lax.scan(step, c, xs)


def _layers(c, w):
    return lax.scan(lambda c, w: (jnp.tanh(c @ w), None), c, w)[0]


REGIONS = {
    "scan": (_scan, (normal(3), normal(5, 3))),
    "scan reverse": (lambda c, xs: lax.scan(lambda c, x: (c + x, c - x), c, xs, reverse=True),
                     (normal(3), normal(5, 3))),
    "scan without xs": (lambda c: lax.scan(lambda c, _: (c * 1.1, c), c, None, length=4), (normal(3),)),
    "layer stack": (_layers, (normal(2, 4), normal(3, 4, 4))),
    "fori_loop": (lambda x: lax.fori_loop(0, 5, lambda i, c: c * 2 + i, x), (normal(3),)),
    "fori_loop dynamic": (lambda x, n: lax.fori_loop(0, n, lambda i, c: c * 2 + i, x), (normal(3), np.int32(4))),
    "while_loop": (lambda x: lax.while_loop(lambda c: c[0] < 100, lambda c: (c[0] * 2 + 1, c[1] + 1), (x, 0)),
                   (np.float32(1.5),)),
    "cond true": (lambda p, x: lax.cond(p, lambda x: x + 1, lambda x: x * 2, x), (np.bool_(True), normal(3))),
    "cond false": (lambda p, x: lax.cond(p, lambda x: x + 1, lambda x: x * 2, x), (np.bool_(False), normal(3))),
    "cond passthrough": (lambda p, x: lax.cond(p, lambda x: x, lambda x: x * 2, x), (np.bool_(True), normal(3))),
    "cond in scan": (lambda x: lax.scan(lambda c, x: (lax.cond(x > 0, lambda: c + x, lambda: c), c), 0.0, x),
                     (normal(6),)),
    "nested scan": (lambda x: lax.scan(lambda c, x: (c, lax.scan(lambda d, y: (d + y, d * y), c, x)), jnp.float32(0), x),
                    (normal(3, 4),)),
}


@pytest.mark.parametrize("name", sorted(REGIONS))
def test_region(name):
    fn, args = REGIONS[name]
    check(fn, *args)


@pytest.mark.parametrize("index", [-1, 0, 1, 2, 5])
def test_switch(index):  # three branches: nested Ifs; out-of-range indices clamp
    branches = [lambda x: x + 1, lambda x: x * 2, lambda x: -x]
    check(lambda i, x: lax.switch(i, branches, x), np.int32(index), normal(3))


def test_layer_stack_is_one_loop_with_symbolic_batch():
    model = check(_layers, normal(2, 4), normal(3, 4, 4), specs=["f32[B,4]", "f32[3,4,4]"],
                  more=[(normal(1, 4), normal(3, 4, 4)), (normal(5, 4), normal(3, 4, 4))])
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Loop"] == 1 and ops["MatMul"] == 0  # the layer's MatMul is inside the body


RANDOM = {
    "uniform": (lambda s: jax.random.uniform(jax.random.key(s), (3, 5)), (np.int32(7),)),
    "normal": (lambda s: jax.random.normal(jax.random.key(s), (4,)), (np.int32(-7),)),
    "bits u8": (lambda s: jax.random.bits(jax.random.key(s), (2, 3), jnp.uint8), (np.int32(1),)),
    "bits u16": (lambda s: jax.random.bits(jax.random.key(s), (2, 3), jnp.uint16), (np.int32(1),)),
    "split": (lambda s: jax.random.split(jax.random.key(s), 4), (np.int32(3),)),
    "split 2d": (lambda s: jax.random.split(jax.random.key(s), (2, 3)), (np.int32(3),)),
    "fold_in": (lambda s, d: jax.random.fold_in(jax.random.key(s), d), (np.int32(3), np.uint32(11))),
    "key input": (lambda k: jax.random.uniform(k, (3,)), (jax.random.key(5),)),
    "batched keys": (lambda k: jax.vmap(lambda k: jax.random.normal(k, (3,)))(k),
                     (jax.random.split(jax.random.key(5), 4),)),
    "wrap_key_data": (lambda k: jax.random.uniform(jax.random.wrap_key_data(k), (3,)),
                      (jax.random.key_data(jax.random.key(9)),)),
    "PRNGKey": (lambda s: jax.random.PRNGKey(s), (np.int32(-3),)),
    "randint": (lambda s: jax.random.randint(jax.random.key(s), (5,), 0, 10), (np.int32(3),)),
    "bernoulli": (lambda s: jax.random.bernoulli(jax.random.key(s), 0.3, (5,)), (np.int32(3),)),
    "permutation": (lambda s: jax.random.permutation(jax.random.key(s), 6), (np.int32(3),)),
    "categorical": (lambda s: jax.random.categorical(jax.random.key(s), jnp.zeros((2, 5))), (np.int32(3),)),
    "truncated_normal": (lambda s: jax.random.truncated_normal(jax.random.key(s), -1, 1, (5,)), (np.int32(3),)),
    "iota_2x32_shape": (lambda s: jax._src.random.prng.iota_2x32_shape((3, 4))[1] + s, (np.uint32(1),)),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random(name):
    fn, args = RANDOM[name]
    check(fn, *args)


def test_random_symbolic_shape():
    fn = lambda x: jax.random.uniform(jax.random.key(0), x.shape) * x  # noqa: E731
    check(fn, normal(2, 3), specs=["f32[B,3]"], more=[(normal(1, 3),), (normal(5, 3),)])


def test_random_int64_seed():
    with jax.enable_x64(True):
        check(lambda s: jax.random.split(jax.random.key(s), 3), np.int64(2**40 + 5))


def test_scan_over_a_symbolic_length():
    fn = lambda c, xs: lax.scan(lambda c, x: (c + x, c * x), c, xs, reverse=True)  # noqa: E731
    check(fn, normal(3), normal(5, 3), specs=["f32[3]", "f32[T,3]"], more=[(normal(3), normal(1, 3))])


def test_dead_code_is_not_exported():
    """A while loop whose result nothing reads, inside a fori_loop body, reading a value of
    that body (fuzz seed 13275): onnxruntime failed to run the exported dead Loop ("Missing
    Input"). Nodes whose results are not used are not exported at all."""
    import nnxc
    from nnxc.runtime.onnx_io import onnx_session

    def f(x, y):
        def body(i, c):
            s = jnp.sum(c)

            def inner(state):
                j, k = state
                return j + 1, (k + jnp.power(jnp.abs(s) + 0.5, jnp.tanh(k)).astype(jnp.int32)) % 97

            lax.while_loop(lambda st: st[0] < 4, inner, (jnp.int32(0), i + 1))  # result unused
            return c * 0.5 + jnp.tanh(jnp.min(y)).astype(jnp.float16)
        return lax.fori_loop(0, 3, body, x), jnp.arctan(y)

    x = normal(6, 4, dtype=np.float16)
    y = normal(6, 4)
    g = nnxc.trace(f, "f16[6,4]", "f32[6,4]")
    model = nnxc.export_onnx(g)
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 1
    body = next(a.g for a in loops[0].attribute if a.name == "body")
    assert "Loop" not in [n.op_type for n in body.node]
    session = onnx_session(model)
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()], (x, y))))
    for o, w in zip(got, jax.jit(f)(x, y)):
        np.testing.assert_allclose(o.astype(np.float32), np.asarray(w, np.float32), rtol=1e-3)
