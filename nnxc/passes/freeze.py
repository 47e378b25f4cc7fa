"""freeze: the variables an NNX Filter selects become constants; their updates are dropped.

    before:  var %l1.kernel: f32[4,8] Param             after:  const %c0: f32[4,8] = elided<..>
             %0 = dot_general(%x, %l1.kernel) {..}              %0 = dot_general(%x, %c0) {..}

Scalars become inline constants; PRNG keys become ``random_wrap`` of their key data (the
text form has no literal for key arrays). ``optimize(graph, freeze=nnx.Param)`` runs it
with that filter; the registered ``freeze`` pass freezes every variable.
"""
from __future__ import annotations

import numpy as np

from ..errors import NnxcError
from ..ir.attrs import Record
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .filters import matches
from .rewrite import Rebuild, fired


def freeze(graph: Graph, filter=...) -> Graph:
    chosen = [v for v in matches(graph, filter) if not v.meta.get("new")]
    if not chosen:
        return graph
    subst, prologue = {}, []
    for var in chosen:
        if var.data is None:
            raise NnxcError(f"cannot freeze {var.path!r}: the graph holds no value for it "
                            "(was it parsed from text? pass the state to compile instead)")
        subst[var.value] = _constant(var.value.type, var.data, var.path, prologue)
    rb = Rebuild(graph, subst=subst)
    rb.prologue = prologue
    new = rb.run()
    frozen = {v.path for v in chosen}
    new.variables = [v for v in new.variables if v.path not in frozen]
    new.updates = [(p, v) for p, v in new.updates if p not in frozen]
    fired("frozen", len(chosen))
    return new


def _constant(t: TensorType, data, path: str, prologue: list) -> Value:
    if t.dtype.startswith("key<"):
        import jax
        raw = np.asarray(jax.random.key_data(data))
        impl = jax.random.key_impl(data)  # a name, or a spec with one, depending on the release
        impl = Record("PRNGImpl", (("name", str(getattr(impl, "name", impl))),))
        node = Node("random_wrap", [_constant(TensorType.of(raw), raw, path, prologue)], [t],
                    {"impl": impl}, path=path)
        prologue.append(node)
        return node.outputs[0]
    return Value(t, name=path, data=np.asarray(data))
