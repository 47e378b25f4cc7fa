"""The test run's own setup (tests/conftest.py): identical XLA programs compile once per worker,
from a cache directory private to the worker, with unchanged results."""
from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import nnxc


class _Hits:
    def __init__(self):
        self.count = 0

    def __call__(self, event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self)


def _program(seed: int):
    """A new Python function each call (so JAX's in-memory caches cannot hit), same program."""
    def f(x, w):
        return jnp.tanh(x @ w) * 0.5 + jnp.sin(x[:, :3].sum()) + seed
    return f


def test_the_cache_directory_is_private_to_this_process_and_temporary():
    path = jax.config.jax_compilation_cache_dir
    assert path and os.path.isdir(path)
    assert os.path.dirname(path) == tempfile.gettempdir()
    assert os.path.basename(path).startswith("nnxc-test-xla-cache-")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0


def test_a_program_compiled_again_is_read_from_the_cache_with_the_same_bits():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    with _Hits() as hits:
        first = np.asarray(jax.jit(_program(1234))(x, w))
        assert hits.count == 0  # nothing else compiles this program
        second = np.asarray(jax.jit(_program(1234))(x, w))
        assert hits.count == 1
        exe = nnxc.compile(nnxc.trace(_program(1234), x, w))
        third = np.asarray(exe(x, w))
        again = np.asarray(nnxc.compile(nnxc.trace(_program(1234), x, w))(x, w))
    assert hits.count >= 2  # the second nnxc.compile of the graph at least
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(third, first)
    np.testing.assert_array_equal(again, first)
