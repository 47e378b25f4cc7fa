"""The IR text parser's one tokenizer, comma-list and record rules, and the constant-hash
cache that keeps printing and comparing graphs with big weights cheap."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import nnxc
from nnxc.ir import Graph, Node, Record, SymDim, TensorType, Value, parse, print_graph
from nnxc.ir import graph as graph_mod
from nnxc.ir.parser import IRParseError, _Cursor

_HEAD = "graph @g(%x: f32[3]) {\n"


def _kinds(line: str) -> list[tuple[str, str]]:
    cur, out = _Cursor(line, 1), []
    while not cur.at_end():
        tok = cur.next()
        out.append((tok.lastgroup, tok.group()))
    return out


def test_one_tokenizer_reads_every_part_of_a_line():
    line = ('%0: key<fry>[2*B] = nnxc.linear(%l1.kernel, -1.5e-3:f32, inf:f32) '
            '{s="a \\"b\\"", e=Precision.HIGH, r=R(x=1)} elided<09af> dense<[')
    assert _kinds(line) == [
        ("value", "%0"), ("char", ":"), ("key", "key<fry>"), ("char", "["), ("number", "2"),
        ("char", "*"), ("word", "B"), ("char", "]"), ("char", "="), ("word", "nnxc.linear"),
        ("char", "("), ("value", "%l1.kernel"), ("char", ","), ("number", "-1.5e-3"),
        ("char", ":"), ("word", "f32"), ("char", ","), ("number", "inf"), ("char", ":"),
        ("word", "f32"), ("char", ")"), ("char", "{"), ("word", "s"), ("char", "="),
        ("string", '"a \\"b\\""'), ("char", ","), ("word", "e"), ("char", "="),
        ("word", "Precision.HIGH"), ("char", ","), ("word", "r"), ("char", "="), ("word", "R"),
        ("char", "("), ("word", "x"), ("char", "="), ("number", "1"), ("char", ")"),
        ("char", "}"), ("elided", "elided<09af>"), ("dense", "dense<[")]
    # words that begin like a number stay words; strays are tokens of their own
    assert _kinds("info nan_count \u00b2 \t") == [
        ("word", "info"), ("word", "nan_count"), ("other", "\u00b2"), ("other", "\t")]
    assert _kinds('"open') == [("open_string", '"open')]


def _roundtrip(text: str) -> str:
    printed = print_graph(parse(text))
    assert print_graph(parse(printed)) == printed
    return printed


def test_symbols_that_begin_like_inf_or_nan_round_trip():
    x = Value(TensorType((3,), "f32"), "x")
    n = Node("foo", [x], [TensorType((3,), "f32")],
             {"a": SymDim("inference"), "b": (SymDim("nan_count"), 1)})
    g = Graph("g", inputs=[x], nodes=[n], outputs=n.outputs)
    assert "{a=inference, b=(nan_count,1)}" in str(g)
    assert _roundtrip(str(g)) == str(g)


def test_a_complex_scalar_output_round_trips():
    g = nnxc.trace(lambda x: (x, np.complex64(1 + 2j)), "f32[3]")
    assert "return (%x, (1.0,2.0):c64)" in str(g)
    assert _roundtrip(str(g)) == str(g)


def test_ops_named_like_statements_are_nodes():
    text = _HEAD + "  returned(%x)\n  yielded(%x)\n  var(%x)\n  return %x\n}\n"
    assert [n.op for n in parse(text).nodes] == ["returned", "yielded", "var"]
    assert _roundtrip(text) == text


def test_records_read_with_either_bracket_and_print_as_before():
    """Attributes print records as Name(k=v), output trees as Name{k=v} (golden files hold
    both); the parser has one record rule that reads either bracket in either place."""
    attrs = _HEAD + "  %0: f32[3] = sin(%x) {r=R(a=1, b=(2,)), s=S{a=E.M}}\n  return %0\n}\n"
    g = parse(attrs)
    assert g.nodes[0].attrs["r"] == Record("R", (("a", 1), ("b", (2,))))
    assert "{r=R(a=1, b=(2,)), s=S(a=E.M)}" in str(g)
    tree = _HEAD + "  return Out{a=%x, b=[%x]}\n}\n"
    assert "return Out{a=%x, b=[%x]}" in _roundtrip(tree)
    assert "return Out{a=%x}" in _roundtrip(_HEAD + "  return Out(a=%x)\n}\n")


@pytest.mark.parametrize("line2, message", [
    ("  %0: f32[3] = sin(%x) {r=R(a=1, a=2)}", r"line 2, col 34: field 'a' is given twice"),
    ("  return Out{a=%x, a=%x}", r"line 2, col 20: field 'a' is given twice"),
    ("  return Out[%x]", r"line 2, col 13: expected '\(' or '\{', found '\[%x\]'"),
    ("  %0: f32[3] = sin(%x %x)", r"line 2, col 23: expected ',' or '\)', found '%x\)'"),
    ("  %0: f32[3 B] = sin(%x)", r"line 2, col 13: bad dim '3 B': unexpected 'B'"),
    ("  return %x %x", r"line 2, col 13: expected ',' or the end of the line, found '%x'"),
    ("  %0: f32[3] = sin(%x) {a=dim(B}", r"line 2, col 31: unclosed dim\("),
    ("  %0: f32[3] = sin(%x) loc(\"m.py", r"line 2, col 33: unterminated string"),
    ("  %0: f32[3] = sin(%)", r"line 2, col 20: expected a value name like %x"),
])
def test_errors_name_line_and_column(line2, message):
    with pytest.raises(IRParseError, match=message):
        parse(_HEAD + line2 + "\n  return %x\n}\n")


def test_trailing_commas():
    """Tuples, lists, dicts and records may end in a comma; a 1-tuple must."""
    g = parse(_HEAD + "  %0: f32[3] = sin(%x) {a=(1,), b=R(x=1,),}\n  return [%0,]\n}\n")
    assert g.nodes[0].attrs == {"a": (1,), "b": Record("R", (("x", 1),))}
    with pytest.raises(IRParseError, match="a 1-tuple needs a trailing comma"):
        parse(_HEAD + "  return (%x)\n}\n")


# -- constant hashes: once per data array ------------------------------------------------------

def _big_const_graph(data: np.ndarray) -> Graph:
    c = Value(TensorType(data.shape, "f32"), data=data)
    n = Node("add", [c, c], [TensorType(data.shape, "f32")])
    return Graph("g", consts=[c], nodes=[n], outputs=n.outputs)


def test_printing_and_comparing_hash_each_constant_once(monkeypatch):
    calls = []
    sha = graph_mod._sha
    monkeypatch.setattr(graph_mod, "_sha", lambda a: calls.append(1) or sha(a))
    data = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)  # 256 KiB: elided
    g = _big_const_graph(data)
    first = print_graph(g)
    assert "elided<" in first and len(calls) == 1
    assert print_graph(g) == first and g == g and g.text(locs=False) == first
    assert nnxc.ir.printer.elided_arrays(g).keys() == {first.split("elided<")[1][:16]}
    assert len(calls) == 1  # printed three times, compared, sidecar keys: hashed once
    g.consts[0].data = data + 1  # new data: hashed once more, and the text says so
    second = print_graph(g)
    assert second != first and print_graph(g) == second and len(calls) == 2


def test_the_hash_cache_lets_go_of_freed_arrays():
    """The cache holds digests, not arrays: an entry goes when its array is freed."""
    data = np.ones((256, 256), np.float32)
    key = id(data)
    g = _big_const_graph(data)
    print_graph(g)
    assert graph_mod._DIGESTS[key][0]() is data
    del g, data
    gc.collect()
    assert key not in graph_mod._DIGESTS


def test_a_tuple_of_outputs_starting_with_a_scalar_constant_is_not_a_complex_scalar():
    """Fuzz seed 13497: ``return (0.0:f32, %0)`` was read as the complex scalar ``(re,im):c64``."""
    import nnxc
    for ret in ("(0.0:f32, %0)", "((1.0,2.0):c64, %0)", "((1.0:f32, %0), (1.0,-2.5):c64)"):
        text = f"graph @f(%x: f32[2]) {{\n  %0: f32[2] = neg(%x)\n  return {ret}\n}}\n"
        g = nnxc.ir.parse(text)
        assert str(nnxc.ir.parse(str(g))) == str(g)
        assert str(g).splitlines()[-2].strip() == f"return {ret}"
