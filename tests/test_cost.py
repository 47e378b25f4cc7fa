"""Compiled.cost() and nnxc compile --cost: XLA's cost and memory analysis, loops counted
with their trip counts (and XLA's own once-per-body figure), per-module FLOPs, JSON."""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import nnxc
from nnxc.ir.summary import module_table

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
from mlp import mlp  # noqa: E402
from scan_gpt import scan_gpt  # noqa: E402



def _ir_total(g, dims) -> int:
    return sum(r["flops"] for r in module_table(g, dims))


def _key_bytes(v) -> int:
    t = v.value.type
    n = int(np.prod([d for d in t.shape], dtype=np.int64))
    if t.dtype.startswith("key"):
        return 8 * n  # threefry keys: two uint32
    return n * np.dtype(nnxc.ir.types.to_dtype(t.dtype)).itemsize


def test_mlp_cost_has_no_loops_and_matches_the_summary():
    g = nnxc.trace(mlp(), "f32[B,64]")
    exe = nnxc.compile(g)
    r = exe.cost(dims={"B": 4})
    assert r.dims == {"B": 4} and r.loops == []
    assert r.flops == r.flops_xla > 0  # no loops: one figure
    assert abs(r.flops - _ir_total(g, {"B": 4})) <= 0.05 * r.flops
    assert r.flops_ir == _ir_total(g, {"B": 4})
    xla = exe.cost_analysis(jax.ShapeDtypeStruct((4, 64), np.float32))
    assert r.flops_xla == round(xla["flops"]) and r.bytes_accessed_xla == round(xla["bytes accessed"])
    # the executable's arguments are the variables the graph reads (jax.jit drops unused
    # arguments: the RNG state of the dropout, off in eval mode) and the input, byte for byte
    used = {id(x) for n in g.walk() for x in n.inputs}
    read = [v for v in g.variables if id(v.value) in used]
    assert 0 < len(read) < len(g.variables)
    assert r.memory["arguments"] == sum(_key_bytes(v) for v in read) + 4 * 64 * 4
    assert r.memory["outputs"] == 4 * 10 * 4
    assert r.memory["peak"] >= r.memory["arguments"]
    # the same report from input shapes instead of dims
    again = exe.cost(jax.ShapeDtypeStruct((4, 64), np.float32))
    assert again.to_dict() == r.to_dict()
    assert exe.cost(dims={"B": 8}).flops > r.flops


def test_scanned_gpt_counts_the_loop_with_its_trip_count():
    g = nnxc.trace(scan_gpt(), "i32[B,8]")
    r = nnxc.compile(g).cost(dims={"B": 2})
    assert [(lp["op"], lp["trip_count"], lp["body"]) for lp in r.loops] == [("scan", 4, "blocks")]
    ir = _ir_total(g, {"B": 2})
    assert r.flops_ir == ir
    assert r.flops >= r.flops_xla
    assert r.flops > 2.5 * r.flops_xla  # XLA's figure has one of the four layers
    assert abs(r.flops - ir) <= 0.03 * ir, (r.flops, ir)
    assert r.bytes_accessed > r.bytes_accessed_xla and r.transcendentals > r.transcendentals_xla
    rows = {row["module"]: row for row in r.modules}
    assert rows["blocks"]["flops"] > 0.9 * r.flops_ir  # the stack is nearly all of it
    text = r.format()
    assert "with trip counts" in text and "XLA (loops once)" in text
    assert f"{r.flops:,}" in text and f"{r.flops_xla:,}" in text
    assert "scan @<top> over blocks: 4 trips" in text


@pytest.mark.slow  # two more scanned GPTs compiled; test_scanned_gpt_counts_the_loop_with_its_trip_count stays
def test_deeper_scans_cost_proportionally_more():
    """The trip count is really used: depth 8 has about twice the loop FLOPs of depth 4,
    while XLA's once-per-body figure stays the same."""
    costs = {d: nnxc.compile(nnxc.trace(scan_gpt(depth=d), "i32[B,8]")).cost(dims={"B": 2})
             for d in (4, 8)}
    assert costs[8].flops_xla == costs[4].flops_xla
    loop4 = costs[4].flops - costs[4].flops_xla
    loop8 = costs[8].flops - costs[8].flops_xla
    assert abs(loop8 - (7 / 3) * loop4) <= 0.02 * loop8  # 3 extra bodies vs 7 extra bodies


def _train_step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def test_a_training_step_costs_more_than_the_eval_step():
    model = mlp()
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    train = nnxc.compile(nnxc.trace(_train_step, model, opt, "f32[B,64]", "i32[B]")).cost(dims={"B": 4})
    evaluate = nnxc.compile(nnxc.trace(model, "f32[B,64]")).cost(dims={"B": 4})
    assert train.flops > 2 * evaluate.flops  # forward, backward, and the Adam update
    assert train.flops_ir > 2 * evaluate.flops_ir
    assert train.memory["arguments"] > evaluate.memory["arguments"]  # optimizer state too
    modules = {row["module"] for row in train.modules}
    assert {"model.linear1", "model.head"} <= modules  # per module, two levels deep


def test_cost_json_round_trips_and_names_its_figures():
    r = nnxc.compile(nnxc.trace(scan_gpt(), "i32[B,8]")).cost(dims={"B": 1})
    d = json.loads(r.to_json())
    assert d["schema"] == "nnxc-cost" and d["version"] == 1
    assert d["flops"] == r.flops and d["flops_xla"] == r.flops_xla and d["dims"] == {"B": 1}
    assert set(d["memory"]) == {"peak", "arguments", "outputs", "temporaries", "aliased", "generated_code"}
    assert "once" in d["meaning"]["flops_xla"] and "unrolled" in d["meaning"]["flops"]
    assert sum(row["flops"] for row in d["modules"]) == d["flops_ir"]


def test_cost_refuses_dims_the_graph_does_not_have():
    exe = nnxc.compile(nnxc.trace(mlp(), "f32[B,64]"))
    with pytest.raises(nnxc.NnxcError, match="T are not symbolic dims of the inputs"):
        exe.cost(dims={"T": 3})


def test_cli_compile_cost_table_and_json(tmp_path):
    out, report = tmp_path / "gpt.nnxc", tmp_path / "cost" / "gpt.json"
    r = cli_inprocess.run("compile", "examples/scan_gpt.py:scan_gpt", "-i", "tokens:i32[B,8]",
                          "-o", str(out), "--cost", "--dims", "B=2", "--cost-json", str(report), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    d = json.loads(report.read_text())
    want = nnxc.compile(nnxc.trace(scan_gpt(), "i32[B,8]")).cost(dims={"B": 2})
    assert d["flops"] == want.flops and d["flops_xla"] == want.flops_xla and d["dims"] == {"B": 2}
    flops_row = next(line for line in r.stdout.splitlines() if line.startswith("FLOPs "))
    assert flops_row.split()[1:] == [f"{want.flops:,}", f"{want.flops_xla:,}"]
    assert "blocks (Block)" in r.stdout and out.exists()
    r = cli_inprocess.run("compile", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "-q",
                          "-o", str(tmp_path / "mlp.nnxc"), "--cost-json", "-", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)  # only the JSON on stdout
    assert d["graph"] == "MLP" and d["dims"] == {"B": 1} and d["loops"] == [] and d["flops"] == d["flops_xla"]
