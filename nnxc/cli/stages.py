"""Stage lines on stderr (``  trace      ✓   0.41 s``), with a spinner on a terminal."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

# -- stage printing ------------------------------------------------------------------

class Stage:
    """What a stage's line says; the stage may change it while it runs."""

    def __init__(self, detail: str):
        self.detail = detail
        self.mark = "✓"  # "–" for a stage that finished without doing its work (deferred)


class Stages:
    """Prints each stage as it finishes: ``  trace      ✓  0.41 s``."""

    def __init__(self, quiet: bool = False):
        from ..runtime.progress import Progress
        self.quiet = quiet
        self.progress = Progress(quiet)  # a spinner while a stage runs, on a terminal only

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        t0 = time.perf_counter()
        state = Stage(detail)
        try:
            with self.progress.task(f"{name} {detail}".rstrip()):
                yield state
        except BaseException:
            self._line(name, "✗", time.perf_counter() - t0, state.detail)
            raise
        self._line(name, state.mark, time.perf_counter() - t0, state.detail)

    def _line(self, name, mark, seconds, detail):
        if not self.quiet:
            print(f"  {name:<10} {mark} {seconds:6.2f} s  {detail}".rstrip(), file=sys.stderr)
