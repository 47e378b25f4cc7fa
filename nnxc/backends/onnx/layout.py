"""ONNX graph post-pass: Transposes moved down the graph until they cancel; Conv + bias.

NNX convolutions are NHWC, ONNX's Conv is NCHW: the conv rule wraps each Conv in a
Transpose in and a Transpose out. ``sink_transposes`` walks the graph once, in order, and
treats each Transpose as a promise -- "this value is ``src`` with its axes permuted by
``perm``" -- kept as a node only where an op needs the value in its own layout.
Layout-agnostic ops (elementwise, max/min reductions, Concat, Softmax, Pad, ...) run on
``src`` instead, their other operands permuted to match (constants as initializers,
broadcast values by a Reshape), and their results carry the permutation on; two
Transposes in a row compose, and cancel when the composition is the identity. An NHWC conv
net pays one Transpose in (the input image) and one out: before a flatten that orders
features H, W, C, a mean (sums keep their layout: another order would round differently)
or an NHWC graph output::

    images -> T(0,3,1,2) -> Conv -> T(0,2,3,1) -> Add(bias[1,1,1,C]) -> Relu -> T(0,3,1,2) -> Conv
    images -> T(0,3,1,2) -> Conv -> Add(bias[1,C,1,1]) -> Relu -> Conv

A permutation is not moved through a node when its value is needed as it is anyway and
nothing after the node would cancel it (that would only add a second Transpose), and the
whole walk is undone if it leaves more Transposes than there were.

``fold_conv_bias`` then makes a per-channel Add after a Conv the Conv's bias input
(``Conv(x, w, b)``), the form onnxruntime's Conv + activation (+ residual Add) fusions
match. Both keep the function exactly (a Transpose moves no value; the bias is added to
the same sums, inside the Conv); graph inputs and outputs keep their names, types and
layout.
"""
from __future__ import annotations

import numpy as np

from .conv_bias import fold_conv_bias
from .graphtools import (Consts, all_names, attr, fresh, new_node, once, prune, set_attr, static_shapes,
                         subgraph_reads)

