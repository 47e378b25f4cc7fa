"""Pausing Python's garbage collector around work that allocates many small objects.

Tracing and passes build graphs of thousands of nodes; each full collection would walk the
whole heap, so a pipeline would cost O(heap) per collection instead of O(graph).
"""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
