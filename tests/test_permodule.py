"""Per-module cross-check (``nnxc check --per-module``, ``crosscheck(..., per_module=True)``):
boundary values by module path, compared on XLA and onnxruntime against the traced graph, a
wrong lowering injected into one rule is blamed on the module where it runs, and modules
that passes changed at their boundary are reported as not comparable."""
from __future__ import annotations

import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nnxc
from nnxc.backends.onnx.table import ONNX_RULES
from nnxc.backends.xla.rules import XLA_RULES
from nnxc.runtime.permodule import BIN_LABELS, boundaries, match, measure, xla_values

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

from gpt import gpt  # noqa: E402


class Two(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(4, 8, rngs=rngs)
        self.b = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


@pytest.fixture(scope="module")
def gpt_graph():
    return nnxc.trace(gpt(), "i32[B,8]")


def _wrong_tanh(only_path=None):
    """An ONNX tanh rule that is 0.1% off (at ``only_path``, or everywhere)."""
    right = ONNX_RULES["tanh"]

    def wrong(b, node, xs):
        out = right(b, node, xs)
        if only_path is None or node.path == only_path:
            out = b.op("Mul", out, b.scalar(1.001, node.outputs[0].type.dtype))
        return out
    return wrong


def test_boundaries_are_the_values_other_modules_read_and_their_values_are_the_model_s():
    model = Two(nnx.Rngs(0))
    g = nnxc.trace(model, "f32[B,4]")
    b = boundaries(g)
    assert list(b) == ["a", "", "b"]  # execution order
    assert [len(v) for v in b.values()] == [1, 1, 1]
    assert [str(x.value.type) for x in (b["a"][0], b[""][0], b["b"][0])] == ["f32[B,8]", "f32[B,8]", "f32[B,3]"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    outs, vals = xla_values(g, [b["a"][0].value, b[""][0].value, b["b"][0].value], [x])
    h = np.asarray(model.a(x))
    np.testing.assert_allclose(vals[0], h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vals[1], np.tanh(h), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vals[2], np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outs[0], vals[2])  # the graph output is b's boundary value


def test_measure_bins_errors_relative_to_the_value_scale():
    ref = np.array([10.0, 10.0, 10.0, 10.0, -1.0])  # scale 10: errors of 2e-7, 2e-5, 0.1 of it
    got = ref + np.array([0, 2e-6, 2e-4, 1.0, 0])
    m = measure(ref, got, None, None)
    assert m["hist"] == [2, 1, 1, 1]
    assert m["rel"] == pytest.approx(1e-1) and m["abs"] == pytest.approx(1.0) and not m["ok"]
    assert measure(ref, got, 0.2, None)["ok"]  # within 0.2 of the scale
    assert measure(ref, ref.copy(), None, None) == {"abs": 0.0, "rel": 0.0, "hist": [5, 0, 0, 0],
                                                    "ok": True, "note": ""}
    ints = measure(np.array([1, 2, 3]), np.array([1, 2, 4]), None, None)
    assert ints["hist"] == [2, 0, 0, 1] and not ints["ok"]
    exact = measure(ref, np.nextafter(ref, np.inf), None, None, exact=True)
    assert not exact["ok"] and exact["note"] == "not bit-exact (promised)"
    assert len(BIN_LABELS) == len(m["hist"])


def test_clean_gpt_every_module_within_tolerance_and_xla_bit_exact(gpt_graph):
    g = nnxc.optimize(gpt_graph, "default")
    report = nnxc.crosscheck(g, sizes=(2,), per_module=True)
    assert report.ok
    mods = report.modules
    assert mods.ok and mods.first_bad == {}
    onnx_rows = [r for r in mods.rows if r["backend"] == "onnx"]
    xla_rows = [r for r in mods.rows if r["backend"] == "xla"]
    assert {r["path"] for r in onnx_rows} >= {"tok", "blocks.0.ln1", "blocks.1", "head"}
    assert all(r["abs"] == 0.0 for r in xla_rows)  # default passes are exact: bit for bit
    assert any(r["abs"] > 0 for r in onnx_rows)  # real comparisons: onnxruntime rounds differently
    assert all(r["rel"] < 1e-5 for r in onnx_rows)
    text = str(report)
    assert "every comparable module is within tolerance" in text
    assert "per module, size 2 (reference: the traced graph on XLA" in text


def test_value_names_map_every_top_level_value_of_the_export(gpt_graph):
    names: dict = {}
    model = nnxc.export_onnx(gpt_graph, value_names=names)
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    # (a jit_boundary's result is its constant: the export reads that constant instead)
    values = [v for node in gpt_graph.nodes if node.op != "jit_boundary" for v in node.outputs]
    assert any(node.op == "jit_boundary" for node in gpt_graph.nodes)
    assert all(v in names for v in values)
    assert names[gpt_graph.inputs[0]] == "tokens"
    # every intermediate not renamed into a graph output is a name the model still computes
    inner = [v for v in values if v not in gpt_graph.outputs]
    assert sum(names[v] in produced for v in inner) >= 0.9 * len(inner)


@pytest.mark.parametrize("only, first", [("blocks.1", "blocks.1"), (None, "blocks.0")])
def test_a_wrong_onnx_rule_is_blamed_on_its_module(gpt_graph, monkeypatch, only, first):
    """The GPT's gelu (tanh approximation) runs in the blocks themselves (path ``blocks.N``);
    no other module uses tanh."""
    assert {n.path for n in gpt_graph.nodes if n.op == "tanh"} == {"blocks.0", "blocks.1"}
    monkeypatch.setitem(ONNX_RULES, "tanh", _wrong_tanh(only))
    report = nnxc.crosscheck(gpt_graph, sizes=(2,), per_module=True)
    assert not report.ok and {r["backend"] for r in report.failures()} == {"onnx"}
    mods = report.modules
    assert mods.first_bad == {"onnx": first}
    assert "boundary value 2 of 3: f32[B,8,256]" in mods.first_bad_value["onnx"]  # the gelu output
    order = [r["path"] for r in mods.rows if r["backend"] == "onnx"]
    bad = [r["path"] for r in mods.rows if r["backend"] == "onnx" and not r["ok"]]
    assert bad[0] == first and order.index(first) > order.index("blocks.0.ln1")
    before = order[:order.index(first)]
    assert before and all(mods.row(p, "onnx")["ok"] for p in before)  # fine up to the wrong module
    row = mods.row(first, "onnx")
    assert row["hist"][2] > 0 and 1e-4 < row["rel"] < 2e-3  # 0.1% off through gelu
    if only == "blocks.1":
        assert "blocks.0.down" in before and mods.row("blocks.0", "onnx")["ok"]
    assert f"onnx: first module beyond tolerance: {first}" in str(report)


def test_a_wrong_fused_xla_rule_is_blamed_on_its_module_and_fused_modules_are_not_comparable(
        gpt_graph, monkeypatch):
    g = nnxc.optimize(gpt_graph, "fast")
    right = XLA_RULES["nnxc.gelu"]

    def wrong(node, args, dims):
        out = right(node, args, dims)
        return [out[0] * 1.001] if node.path == "blocks.1" else out
    monkeypatch.setitem(XLA_RULES, "nnxc.gelu", wrong)
    report = nnxc.crosscheck(g, sizes=(2,), per_module=True)
    assert not report.ok
    mods = report.modules
    assert mods.first_bad == {"xla": "blocks.1"}  # onnxruntime lowers nnxc.gelu itself: fine
    assert all(r["ok"] for r in mods.rows if r["backend"] == "onnx")
    # CSE shares blocks.0.attn's mask with blocks.1.attn: its boundary changed
    assert mods.not_comparable["blocks.0.attn"].startswith("not comparable: 1 boundary value(s) traced, ")
    assert mods.row("blocks.0.attn", "-")["ok"] is None
    assert "blocks.0.attn      " in str(mods) and "not comparable" in str(mods)
    # modules fused from many nodes into one still compare at their boundary
    assert mods.row("blocks.0.ln1", "xla")["ok"] and mods.row("blocks.0.up", "xla")["values"] == 1
    assert not mods.row("blocks.1.down", "xla")["ok"]  # downstream of the wrong gelu


def test_a_module_whose_reader_was_folded_into_it_is_not_comparable():
    """-O inference folds bn1 into linear1's weights: linear1's boundary value is bn1's output
    now. Compared with the traced linear1 output it would be far off; it is not comparable."""
    from mlp import mlp
    model = mlp()
    model.bn1.mean[...] = model.bn1.mean[...] + 0.5  # statistics that change the values
    model.bn1.var[...] = model.bn1.var[...] * 4.0
    model.eval()
    g = nnxc.optimize(nnxc.trace(model, "f32[B,64]"), "inference")
    report = nnxc.crosscheck(g, sizes=(2,), per_module=True)
    assert report.ok
    mods = report.modules
    assert mods.first_bad == {}
    assert mods.not_comparable["linear1"] == ("not comparable: passes merged bn1, which read its values, "
                                              "into other modules (its boundary values may carry their work)")
    assert mods.not_comparable["bn1"].startswith("not comparable: no boundary values after passes")
    assert mods.row("head", "xla")["ok"] and mods.row("head", "onnx")["values"] == 1
    # without that rule the folded value would be compared with the unfolded one, and be wrong
    traced = boundaries(g.meta["source"][0])
    folded = boundaries(g)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    _, (before,) = xla_values(g.meta["source"][0], [traced["linear1"][0].value], [x])
    _, (after,) = xla_values(g, [folded["linear1"][0].value], [x])
    assert not measure(before, after, None, None)["ok"]


def test_match_needs_the_same_count_and_types():
    model = Two(nnx.Rngs(0))
    g = nnxc.trace(model, "f32[B,4]")
    b = boundaries(g)
    pairs, bad = match(b, b)
    assert len(pairs) == 3 and bad == {}
    fewer = {k: v for k, v in b.items() if k != "a"}
    pairs, bad = match(b, fewer)
    assert [p[0].path for p in pairs] == ["", "b"]
    assert bad == {"a": "not comparable: no boundary values after passes (fused into another module or removed)"}
    retyped = nnxc.trace(Two(nnx.Rngs(0)), "f32[7,4]")
    _, bad = match(b, boundaries(retyped))
    assert bad["a"] == "not comparable: boundary value 0 is f32[B,8] traced, f32[7,8] after passes"


BAD_GPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {examples!r})
    from gpt import gpt as _gpt
    from nnxc.backends.onnx.table import ONNX_RULES

    _right = ONNX_RULES["tanh"]

    def _wrong_tanh(b, node, xs):  # 0.1% off, in blocks.1 only
        out = _right(b, node, xs)
        return b.op("Mul", out, b.scalar(1.001, "f32")) if node.path == "blocks.1" else out

    def gpt():
        ONNX_RULES["tanh"] = _wrong_tanh
        return _gpt()

    def clean():
        return _gpt()
""")


def test_cli_check_per_module_names_the_module(tmp_path):
    model = tmp_path / "bad_gpt.py"
    model.write_text(BAD_GPT.format(examples=EXAMPLES))
    r = cli_inprocess.run("check", f"{model}:gpt", "-i", "tokens:i32[B,8]", "--sizes", "2", "--per-module",
                          "-q", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "onnx: first module beyond tolerance: blocks.1 (boundary value 2 of 3: f32[B,8,256])" in r.stdout
    marks = {f[0]: f[-1] for f in map(str.split, r.stdout.splitlines()) if len(f) > 2 and f[1] == "onnx"}
    assert marks["blocks.1"] == "✗" and marks["head"] == "✗"
    assert all(marks[p] == "✓" for p in ("tok", "pos", "blocks.0", "blocks.0.down", "blocks.1.attn",
                                         "blocks.1.ln2", "blocks.1.up"))
    assert "output                       2 onnx" in r.stdout


def test_cli_per_module_and_repro_need_check_on_export(tmp_path):
    for flag in (["--per-module"], ["--repro", str(tmp_path / "r")]):
        r = cli_inprocess.run("export", os.path.join(EXAMPLES, "mlp.py") + ":mlp", "-i", "x:f32[B,64]",
                              "-o", str(tmp_path / "m.onnx"), "-q", *flag)
        assert r.returncode == 2
        assert r.stderr.strip() == f"nnxc: error: {flag[0]} needs --check"
        assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "r").exists()


def test_conv_net_modules_compare_on_onnx_through_the_layout_pass():
    """The ONNX layout pass leaves a conv net's intermediates in NCHW; per-module rows read
    each one from its NCHW source and transpose it back, so every module still compares."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import bench_models as bm
    m = bm.resnet(stages=(1,), width=4, classes=3)
    g = nnxc.optimize(nnxc.trace(m, "f32[B,16,16,3]"), "default")
    report = nnxc.crosscheck(g, sizes=(2,), per_module=True)
    assert report.ok
    rows = [r for r in report.modules.rows if r["backend"] == "onnx"]
    assert {r["path"] for r in rows} >= {"stem", "stem_bn", "blocks.0.conv1", "blocks.0.bn2", "fc"}
    assert all(r["ok"] and not r["note"] for r in rows), [(r["path"], r["note"]) for r in rows]
    assert all(0 < r["rel"] < 1e-5 for r in rows if r["path"] != "fc")  # real NCHW values compared
