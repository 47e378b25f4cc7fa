"""Primitives from jnp.fft, jnp.linalg and jax.grad: bit-exact on XLA against the model's own
jax.jit (at two sizes of B where the shape allows), and on ONNX where a rule exists."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxc

XLA_CASES = {
    "fft": (lambda x: jnp.fft.fft(x), "f32[B,8]"),
    "ifft": (lambda x: jnp.fft.ifft(jnp.fft.fft(x)), "f32[B,8]"),
    "rfft": (lambda x: jnp.fft.rfft(x), "f32[B,8]"),
    "irfft": (lambda x: jnp.fft.irfft(jnp.fft.rfft(x), n=8), "f32[B,8]"),
    "fft2": (lambda x: jnp.fft.fft2(x), "f32[B,4,8]"),
    "solve": (lambda a, b: jnp.linalg.solve(a @ a.T + 4 * jnp.eye(4), b), ("f32[4,4]", "f32[4,3]")),
    "inv": (lambda a: jnp.linalg.inv(a @ a.T + jnp.eye(4)), "f32[4,4]"),
    "grad": (lambda x: jax.grad(lambda y: (jnp.sin(y) * y).sum())(x), "f32[B,8]"),
}


def _arrays(specs, b, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(b if d == "B" else int(d) for d in s[4:-1].split(","))
                                ).astype(np.float32) for s in specs]


@pytest.mark.parametrize("name", sorted(XLA_CASES))
def test_xla_is_bit_exact(name):
    f, specs = XLA_CASES[name]
    specs = (specs,) if isinstance(specs, str) else specs
    exe = nnxc.compile(nnxc.trace(f, *specs))
    for b in (1, 3):
        xs = _arrays(specs, b)
        np.testing.assert_array_equal(np.asarray(exe(*xs)), np.asarray(jax.jit(f)(*xs)))


def test_gradients_export_to_onnx():
    f = XLA_CASES["grad"][0]
    g = nnxc.trace(f, "f32[B,8]")
    assert any(n.op == "add_any" for n in g.walk())
    assert nnxc.crosscheck(g).ok
