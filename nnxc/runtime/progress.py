"""Progress for long work (tracing, passes, compiling): a rich spinner or bar on a terminal.

    progress = Progress(quiet=args.quiet)
    with progress.task("passes", total=len(passes)) as advance:
        for name in passes:
            advance(description=name)          # moves the bar; the description is optional

Silent (``advance`` does nothing) when stderr is not a terminal, ``TERM=dumb``, or quiet.
Tasks may nest: they share one live display, which ends with the outermost task.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager


def _noop(n: int = 1, description: str | None = None) -> None:
    return None


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = not quiet and isatty() and os.environ.get("TERM") != "dumb"
        self._live = None

    @contextmanager
    def task(self, description: str, total: int | None = None):
        """Show ``description`` with a spinner (a bar when ``total`` is given) while the block runs."""
        if not self.enabled:
            yield _noop
            return
        owner = self._live is None
        if owner:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as RichProgress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)
            self._live = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                                      console=Console(file=self.stream), transient=True)
            self._live.start()
        live = self._live
        task = live.add_task(description, total=total, count="" if total is None else f"0/{total}")
        done = [0]

        def advance(n: int = 1, description: str | None = None) -> None:
            done[0] += n
            live.update(task, advance=n, count="" if total is None else f"{done[0]}/{total}",
                        **({"description": description} if description else {}))

        try:
            yield advance
        finally:
            live.remove_task(task)
            if owner:
                live.stop()
                self._live = None
