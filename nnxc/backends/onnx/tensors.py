"""Every TensorProto an ONNX model holds, wherever it is: what the writer (save.py) and the
loader (nnxc.runtime.onnx_io) both walk."""
from __future__ import annotations

from collections import deque
from typing import Iterator

import onnx
from onnx import TensorProto


def tensor_places(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """``(where, tensor)`` for every TensorProto of a model: graph initializers and sparse
    initializers, node attributes (Constant values, ...) and the subgraphs they hold at any
    depth (If/Loop/Scan bodies), functions (nodes and attribute defaults), training_info.
    ``where`` names the place, e.g. ``graph.node[3](If).then_branch.initializer[0]``."""
    todo: deque = deque([("graph", model.graph)])
    for i, info in enumerate(model.training_info):
        todo.append((f"training_info[{i}].initialization", info.initialization))
        todo.append((f"training_info[{i}].algorithm", info.algorithm))
    yield from _graphs_tensors(todo)
    for i, f in enumerate(model.functions):
        where = f"functions[{i}]({f.domain}.{f.name})"
        yield from _attribute_tensors(f"{where}.attribute_proto", f.attribute_proto, todo)
        yield from _node_tensors(where, f.node, todo)
        yield from _graphs_tensors(todo)


def _graphs_tensors(todo: deque):
    """The tensors of the graphs in ``todo`` and of the subgraphs they hold (a queue, not
    recursion: nesting depth costs no stack)."""
    while todo:
        where, g = todo.popleft()
        for i, t in enumerate(g.initializer):
            yield f"{where}.initializer[{i}]", t
        for i, s in enumerate(g.sparse_initializer):
            yield f"{where}.sparse_initializer[{i}].values", s.values
            yield f"{where}.sparse_initializer[{i}].indices", s.indices
        yield from _node_tensors(where, g.node, todo)


def _node_tensors(where: str, nodes, todo: deque):
    for i, node in enumerate(nodes):
        yield from _attribute_tensors(f"{where}.node[{i}]({node.op_type})", node.attribute, todo)


def _attribute_tensors(where: str, attributes, todo: deque):
    """The tensors of ``attributes`` (whatever their declared type says: a reader may look
    at any filled field); the subgraphs they hold go to ``todo``."""
    for a in attributes:
        at = f"{where}.{a.name}"
        if a.HasField("t"):
            yield at, a.t
        for j, t in enumerate(a.tensors):
            yield f"{at}[{j}]", t
        sparse = ([(at, a.sparse_tensor)] if a.HasField("sparse_tensor") else []) + \
            [(f"{at}[{j}]", s) for j, s in enumerate(a.sparse_tensors)]
        for sat, s in sparse:
            yield f"{sat}.values", s.values
            yield f"{sat}.indices", s.indices
        if a.HasField("g"):
            todo.append((at, a.g))
        for j, g in enumerate(a.graphs):
            todo.append((f"{at}[{j}]", g))


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of a model (see ``tensor_places``)."""
    return (t for _, t in tensor_places(model))
