"""Test-session setup: XLA compiles of identical programs are done once per test worker.

Many tests compile the same program: the zoo models in each of a dozen files, a fuzz
program at two stages that print the same StableHLO. JAX's in-memory cache never hits
there (each ``nnxc.compile`` and each test's ``jax.jit`` is a new function), so the run
uses JAX's persistent compilation cache, in a fresh directory per worker that is removed
when the worker ends. It changes no result: an entry is the executable XLA would build
again for the same program and compile options (the key hashes both, without the source
locations). The directory is private to one worker process, so no entry is read while
another process writes it; child processes the tests start do not use it.
"""
from __future__ import annotations

import shutil
import tempfile


def pytest_configure(config):
    import jax
    try:
        path = tempfile.mkdtemp(prefix="nnxc-test-xla-cache-")
    except OSError:  # no writable temporary directory: every test compiles its own programs
        return
    config._nnxc_xla_cache = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = getattr(config, "_nnxc_xla_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