# Elementwise ops whose every element comes out the same wherever it sits in the buffer,
# so computing them in another layout changes no bit (a zero's sign from max-like ops
# aside): correctly rounded arithmetic, selections and comparisons, and the transcendentals
# onnxruntime computes with one vector kernel over the whole buffer. Log, Sin, Cos, Atan,
# Softplus, Mish, Elu, Selu and Celu are not here: their last elements take another code
# path and may round differently (tests/test_onnx_layout.py checks the ones here).
EXACT_ELEMENTWISE = {
    "Abs", "Neg", "Relu", "LeakyRelu", "PRelu", "Sign", "Floor", "Ceil", "Round", "Sqrt",
    "Reciprocal", "Softsign", "Cast", "Identity", "IsNaN", "IsInf", "Not", "BitwiseNot",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitShift",
}
KERNEL_ELEMENTWISE = {"Exp", "Tanh", "Sigmoid", "Erf", "Gelu", "HardSigmoid", "HardSwish"}
_SCALAR_INPUTS = {"Clip": (1, 2), "CastLike": (1,)}  # inputs that are scalars (or only a type)
# reductions whose result is the same in any layout; a sum over the same numbers in another
# memory order may round differently (onnxruntime's ReduceSum over NCHW's contiguous H, W vs
# NHWC's strided ones), so sums, means and norms keep their layout (the function exactly)
_REDUCE = {"ReduceMax", "ReduceMin"}
_ROUNDS = {"ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceSumSquare"}
_ONE_AXIS = {"Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "CumSum"}
_DEFAULT_AXIS = {"Softmax": -1, "LogSoftmax": -1, "Hardmax": -1}  # opset >= 13; else 0


def inverse(perm) -> list[int]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return out


def _identity(perm) -> bool:
    return list(perm) == list(range(len(perm)))


# -- sink_transposes ------------------------------------------------------------------------

class _Moved:
    """A value not computed as such: ``Transpose(src, perm)``, first made by ``origin``."""
    __slots__ = ("src", "perm", "origin")

    def __init__(self, src: str, perm: tuple, origin):
        self.src, self.perm, self.origin = src, perm, origin


class Sinker:
    """One forward walk; ``stops`` lists (node name, op, why) where a Transpose had to stay."""

    def __init__(self, nodes: list, consts: Consts, taken: set, keep, shapes=None):
        self.nodes, self.consts, self.taken = nodes, consts, taken
        self.keep = list(dict.fromkeys(keep))  # in order: the nodes made for them too
        self.keep_set = set(self.keep)
        self._shapes = shapes  # () -> {value name: static shape}, when needed
        self.moved: dict[str, _Moved] = {}
        self.made: dict[tuple, str] = {}  # (src, perm) -> the name it was materialized as
        self.out: list = []
        self.stops: list[tuple[str, str, str]] = []
        self.free: set[str] = set()  # names of the Transpose nodes dropped
        self.producer: dict[str, object] = {}  # value name -> the emitted node making it
        self.readers: dict[str, list] = {}
        for node in nodes:
            for n in set(node.input) | subgraph_reads(node):
                self.readers.setdefault(n, []).append(node)
        self.leads = _leads_to_transpose(nodes, self.readers)

    def run(self) -> list:
        for node in self.nodes:
            if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") \
                    and attr(node, "perm") is not None and self._compose(node):
                continue
            for name in sorted(subgraph_reads(node) & self.moved.keys()):
                self.ensure(name)  # a body reads the outer value by its name
            if any(n in self.moved for n in node.input):
                rule = SINK_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
                why = self._worth(node) if rule else (
                    "it would sum in another order" if node.op_type in _ROUNDS
                    else f"{node.op_type} depends on the layout")
                start = len(self.out)
                why = why or rule(self, node)
                if why is None:
                    continue
                del self.out[start:]  # a rule that gave up leaves nothing behind
                self.stops.append((node.name, node.op_type, why))
                for i, n in enumerate(node.input):
                    if n in self.moved:
                        node.input[i] = self.materialize(n)
            self._append(node)
        for name in self.keep:
            if name in self.moved:
                self._rename_into(name) or self.ensure(name)
        return self.out

    def _rename_into(self, name: str) -> bool:
        """An output whose permutations cancelled is its source: the node making the source
        makes it under the output's name (no Identity), when nothing reads the source by
        its name from a subgraph and it is no graph input, initializer or output itself."""
        m = self.moved[name]
        src = m.src
        if not _identity(m.perm) or src not in self.producer or src in self.keep_set \
                or any(src in subgraph_reads(n) for n in self.out):
            return False
        for node in self.out:
            node.input[:] = [name if n == src else n for n in node.input]
            node.output[:] = [name if n == src else n for n in node.output]
        self.producer[name] = self.producer.pop(src)
        del self.moved[name]
        for other in [k for k, v in self.moved.items() if v.src == src]:
            self.moved[other].src = name
        self.made = {(name if k[0] == src else k[0], k[1]): v for k, v in self.made.items()}
        return True

    def _worth(self, node) -> str | None:
        """Why not to move a permutation through ``node``: its input is needed as it is
        anyway (a reader that depends on the layout, a graph output, or two readers that
        would each need it back) and nothing after ``node`` cancels the permutation."""
        if _ends_well(node, self.leads):
            return None
        for n in node.input:
            if n not in self.moved:
                continue
            readers = self.readers.get(n, [])
            stuck = [r for r in readers if not _sinkable(r)]
            dead_ends = [r for r in readers if not _ends_well(r, self.leads)]
            if stuck or n in self.keep_set or len(dead_ends) > 1:
                return f"{n} is needed in its own layout anyway and nothing after cancels it"
        return None

    def _compose(self, node) -> bool:
        perm = tuple(attr(node, "perm"))
        m = self.moved.get(node.input[0])
        if m is not None and len(m.perm) != len(perm):
            return False
        src, q = (m.src, m.perm) if m else (node.input[0], tuple(range(len(perm))))
        self.moved[node.output[0]] = _Moved(src, tuple(q[p] for p in perm), m.origin if m else node)
        self.free.add(node.name)
        return True

    def materialize(self, name: str) -> str:
        """A name holding the value of moved ``name``: a Transpose node (one per source and
        permutation), a permuted initializer, or the source itself."""
        m = self.moved[name]
        if _identity(m.perm):
            return m.src
        key = (m.src, m.perm)
        if key not in self.made:
            if m.src in self.consts:
                self.made[key] = self.consts.derive(m.src, self.consts.array(m.src).transpose(m.perm))
            else:
                self.made[key] = name  # its producer is gone: the name is free
                self._emit("Transpose", [m.src], name, m.origin, perm=list(m.perm))
        return self.made[key]

    def ensure(self, name: str) -> None:
        """Make ``name`` itself hold its value (graph outputs, values read by name)."""
        got = self.materialize(name)
        if got != name:
            self._emit("Identity", [got], name, self.moved[name].origin)
        self.made[(self.moved[name].src, self.moved[name].perm)] = name
        del self.moved[name]

    def _emit(self, op: str, inputs: list, output: str, origin, **attrs) -> None:
        name = origin.name if origin.name in self.free else fresh(self.taken, origin.name)
        self.free.discard(name)
        self._append(new_node(op, inputs, output, name, origin, **attrs))

    def carry(self, node, perms: list, origin) -> None:
        """Emit ``node`` (its inputs already in the source layout); output ``i`` is its
        original value permuted by ``perms[i]``."""
        for i, (name, perm) in enumerate(zip(node.output, perms)):
            if not name or perm is None or _identity(perm):
                continue
            node.output[i] = fresh(self.taken, f"{name}.perm")
            self.moved[name] = _Moved(node.output[i], tuple(perm), origin)
        self._append(node)

    def operand(self, node, name: str, perm: tuple):
        """Input ``name`` of ``node`` in the source layout of ``perm``: (new name, None) or
        (None, why). A constant is permuted; a value broadcast along all but its
        non-1 axes, whose order the permutation keeps, is reshaped (no data moves)."""
        if not name:
            return name, None
        m = self.moved.get(name)
        if m is not None:
            return (m.src, None) if m.perm == perm else (None, "its inputs are permuted differently")
        back = self.made.get((name, tuple(inverse(perm))))
        if back is not None:  # already transposed the other way (a residual input)
            return back, None
        if name in self.consts:
            a = self.consts.array(name)
            if a.ndim > len(perm):
                return None, f"constant {name} has more axes ({a.ndim}) than the permuted input"
            if all(d == 1 for d in a.shape):
                return name, None  # a scalar, [1, 1, 1, 1]: the same whichever way round
            a = a.reshape((1,) * (len(perm) - a.ndim) + a.shape).transpose(inverse(perm))
            return self.consts.derive(name, a), None
        shape = (self._shapes() if self._shapes else {}).get(name)
        if shape is None or len(shape) > len(perm):
            return None, f"input {name} is neither permuted the same way nor a constant of known shape"
        if all(d == 1 for d in shape):
            return name, None
        full = (1,) * (len(perm) - len(shape)) + tuple(shape)
        big = [perm[a] for a in range(len(perm)) if full[a] != 1]  # their places after
        if big != sorted(big):
            return None, f"input {name} ({list(shape)}) would need its data reordered"
        new = [full[a] for a in inverse(perm)]
        src = self.producer.get(name)
        if src is not None and src.op_type == "Reshape" and src.domain in ("", "ai.onnx"):
            name = src.input[0]  # a reshape of a reshape: one is enough
        out = fresh(self.taken, f"{name}.perm")
        self._append(new_node("Reshape", [name, self.consts.new(np.asarray(new, np.int64), "shape")],
                           out, fresh(self.taken, f"{node.name}/reshape"), node))
        return out, None

    def _append(self, node) -> None:
        self.out.append(node)
        for o in node.output:
            self.producer[o] = node

    def first_moved(self, node) -> _Moved:
        return next(self.moved[n] for n in node.input if n in self.moved)


def _sinkable(node) -> bool:
    return node.domain in ("", "ai.onnx") \
        and (node.op_type == "Transpose" or node.op_type in SINK_RULES) \
        and not subgraph_reads(node)


def _absorbs(node) -> bool:
    """A reduction that drops axes: what it leaves is usually in the source's order."""
    return node.op_type in _REDUCE | {"ArgMax", "ArgMin"} and node.domain in ("", "ai.onnx") \
        and attr(node, "keepdims", 1) == 0


def _ends_well(node, leads: dict) -> bool:
    """A permuted value read by ``node`` needs no Transpose after it: ``node`` is one (they
    compose), drops the permuted axes, or is layout-agnostic and leads to such a node."""
    return node.op_type == "Transpose" or _absorbs(node) \
        or (_sinkable(node) and any(leads.get(o) for o in node.output))


def _leads_to_transpose(nodes: list, readers: dict) -> dict:
    """{value name: whether some reader of it ``_ends_well``}."""
    leads: dict[str, bool] = {}
    for node in reversed(nodes):
        for o in node.output:
            leads[o] = any(_ends_well(r, leads) for r in readers.get(o, ()))
    return leads


def _sink_elementwise(s: Sinker, node):
    m = s.first_moved(node)
    scalars = _SCALAR_INPUTS.get(node.op_type, ())
    ins = []
    for i, name in enumerate(node.input):
        if i in scalars:
            ins.append(name)
            continue
        new, why = s.operand(node, name, m.perm)
        if why:
            return why
        ins.append(new)
    node.input[:] = [s.materialize(n) if i in scalars and n in s.moved else n for i, n in enumerate(ins)]
    s.carry(node, [m.perm], m.origin)


def _axes(s: Sinker, node, rank: int):
    """The node's reduction axes (attribute or constant input 1), normalized; None: all."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        if node.input[1] not in s.consts:
            return None, "its axes are computed"
        axes = s.consts.array(node.input[1]).reshape(-1).tolist()
    if not axes:
        return None, None
    return [a % rank for a in axes], None


def _sink_reduce(s: Sinker, node):
    if any(n in s.moved for n in node.input[1:]):
        return "its axes are a permuted tensor"
    m = s.moved[node.input[0]]
    rank, keep = len(m.perm), attr(node, "keepdims", 1)
    axes, why = _axes(s, node, rank)
    if why:
        return why
    if axes is None:
        if attr(node, "noop_with_empty_axes", 0) or keep:
            node.input[0] = m.src
            return s.carry(node, [m.perm], m.origin)
        node.input[0] = m.src  # reduced to a scalar
        return s.carry(node, [None], m.origin)
    new = sorted(m.perm[a] for a in axes)
    if attr(node, "axes") is not None:
        set_attr(node, "axes", new)
    else:
        node.input[1] = s.consts.new(np.asarray(new, np.int64), "axes")
    node.input[0] = m.src
    s.carry(node, [m.perm if keep else _kept_perm(m.perm, axes)], m.origin)


def _kept_perm(perm, axes) -> list:
    """The permutation left on a reduction's result without ``axes`` (keepdims=0)."""
    src = [perm[a] for a in range(len(perm)) if a not in axes]
    order = sorted(src)
    return [order.index(v) for v in src]


def _sink_one_axis(s: Sinker, node):
    """Softmax, ArgMax, CumSum, ...: one axis (attribute, or CumSum's constant input)."""
    m = s.moved[node.input[0]]
    rank = len(m.perm)
    if any(n in s.moved for n in node.input[1:]):
        return "its axis is a permuted tensor"
    if node.op_type == "CumSum":
        if node.input[1] not in s.consts:
            return "its axis is computed"
        axis = int(s.consts.array(node.input[1]).reshape(-1)[0]) % rank
        dtype = s.consts.dtype(node.input[1])
        node.input[1] = s.consts.new(np.asarray(m.perm[axis], dtype), "axis")
    else:
        axis = attr(node, "axis", _DEFAULT_AXIS.get(node.op_type, 0)) % rank
        set_attr(node, "axis", m.perm[axis])
    perm = m.perm
    if node.op_type in ("ArgMax", "ArgMin") and not attr(node, "keepdims", 1):
        perm = _kept_perm(m.perm, [axis])
    node.input[0] = m.src
    s.carry(node, [perm], m.origin)


def _sink_concat(s: Sinker, node):
    m = s.first_moved(node)
    ins = []
    for name in node.input:
        new, why = s.operand(node, name, m.perm)
        if why:
            return why
        ins.append(new)
    node.input[:] = ins
    set_attr(node, "axis", m.perm[attr(node, "axis") % len(m.perm)])
    s.carry(node, [m.perm], m.origin)


def _sink_pad(s: Sinker, node):
    m = s.moved.get(node.input[0])
    if m is None or any(n in s.moved for n in node.input[1:]):
        return "its pads are a permuted tensor"
    rank = len(m.perm)
    if len(node.input) < 2 or node.input[1] not in s.consts:
        return "its pads are computed"
    pads = s.consts.array(node.input[1]).reshape(-1)
    if len(node.input) > 3 and node.input[3]:
        if node.input[3] not in s.consts:
            return "its axes are computed"
        axes = [int(a) % rank for a in s.consts.array(node.input[3]).reshape(-1)]
        node.input[3] = s.consts.new(np.asarray([m.perm[a] for a in axes], np.int64), "axes")
    else:
        if len(pads) != 2 * rank:
            return f"{len(pads)} pads for rank {rank}"
        new = np.zeros_like(pads)
        for a in range(rank):
            new[m.perm[a]], new[rank + m.perm[a]] = pads[a], pads[rank + a]
        node.input[1] = s.consts.derive(node.input[1], new)
    node.input[0] = m.src
    s.carry(node, [m.perm], m.origin)


SINK_RULES = {op: _sink_elementwise
              for op in [*EXACT_ELEMENTWISE, *KERNEL_ELEMENTWISE, *_SCALAR_INPUTS]}
SINK_RULES.update({op: _sink_reduce for op in _REDUCE})
SINK_RULES.update({op: _sink_one_axis for op in _ONE_AXIS})
SINK_RULES.update(Concat=_sink_concat, Pad=_sink_pad)


def sink_transposes(nodes: list, consts: Consts, taken: set, keep,
                    shapes=None) -> tuple[list, Sinker | None]:
    """``nodes`` with Transposes moved down and cancelled (see the module docstring), and
    the Sinker (its ``stops``: where a permuted value had to stop, and why); the original
    nodes and None if moving them would leave more Transposes. ``keep``: names (graph
    outputs) that must hold their value as they are; ``shapes``: a function returning
    {value name: static shape} (ONNX shape inference), called when an operand needs it."""
    copies = []
    for node in nodes:
        c = type(node)()
        c.CopyFrom(node)
        copies.append(c)
    s = Sinker(copies, consts, taken, keep, shapes)
    out = s.run()
    count = lambda ns: sum(n.op_type == "Transpose" for n in ns)  # noqa: E731
    return (out, s) if count(out) <= count(nodes) else (nodes, None)


class Permuted(str):
    """The ONNX name of a value the layout pass moved: the model does not hold it, but
    holds ``source``, and the value is ``Transpose(source, perm)``. (``export_onnx``'s
    ``value_names`` gives such names, so readers of intermediates can transpose them back.)"""

    def __new__(cls, name: str, source: str, perm):
        out = super().__new__(cls, name)
        out.source, out.perm = source, tuple(int(p) for p in perm)
        return out


def optimize_layout(nodes: list, weights: list, consts: list, inputs: list, outputs: list,
                    permuted: dict | None = None, opsets=(), functions=()) -> tuple[list, list, list]:
    """The passes above on an exported graph: returns (nodes, weights, consts) with only the
    initializers still read. ``inputs``: the graph inputs' ValueInfos; ``outputs``: graph
    output names (kept, with their layout); ``permuted``: a dict to fill with the values
    the model no longer holds as such, ``{name: (source, perm)}``: the value is
    ``Transpose(source, perm)`` and the model holds ``source``; ``opsets``, ``functions``:
    the model's, for shape inference. The model is the same whether ``permuted`` is asked."""
    names = [i.name for i in inputs]
    taken = set(names) | set(outputs)
    for node in nodes:
        taken |= all_names(node)
    taken.update(n for n, _ in weights)
    taken.update(n for n, _ in consts)
    store = Consts(weights, consts, taken)

    def shapes(ns):  # inferred once, if a rule asks
        return once(lambda: static_shapes(ns, inputs, store, opsets, functions))
    sinker = None
    if any(n.op_type == "Transpose" for n in nodes):
        nodes, sinker = sink_transposes(nodes, store, taken, outputs, shapes(nodes))
    nodes, _ = prune(fold_conv_bias(nodes, store, set(outputs), shapes(nodes)), outputs)
    weights, consts = store.finish(nodes, set(outputs))
    if sinker is not None and permuted is not None:
        there = set(names) | {n for n, _ in weights + consts} | {o for n in nodes for o in n.output}
        permuted.update((name, (m.src, m.perm)) for name, m in sinker.moved.items()
                        if m.src in there and name not in there and not _identity(m.perm))
    return nodes, weights, consts
