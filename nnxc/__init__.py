"""nnxc: a compiler toolchain for Flax models (trace -> IR -> passes -> XLA / ONNX)."""
from __future__ import annotations

from ._version import __version__

from . import ir
from .backends.onnx import export_onnx
from .backends.xla.compile import Compiled, compile
from .errors import NnxcError, SpecError, UnsupportedOpError, VerifyError
from .frontend.trace import trace
from .passes import optimize
from .runtime.artifact import load, save
from .runtime.crosscheck import crosscheck
from .runtime.quantize import quantize_onnx

__all__ = ["trace", "optimize", "compile", "Compiled", "export_onnx", "save", "load", "crosscheck",
           "quantize_onnx", "ir", "NnxcError", "SpecError", "UnsupportedOpError", "VerifyError", "__version__"]
