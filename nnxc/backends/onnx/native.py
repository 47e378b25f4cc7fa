"""The default opset: the newest one at which every fused op nnxc emits runs on a native
onnxruntime kernel.

onnxruntime runs an op it has no kernel for at a given opset by expanding the op's ONNX
function (onnxruntime 1.32 has a CPU ``Attention`` kernel up to opset 24 and expands it into
~15 ops per head at 25 and later), so "the newest opset onnxruntime accepts" is not the
fastest one. Each candidate is probed once per onnxruntime version with one-node models.
"""
from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper

# (op, first opset that has it, attributes): the native forms of nnxc's fused ops
FUSED_FORMS = (
    ("Attention", 23, {}),
    ("RMSNormalization", 23, {"axis": -1}),
    ("RotaryEmbedding", 23, {}),
    ("LayerNormalization", 17, {"axis": -1}),
    ("Gelu", 20, {}),
)
_INPUTS = {"Attention": 3, "RMSNormalization": 2, "RotaryEmbedding": 3, "LayerNormalization": 3,
           "Gelu": 1}
_TYPES = {"RotaryEmbedding": (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)}


@functools.cache
def default_opset() -> int:
    """The newest opset nnxc exports at which no fused op is expanded by onnxruntime."""
    from .export import MIN_OPSET, max_opset
    for v in range(max_opset(), MIN_OPSET - 1, -1):
        if not expanded_at(v):
            return v
    return MIN_OPSET


def expanded_at(opset: int) -> list[str]:
    """The fused ops onnxruntime would not run natively at ``opset`` (of those it has)."""
    from .export import _kernel as kernel_support
    out = []
    for op, since, attrs in FUSED_FORMS:
        if opset < since or not _defined(op, opset):
            continue
        node = helper.make_node(op, [f"x{i}" for i in range(_INPUTS[op])], ["y0"], **attrs)
        types = _TYPES.get(op, (TensorProto.FLOAT,) * _INPUTS[op])
        how, _ = kernel_support(node, opset, types)
        if how == "expanded":
            out.append(op)
    return out


def _defined(op: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, opset, "")
        return True
    except onnx.defs.SchemaError:
        return False
