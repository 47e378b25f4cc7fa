"""IR -> ONNX: ``export_onnx`` and the ``ONNX_RULES`` table (one emitter per IR op)."""
from .export import MIN_OPSET, OnnxKernelWarning, export_onnx, max_opset, supported_opsets
from .table import ONNX_RULES

__all__ = ["export_onnx", "OnnxKernelWarning", "ONNX_RULES", "MIN_OPSET", "max_opset", "supported_opsets"]
