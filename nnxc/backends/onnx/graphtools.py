"""What the passes over an exported ONNX graph share (``layout.py``, ``conv_bias.py``): its
initializers as arrays (``Consts``), fresh names, node attributes, static shapes."""
from __future__ import annotations

import re

import numpy as np
from onnx import helper

from .builder import host_array

_ANONYMOUS = re.compile(r"c\d+")  # the builder's unnamed constants


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node, name, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def all_names(node) -> set:
    """Every value and node name in ``node`` and its subgraphs."""
    names = {node.name, *node.input, *node.output}
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names.update(v.name for v in [*g.input, *g.output, *g.initializer])
            for n in g.node:
                names |= all_names(n)
    return names


def subgraph_reads(node) -> set:
    """Names the node's subgraphs (Loop / If / Scan bodies) read, their own included."""
    names: set = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names.update(o.name for o in g.output)
            for n in g.node:
                names.update(n.input)
                names |= subgraph_reads(n)
    return names


class Consts:
    """The model's initializers, ``(name, array)`` weights and constants, as the passes
    read and derive them. A derived initializer (a permuted or reshaped copy) is named
    after the one it comes from: ``<name>.folded``, or the name itself when nothing reads
    the original any more and it was folded or unnamed already."""

    def __init__(self, weights: list, consts: list, taken: set):
        self.data = {n: (x, True) for n, x in weights}
        self.data.update((n, (x, False)) for n, x in consts)
        self.order = [n for n, _ in weights] + [n for n, _ in consts]
        self.base: dict[str, str] = {}  # derived name -> the initializer it came from
        self.taken = taken

    def __contains__(self, name) -> bool:
        return name in self.data

    def array(self, name: str) -> np.ndarray:
        return np.asarray(host_array(self.data[name][0]))

    def _plain(self, name: str):
        """The data, or its host copy when it has no numpy dtype (a PRNG key, a list)."""
        x = self.data[name][0]
        if hasattr(x, "shape") and hasattr(x, "dtype") and not str(x.dtype).startswith("key<"):
            return x
        return self.array(name)

    def shape(self, name: str) -> tuple:
        return tuple(self._plain(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._plain(name).dtype)

    def derive(self, name: str, array: np.ndarray) -> str:
        base = self.base.get(name, name)
        new = fresh(self.taken, base if base.endswith(".folded") else f"{base}.folded")
        self.data[new] = (np.ascontiguousarray(array), self.data[name][1])
        self.order.append(new)
        self.base[new] = base
        return new

    def new(self, array: np.ndarray, hint: str = "c") -> str:
        name = fresh(self.taken, hint)
        self.data[name] = (np.asarray(array), False)
        self.order.append(name)
        return name

    def finish(self, nodes: list, read: set) -> tuple[list, list]:
        """(weights, consts) that ``nodes`` or ``read`` (outputs, subgraphs) use; a derived
        initializer takes its original's name when that is no longer used and was a folded
        or unnamed constant."""
        used = set(read)
        for node in nodes:
            used.update(node.input)
            used |= subgraph_reads(node)
        rename = {}
        for new, base in self.base.items():
            if new in used and base not in used and base not in rename.values() \
                    and (base.endswith(".folded") or _ANONYMOUS.fullmatch(base)):
                rename[new] = base
        for node in nodes:
            for i, n in enumerate(node.input):
                if n in rename:
                    node.input[i] = rename[n]
        weights, consts = [], []
        for name in self.order:
            if name not in used:
                continue
            x, weight = self.data[name]
            (weights if weight else consts).append((rename.get(name, name), x))
        return weights, consts


def fresh(taken: set, base: str) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def new_node(op: str, inputs: list, output: str, name: str, like, **attrs):
    """A new node with the metadata (module path, source line) of ``like``."""
    node = helper.make_node(op, inputs, [output], name=name, **attrs)
    node.metadata_props.extend(like.metadata_props)
    return node


def once(fn):
    """``fn`` called at most once, when first needed."""
    got = []
    return lambda: got[0] if got else got.append(fn()) or got[0]


def prune(nodes: list, outputs) -> tuple[list, set]:
    """``nodes`` without those whose results nothing reads (rules may leave some; a Reshape
    replaced by another), and the names the kept ones and ``outputs`` read."""
    read, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in read for o in node.output):
            kept.append(node)
            read.update(node.input)
            read |= subgraph_reads(node)
    return kept[::-1], read


def static_shapes(nodes: list, inputs: list, store: Consts, opsets=(), functions=()) -> dict:
    """{value name: shape} for the values ONNX shape inference gives a static shape."""
    from onnx import numpy_helper, shape_inference
    small = [n for n in store.data if np.issubdtype(store.dtype(n), np.integer)
             and int(np.prod(store.shape(n))) <= 64]  # shapes, axes: inference reads them
    infos = list(inputs) + [helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(store.dtype(n)), store.shape(n))
        for n in store.data if n not in small]
    graph = helper.make_graph(nodes, "shapes", infos, [],
                              [numpy_helper.from_array(store.array(n), n) for n in small])
    model = helper.make_model(graph, functions=list(functions),
                              **({"opset_imports": list(opsets)} if opsets else {}))
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes: operands stay as they are
        return {}
    out = {}
    for v in inferred.graph.value_info:
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[v.name] = tuple(d.dim_value for d in t.shape.dim)
    return out
