"""The IR on its own: attributes, text round-trip, verifier errors, networkx view."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxc
from nnxc.errors import VerifyError
from nnxc.ir import DType, EnumVal, Graph, Node, Record, SymDim, TensorType, Value, parse, verify
from nnxc.ir.attrs import format_attr
from nnxc.runtime.check import structured
from nnxc.runtime.crosscheck import random_inputs


@pytest.mark.parametrize("value, text", [
    (None, "None"), (True, "True"), (3, "3"), (-2.5, "-2.5"), (1e-05, "1e-05"),
    (float("inf"), "inf"), ("a\"b", '"a\\"b"'), ((), "()"), ((1,), "(1,)"),
    (((1,), (0,)), "((1,),(0,))"), (DType("bf16"), "bf16"), (SymDim("B"), "B"),
    (SymDim("2*B+1"), "dim(2*B+1)"), (EnumVal("Precision", "HIGHEST"), "Precision.HIGHEST"),
    (Record("ConvDimensionNumbers", (("lhs_spec", (0, 3, 1, 2)),)),
     "ConvDimensionNumbers(lhs_spec=(0,3,1,2))"),
])
def test_attribute_text_round_trips(value, text):
    assert format_attr(value) == text
    g = Graph("g", inputs=[Value(TensorType((2,), "f32"), "x")])
    node = Node("my_op", g.inputs, [TensorType((2,), "f32")], {"a": value})
    g.nodes.append(node)
    g.outputs = node.outputs
    printed = g.text()
    assert f"{{a={text}}}" in printed
    reparsed = parse(printed)
    assert reparsed.nodes[0].attrs["a"] == value
    assert reparsed.text() == printed


def _fn_zoo():
    def tree_out(x, y):
        return {"sum": x + y, "parts": (x * 2, [jnp.tanh(y)])}

    def loops(x, n):
        def body(c, xs):
            return c * xs + 1.0, jnp.cumsum(c)
        c, ys = jax.lax.scan(body, x[0], x)
        w = jax.lax.fori_loop(0, 3, lambda i, v: v + i, c)
        return jax.lax.cond(n > 0, lambda v: v * 2, lambda v: v - 1, w), ys

    def indexing(x, i):
        return x[i, 1:], x.at[0].set(5.0), jnp.argsort(x, axis=-1), jnp.take(x, jnp.array([2, 0]), axis=1)

    return [(tree_out, ("f32[B,3]", "f32[B,3]")), (loops, ("f32[4,3]", "i32[]")),
            (indexing, ("f32[4,3]", "i32[]"))]


@pytest.mark.parametrize("fn, specs", _fn_zoo(), ids=lambda x: getattr(x, "__name__", ""))
def test_function_graphs_round_trip_verify_and_run_exactly(fn, specs):
    g = nnxc.trace(fn, *specs)
    verify(g)
    text = str(g)
    g2 = parse(text)
    assert str(g2) == text
    verify(g2)
    args = structured(g, random_inputs(g, size=3))
    want = jax.jit(fn)(*args)
    got = nnxc.compile(g)(*args)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the parsed graph keeps the output structure and runs the same (small constants survive)
    got2 = nnxc.compile(g2)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_large_constants_are_elided_with_a_content_hash():
    table = np.arange(100, dtype=np.float32)
    g = nnxc.trace(lambda x: x + table, "f32[100]")
    text = g.text(full_constants=False)
    assert "elided<" in text and "dense<" not in text
    g2 = parse(text)
    assert g2.text(full_constants=False) == text
    with pytest.raises(nnxc.ir.ElidedConstantError, match="elided"):
        nnxc.compile(g2)(np.zeros(100, np.float32))
    assert "elided<" not in str(g)  # small graphs print their constants in full by default


def test_verifier_reports_the_offending_node():
    g = nnxc.trace(lambda x: jnp.sin(x) * 2.0, "f32[B,3]")
    verify(g)
    g.nodes[0].outputs[0].type = TensorType(("B", 4), "f32")
    with pytest.raises(VerifyError, match=r"sin .*: output types \(f32\[B,4\]\) but the op's rule gives \(f32\[B,3\]\)"):
        verify(g)


def test_verifier_catches_use_before_definition_and_region_mismatch():
    g = nnxc.trace(lambda x: jnp.cos(jnp.sin(x)), "f32[3]")
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="cos.*used before it is defined"):
        verify(g)

    def f(c, xs):
        return jax.lax.scan(lambda c, x: (c + x, c), c, xs)
    g = nnxc.trace(f, "f32[3]", "f32[5,3]")
    g.nodes[0].regions[0].args[1].type = TensorType((5, 3), "f32")
    with pytest.raises(VerifyError, match="scan body arguments"):
        verify(g)


def test_networkx_view_has_inputs_variables_and_edges():
    from flax import nnx
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    g = nnxc.trace(m, "f32[B,3]")
    dg = g.to_networkx()
    assert ("input", "inputs") in dg and ("var", "kernel") in dg and ("var", "bias") in dg
    ops = [dg.nodes[n]["op"] for n in dg if n[0] == "node"]
    assert ops[0] == "dot_general"
    import networkx as nx
    assert nx.has_path(dg, ("input", "inputs"), ("output", 0))
    assert nx.has_path(dg, ("var", "bias"), ("output", 0))
