"""IR text that can be trusted to be the whole program: constants printed in full (or kept
in a sidecar) come back bit for bit and run; symbolic dims have one canonical form that
survives print -> parse -> verify -> compile; input specs like ``2*K`` run."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import nnxc
from nnxc.errors import NnxcError, SpecError
from nnxc.ir import TensorType, from_json, parse, print_graph, to_json, verify
from nnxc.ir.parser import ElidedConstantError, IRParseError
from nnxc.ir.printer import FULL_CONSTANTS_LIMIT, write_text
from nnxc.ir.types import DimError, DimExpr, canonical_dim, parse_dim, solve_dims


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(16, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.gelu(self.l1(x)))


class Big(nnx.Module):
    """Frozen, its weights are a 128 KiB constant: over the full-constants default."""

    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 512, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.l1(x))


MODELS = {
    "linear": (lambda: nnx.Linear(8, 5, rngs=nnx.Rngs(0)), "f32[B,8]", (3, 8)),
    "conv": (lambda: nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(1)), "f32[B,6,6,3]", (2, 6, 6, 3)),
    "mlp": (lambda: MLP(nnx.Rngs(2)), "f32[B,16]", (3, 16)),
    "big": (lambda: Big(nnx.Rngs(3)), "f32[B,64]", (2, 64)),
}


def _graphs(name):
    """The traced graph and the graph with its Params frozen into constants."""
    make, spec, shape = MODELS[name]
    g = nnxc.trace(make(), spec)
    frozen = nnxc.optimize(g, "default", freeze=nnx.Param)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return g, frozen, x


def _run(graph, x, state=None):
    return np.asarray(nnxc.compile(graph, state)(x))


# -- constants: printed in full, the parsed graph runs exactly like the traced one ------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_constants_text_runs_like_the_graph(name):
    g, frozen, x = _graphs(name)
    assert frozen.consts, "freezing makes constants"
    for graph in (g, frozen):
        text = print_graph(graph, full_constants=True)
        assert "elided<" not in text
        parsed = parse(text)
        verify(parsed)
        assert print_graph(parsed, full_constants=True) == text
        want = _run(graph, x)
        got = _run(parsed, x, graph.state())  # variables' values are not IR text
        assert np.array_equal(got, want)


def test_small_graphs_print_their_constants_by_default_large_ones_elide():
    _, small, x = _graphs("mlp")
    assert sum(np.asarray(c.data).nbytes for c in small.consts) <= FULL_CONSTANTS_LIMIT
    text = str(small)
    assert "elided<" not in text and small.text() == text
    assert np.array_equal(_run(parse(text), x), _run(small, x))

    _, big, x = _graphs("big")
    assert sum(np.asarray(c.data).nbytes for c in big.consts) > FULL_CONSTANTS_LIMIT
    assert "elided<" in str(big)
    assert "elided<" not in print_graph(big, full_constants=True)
    assert "elided<" in print_graph(small, full_constants=False)


def test_compiling_elided_constants_says_how_to_get_the_data():
    _, big, x = _graphs("big")
    parsed = parse(str(big))
    with pytest.raises(ElidedConstantError) as e:
        nnxc.compile(parsed)
    assert isinstance(e.value, NnxcError)
    msg = str(e.value)
    assert "elided" in msg and "full_constants=True" in msg and "sidecar" in msg
    assert "%c0" in msg and "f32[64,512]" in msg


def test_sidecar_restores_elided_constants(tmp_path):
    _, big, x = _graphs("big")
    path = tmp_path / "big.ir"
    side = write_text(big, path, sidecar=True)
    assert side == str(path) + ".safetensors"
    text = path.read_text()
    assert "elided<" in text
    parsed = parse(text, sidecar=side)
    verify(parsed)
    assert np.array_equal(_run(parsed, x), _run(big, x))
    assert print_graph(parsed, full_constants=True) == print_graph(big, full_constants=True)
    # a mapping works too; a missing or altered tensor is refused with the line
    from safetensors.numpy import load_file
    tensors = load_file(side)
    assert np.array_equal(_run(parse(text, sidecar=tensors), x), _run(big, x))
    key = next(iter(tensors))
    with pytest.raises(IRParseError, match="not in the sidecar"):
        parse(text, sidecar={})
    tampered = dict(tensors, **{key: tensors[key] + 1})
    with pytest.raises(IRParseError, match="another hash"):
        parse(text, sidecar=tampered)


def _const_graph(values: np.ndarray) -> nnxc.ir.Graph:
    table = values

    def f(x):
        return x + jax.lax.convert_element_type(table.reshape(-1)[:1], x.dtype).sum()
    g = nnxc.trace(f, "f32[2]")
    assert g.consts and np.asarray(g.consts[0].data).dtype == values.dtype
    return g


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "float8_e4m3fn",
                                   "float8_e5m2", "int8", "int32", "uint32", "bool"])
def test_constants_come_back_bit_for_bit(dtype, tmp_path):
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=40 * dt.itemsize, dtype=np.uint8)
    a = raw.view(dt) if dt != np.bool_ else raw.astype(bool)
    if dt.kind == "f" or dtype.startswith(("bfloat", "float8")):
        a = a[~np.isnan(a.astype(np.float64))][:20]  # NaN payloads are not text
        special = np.array([0.0, -0.0, np.inf, -np.inf], np.float64).astype(dt)
        if dtype == "float8_e4m3fn":
            special = special[:2]  # no infinities in e4m3fn
        a = np.concatenate([a, special])
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        g = _const_graph(np.ascontiguousarray(a).reshape(2, -1) if a.size % 2 == 0 else a)
        want = np.asarray(g.consts[0].data)
        for text in (print_graph(g, full_constants=True), str(g)):
            got = np.asarray(parse(text).consts[0].data)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
        side = write_text(g, tmp_path / "c.ir", sidecar=True, full_constants=False)
        got = np.asarray(parse((tmp_path / "c.ir").read_text(), sidecar=side).consts[0].data)
        assert got.tobytes() == want.tobytes() and got.dtype == want.dtype
    finally:
        jax.config.update("jax_enable_x64", False)


def test_json_follows_the_same_constants_policy():
    _, small, x = _graphs("mlp")
    doc = json.loads(to_json(small))
    assert all("data" in c for c in doc["consts"])
    assert np.array_equal(_run(from_json(to_json(small)), x), _run(small, x))
    assert all("digest" in c for c in json.loads(to_json(small, full_constants=False))["consts"])


# -- symbolic dims: one canonical form, parse -> same object, equal by value ------------

def test_dim_expressions_are_canonical_and_interned():
    assert parse_dim("1+B") is parse_dim("B + 1") is parse_dim("B+1")
    assert str(parse_dim("B - mod(-1, B)")) == "-mod(-1,B)+B"  # JAX's order, no spaces
    assert parse_dim("B*2") == "2*B" and parse_dim("(B+1)*(B-1)") == "B*B-1"
    assert parse_dim("max(2,B)") is parse_dim("max(B, 2)")
    assert parse_dim("non_negative(B-2)") is parse_dim("max(B-2,0)")
    assert canonical_dim("2*3") == 6 and canonical_dim("floordiv(2*B,2)") == "B"
    assert parse_dim("B*T+1").symbols == {"B", "T"}
    assert parse_dim("floordiv(B+1,2)").evaluate({"B": 4}) == 2
    assert parse_dim("-mod(-1,B)+B").evaluate({"B": 3}) == 1
    assert TensorType(("1+B", 3), "f32") == TensorType(("B+1", 3), "f32")
    assert str(TensorType(("B + 1", 3), "f32")) == "f32[B+1,3]"
    assert isinstance(TensorType(("B+1",), "f32").shape[0], DimExpr)
    with pytest.raises(DimError, match="column 3"):
        parse_dim("B+")
    with pytest.raises(DimError, match="unknown function"):
        parse_dim("foo(B)")


def test_jax_dims_print_canonically():
    scope = jax.export.SymbolicScope()
    for text in ["B - mod(-1, B)", "floordiv(B+1,2)", "2*B*T + B - 7", "3*min(B,T)+floordiv(T,2)"]:
        d = jax.export.symbolic_shape(text, scope=scope)[0]
        jax_text = str(d).replace(" ", "")
        assert canonical_dim(jax_text) == jax_text
        assert canonical_dim(jax_text) is canonical_dim(text)


def test_parser_reads_dims_with_commas_and_points_at_bad_ones():
    g = parse("graph @g(%x: f32[floordiv(B+1,2),max(B,3)]) {\n  return %x\n}\n")
    assert g.inputs[0].type.shape == (parse_dim("floordiv(B+1,2)"), parse_dim("max(3,B)"))
    with pytest.raises(IRParseError) as e:
        parse("graph @g(%x: f32[B,2*]) {\n  return %x\n}\n")
    assert e.value.line == 1 and e.value.col == len("graph @g(%x: f32[B,2*") + 1


SLICES = {
    "drop_first": lambda x: x[1:],
    "roll": lambda x: jnp.roll(x, 1, axis=0),
    "every_other": lambda x: x[::2],
    "reverse_tail": lambda x: x[:0:-1] * 2.0,
    "split_half": lambda x: x[: x.shape[0] // 2] + 1.0,
}


@pytest.mark.parametrize("name", sorted(SLICES))
def test_symbolic_slices_round_trip_verify_and_run(name):
    fn = SLICES[name]
    g = nnxc.trace(fn, "f32[B,2,3]")
    verify(g)
    text = str(g)
    parsed = parse(text)
    verify(parsed)
    assert str(parsed) == text
    assert [v.type for v in parsed.outputs] == [v.type for v in g.outputs]
    for b in (1, 3):
        x = np.arange(b * 6, dtype=np.float32).reshape(b, 2, 3)
        want = np.asarray(fn(x))
        for graph in (g, parsed):
            got = np.asarray(nnxc.compile(graph)(x))
            assert got.shape == want.shape and np.array_equal(got, want)


# -- input specs with dim expressions ---------------------------------------------------

def test_linear_dim_specs_run_end_to_end():
    def fn(x, y):
        return x.reshape(-1, 12) * 2.0, jnp.concatenate([y, x[::2, 0:3]], axis=0)

    g = nnxc.trace(fn, "f32[2*K,6]", "f32[K+1,3]")
    assert str(g.inputs[0].type) == "f32[2*K,6]" and str(g.inputs[1].type) == "f32[K+1,3]"
    parsed = parse(str(g))
    verify(parsed)
    for k in (1, 3):
        x = np.arange(2 * k * 6, dtype=np.float32).reshape(2 * k, 6)
        y = np.full((k + 1, 3), 7.0, np.float32)
        want = fn(x, y)
        for graph in (g, parsed):
            got = nnxc.compile(graph)(x, y)
            for a, b in zip(got, want):
                assert np.array_equal(np.asarray(a), np.asarray(b))
    exe = nnxc.compile(g)
    with pytest.raises(NnxcError, match=r"argument x: shape \(5, 6\).*2\*K"):
        exe(np.zeros((5, 6), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(NnxcError, match=r"argument y"):  # K=2 from x, so y needs 3 rows
        exe(np.zeros((4, 6), np.float32), np.zeros((4, 3), np.float32))


def test_linear_dim_specs_export_and_save(tmp_path):
    def fn(x):
        return x.reshape(-1, 12) + 1.0

    g = nnxc.trace(fn, "f32[2*K,6]")
    nnxc.save(g, tmp_path / "f.nnxc")
    art = nnxc.load(tmp_path / "f.nnxc")
    for k in (1, 3):
        x = np.arange(2 * k * 6, dtype=np.float32).reshape(2 * k, 6)
        assert np.array_equal(np.asarray(art(x)), np.asarray(fn(x)))


@pytest.mark.parametrize("spec", ["f32[K*K,6]", "f32[floordiv(B,2),3]", "f32[max(B,2)]"])
def test_specs_whose_symbols_cannot_be_read_off_shapes_are_refused(spec):
    with pytest.raises(SpecError, match="cannot be read"):
        nnxc.trace(lambda x: x, spec)


def test_specs_with_bad_dims_name_the_dim():
    with pytest.raises(SpecError, match=r"bad dim 'B\+'"):
        nnxc.trace(lambda x: x, "f32[B+,3]")
    # a symbol known from another input may appear in expressions
    g = nnxc.trace(lambda x, y: (x, y), "f32[B,T]", "f32[B*T]")
    assert str(g.inputs[1].type) == "f32[B*T]"


def test_solve_dims():
    assert solve_dims([("2*K", 6), ("K+1", 4)]) == {"K": 3}
    assert solve_dims([("B*T", 12), ("B", 3)]) == {"B": 3, "T": 4}
    with pytest.raises(DimError, match="not 2\\*K"):
        solve_dims([("2*K", 5)])
    with pytest.raises(DimError, match="B=2"):
        solve_dims([("B", 2), ("B", 3)])
