"""ONNX graph post-pass: a per-channel Add after a Conv becomes the Conv's bias input.

``Conv(x, w) + b[1, C, 1, 1]`` -> ``Conv(x, w, b[C])``: the form onnxruntime's Conv +
activation (+ residual Add) fusions match. The bias is added to the same sums, inside the
Conv (within the tolerance of any Conv).
"""
from __future__ import annotations

import numpy as np

from .graphtools import Consts, fresh, new_node, subgraph_reads


def fold_conv_bias(nodes: list, consts: Consts, keep: set, shapes=None) -> list:
    """``Add(Conv(x, w), b)`` -> ``Conv(x, w, b)`` when ``b`` is one number per output channel
    (shape [C, 1, 1] or [1, C, 1, 1]) and nothing else reads the Conv's result: a constant
    (a scalar too; ``Sub(Conv(x, w), b)`` takes ``-b``) becomes a [C] initializer, another
    value (a bias variable reshaped) a [C] Reshape of it. The Conv moves to the Add's place.
    ``shapes``: as for ``sink_transposes``, for the shapes of values that are not constants."""
    producer, readers = {}, {}
    for node in nodes:
        for o in node.output:
            producer[o] = node
        for n in set(node.input) | subgraph_reads(node):
            readers[n] = readers.get(n, 0) + 1
    at: dict[int, list] = {}  # id(Add) -> the nodes that replace it; a moved Conv -> []
    for node in nodes:
        if node.op_type not in ("Add", "Sub") or node.domain not in ("", "ai.onnx"):
            continue
        for y, b in [node.input] if node.op_type == "Sub" else [node.input, node.input[::-1]]:
            conv = producer.get(y)
            if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") \
                    or len(conv.input) > 2 or readers.get(y) != 1 or y in keep:
                continue
            made = _channel_bias(consts, conv, b, node, producer, shapes)
            if made is None:
                continue
            bias, pre = made
            fused = type(conv)()
            fused.CopyFrom(conv)  # the caller's nodes stay as they were
            fused.input.append(bias)
            fused.output[0] = node.output[0]
            at[id(node)], at[id(conv)] = [*pre, fused], []
            break
    return [m for n in nodes for m in at.get(id(n), [n])]


def _channel_bias(consts: Consts, conv, b: str, add, producer: dict, shapes):
    """``b`` as the Conv's bias input: (name, nodes computing it), or None when it is not one
    number per output channel."""
    w = conv.input[1]
    if w in consts:
        wshape, wtype = consts.shape(w), consts.dtype(w)
    else:
        wshape, wtype = (shapes() if shapes else {}).get(w), None
    if not wshape:
        return None
    rank, channels = len(wshape), wshape[0]

    def per_channel(shape) -> bool:
        full = (1,) * (rank - len(shape)) + tuple(shape)
        return len(shape) <= rank and all(d == 1 for i, d in enumerate(full) if i != 1)
    if b in consts:
        a = consts.array(b)
        if (wtype is not None and a.dtype != wtype) or not per_channel(a.shape) \
                or a.reshape(-1).shape[0] not in (1, channels):
            return None
        bias = np.broadcast_to(a.reshape(-1), (channels,))
        return consts.derive(b, -bias if add.op_type == "Sub" else bias.copy()), []
    shape = (shapes() if shapes else {}).get(b)
    if add.op_type == "Sub" or shape is None or not per_channel(shape) \
            or int(np.prod(shape)) != channels:
        return None
    src = producer.get(b)
    if src is not None and src.op_type == "Reshape" and src.domain in ("", "ai.onnx"):
        b = src.input[0]  # a [C] variable reshaped to [1, C, 1, 1]: reshaped once instead
    name = fresh(consts.taken, f"{b}.bias")
    shape_c = consts.new(np.asarray([channels], np.int64), "shape")
    return name, [new_node("Reshape", [b, shape_c], name, fresh(consts.taken, f"{conv.name}/bias"), add)]
