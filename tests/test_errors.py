"""Errors a user can act on: unsupported primitives are listed all at once with module path
and source line; malformed IR text names the line and column of the problem."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

import nnxc
from nnxc.ir import IRParseError, parse


def line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (a comment next to the offending call)."""
    with open(__file__) as f:
        lines = [i for i, text in enumerate(f, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, marker
    return lines[0]


def assert_here(loc: str, marker: str):
    """``loc`` is ``file:line`` of this file at ``marker`` (relative to the cwd when possible)."""
    file, line = loc.rsplit(":", 1)
    assert os.path.abspath(file) == os.path.abspath(__file__), loc
    assert int(line) == line_of(marker), loc


def host_double(x):
    return np.asarray(x) * 2


class Inner(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

    def __call__(self, x):
        x = jax.pure_callback(host_double, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # A
        return self.linear(x)


class Outer(nnx.Module):
    def __init__(self):
        self.inner = Inner()
        self.head = nnx.Linear(4, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        x = self.inner(x)
        jax.debug.callback(lambda v: None, x)  # B
        return self.head(x)


def test_unsupported_primitives_are_reported_together_with_path_and_line():
    with pytest.raises(nnxc.UnsupportedOpError) as info:
        nnxc.trace(Outer(), "f32[B,4]")
    err = info.value
    assert [(op, path) for op, path, _, _ in err.items] == [("pure_callback", "inner"),
                                                            ("debug_callback", "")]
    assert_here(err.items[0][2], "A")
    assert_here(err.items[1][2], "B")
    text = str(err)
    assert text.startswith("2 unsupported op(s) during trace:")
    assert f"pure_callback in module 'inner' at {err.items[0][2]}: host callbacks" in text
    assert f"debug_callback at top level at {err.items[1][2]}" in text
    assert "callback'" not in text  # the callbacks' own params are not listed as extra problems


def test_unsupported_primitives_inside_regions_and_functions():
    def f(c, xs):
        def body(c, x):
            y = jax.pure_callback(host_double, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # C
            return c + y, y
        c, ys = jax.lax.scan(body, c, xs)
        jax.debug.print("c = {}", c)  # D
        return c, ys

    with pytest.raises(nnxc.UnsupportedOpError) as info:
        nnxc.trace(f, "f32[3]", "f32[5,3]")
    items = info.value.items
    assert [op for op, *_ in items] == ["pure_callback", "debug_print"]
    assert_here(items[0][2], "C")
    assert_here(items[1][2], "D")


def test_supported_model_does_not_raise():
    g = nnxc.trace(Inner().linear, "f32[B,4]")
    assert [n.op for n in g.nodes] == ["dot_general", "reshape", "add"]


# -- malformed IR text ---------------------------------------------------------------

GOOD = """\
graph @f(%x: f32[B,4]) {
  var %l.kernel: f32[4,2] Param
  %0: f32[B,2] = dot_general(%x, %l.kernel) {dimension_numbers=(((1,),(0,)),((),()))} @l
  %1: f32[B,2] = integer_pow(%0) {y=3} @l
  return %1
}
"""


def test_good_text_parses_and_prints_back():
    assert str(parse(GOOD)) == GOOD


# (case, old, new, line of the error, the text the column must point at, message part)
BAD = [
    ("undefined value", "integer_pow(%0)", "integer_pow(%7)", 4, "%7)", "undefined value %7"),
    ("missing paren", "integer_pow(%0)", "integer_pow(%0", 4, "{y=3}", "expected ','"),
    ("attribute without =", "{y=3}", "{y 3}", 4, "3} @l", "expected '='"),
    ("bad attribute value", "{y=3}", "{y=@}", 4, "@} @l", "expected an attribute value"),
    ("unclosed attributes", "{y=3} @l", "{y=3 @l", 4, "@l", "expected ','"),
    ("value defined twice", "%1: f32[B,2] = integer_pow", "%0: f32[B,2] = integer_pow", 4,
     "%0: f32[B,2] = integer_pow", "defined twice"),
    ("unknown op result", "return %1", "return %9", 5, "%9", "undefined value %9"),
    ("not a variable", "dot_general(%x, %l.kernel)", "dot_general(%x, %l.kern)", 3, "%l.kern)",
     "undefined value %l.kern"),
]
# the parser points one column off for these (the space before the token / after it)
KNOWN_OFF = {
    "unknown dtype in a result": ("%1: f32[B,2] = integer_pow", "%1: q32[B,2] = integer_pow", 4,
                                  "q32[", "unknown dtype 'q32'"),
    "unknown dtype in a var": ("f32[4,2] Param", "f16x[4,2] Param", 2, "f16x[",
                               "unknown dtype 'f16x'"),
    "unknown dtype of a scalar": ("integer_pow(%0)", "integer_pow(%0, 2:i33)", 4, "i33)",
                                  "unknown dtype 'i33'"),
}


def _check(old, new, line, at, msg):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    with pytest.raises(IRParseError) as info:
        parse(text)
    err = info.value
    bad_line = text.splitlines()[line - 1]
    assert (err.line, err.col) == (line, bad_line.index(at) + 1), str(err)
    assert msg in err.msg
    assert f"line {line}, col {err.col}: " in str(err) and bad_line in str(err)


@pytest.mark.parametrize("case, old, new, line, at, msg", BAD, ids=[b[0] for b in BAD])
def test_malformed_ir_names_line_and_column(case, old, new, line, at, msg):
    _check(old, new, line, at, msg)


@pytest.mark.parametrize("case", sorted(KNOWN_OFF))
def test_malformed_dtype_column(case):
    _check(*KNOWN_OFF[case])


def test_truncated_text_names_the_end():
    text = GOOD.rsplit("\n", 2)[0]  # no closing brace
    with pytest.raises(IRParseError, match="unexpected end of input") as info:
        parse(text)
    assert info.value.line == len(text.splitlines())


def test_text_after_the_graph():
    with pytest.raises(IRParseError, match="text after the end of the graph") as info:
        parse(GOOD + "extra\n")
    assert (info.value.line, info.value.col) == (len(GOOD.splitlines()) + 1, 1)
