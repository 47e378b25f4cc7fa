"""The ``nnxc`` command run inside the test process.

``run(*argv)`` returns what ``subprocess.run([nnxc, *argv], capture_output=True, text=True)``
would: the exit code, stdout and stderr. It calls ``nnxc.cli.main`` with both streams
redirected, so a test pays neither a new Python nor a new JAX per command (about 3 s each).
What only a real process shows stays in subprocess tests: the console script itself
(tests/test_cli.py), environment variables read when JAX starts (``XLA_FLAGS``), and files
read back by a fresh interpreter.

A model file may patch nnxc's rule tables to test a failure (tests/test_repro.py's bad
factories do); the tables are put back after each command, as a process exit would.

An internal error is not turned into an exit code: it propagates and fails the test with
its traceback, where a subprocess test would have asserted that stderr holds none."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*argv, cwd: str | os.PathLike | None = None) -> Result:
    from nnxc.backends.onnx.table import ONNX_RULES
    from nnxc.backends.xla.rules import XLA_RULES
    from nnxc.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    tables = [(t, dict(t)) for t in (ONNX_RULES, XLA_RULES)]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        os.chdir(here)
        for table, saved in tables:
            table.clear()
            table.update(saved)
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return Result(code, out.getvalue(), err.getvalue())
