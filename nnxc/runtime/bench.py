"""Benchmarking helpers shared by tools/ and ``nnxc run``."""
from __future__ import annotations

import statistics
import time


def timings(fn, repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn, repeat: int) -> float:
    """Median wall-clock seconds of ``repeat`` calls of ``fn`` (timings here are noisy)."""
    return statistics.median(timings(fn, repeat))
