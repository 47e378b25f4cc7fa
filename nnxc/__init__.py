"""nnxc: a compiler toolchain for Flax models (trace -> IR -> passes -> XLA / ONNX)."""
from __future__ import annotations

__version__ = "0.1.0"

from . import ir
from .errors import NnxcError, SpecError, UnsupportedOpError, VerifyError
from .frontend.trace import trace
from .backends.xla.compile import Compiled, compile

__all__ = ["trace", "compile", "Compiled", "ir", "NnxcError", "SpecError", "UnsupportedOpError",
           "VerifyError", "__version__"]

from .runtime.artifact import load, save  # noqa: E402 - needs the names above

__all__ += ["save", "load"]
