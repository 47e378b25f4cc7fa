"""Every zoo model through trace -> IR -> XLA: bit-exact against the model's own jitted
call at two batch sizes of one symbolic-batch graph, state updates included."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import nnxc
import zoo
from nnxc.ir import parse, verify

BATCHES = (2, 3)


def _ids(case):
    return "-".join(case)


@pytest.fixture(scope="module", params=zoo.CASES, ids=_ids)
def traced(request):
    """(name, train, graph) for each zoo case, traced once per module."""
    name, mode = request.param
    train = mode == "train"
    return name, train, zoo.trace(name, zoo.make(name, train), train)


def assert_same_tree(got, want, what: str):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), what
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=what)


def assert_same_state(got: dict, want: dict, what: str):
    assert sorted(got) == sorted(want), what
    for path in want:
        np.testing.assert_array_equal(zoo.as_numpy(got[path]), want[path],
                                      err_msg=f"{what}: {path}")


def test_zoo_model_runs_bit_exactly_at_two_batch_sizes(traced):
    name, train, graph = traced
    assert graph.inputs[0].type.shape[0] == "B"
    model = zoo.make(name, train)
    before = zoo.state_by_path(model)
    # the graph's variables are the model's state, by the same paths
    assert_same_state({v.path: v.data for v in graph.variables if not v.meta.get("new")},
                      before, f"{name} traced state")
    exe = nnxc.compile(graph)
    state = graph.state()
    updated = {path for path, _ in graph.updates}
    for batch in BATCHES:
        inputs = zoo.example_inputs(name, batch)
        out, state = exe.apply(state, *inputs)
        want, want_state = zoo.reference(name, model, *inputs, train=train)
        assert_same_tree(out, want, f"{name} outputs at batch {batch}")
        assert_same_state(state, want_state, f"{name} state at batch {batch}")
        # the graph updates exactly the variables the model changes (BatchNorm stats,
        # RNG counts, sown values), no more
        changed = {p for p, x in want_state.items()
                   if p not in before or not np.array_equal(before[p], x)}
        assert changed == updated, f"{name} at batch {batch}"
        before = want_state


def test_train_mode_updates_what_it_should(traced):
    name, train, graph = traced
    kinds = {graph.variable(p).kind for p, _ in graph.updates}
    if not train:
        expected = {"rnn": {"RngCount"}, "sow": {"Intermediate"}}.get(name, set())
    elif zoo.ZOO[name].linen:
        expected = {"batch_stats"}
    else:
        expected = {"mlp": {"BatchStat", "RngCount"}, "cnn": {"BatchStat"}}.get(name, {"RngCount"})
    assert kinds == expected


def test_zoo_ir_verifies_and_round_trips(traced):
    _, _, graph = traced
    verify(graph)
    text = str(graph)
    again = parse(text)
    assert str(again) == text
    verify(again)
    assert parse(graph.text(locs=False)).text(locs=False) == graph.text(locs=False)


def _linear_paths(model) -> list[str]:
    return [".".join(map(str, path)) for path, node in nnx.iter_graph(model)
            if isinstance(node, (nnx.Linear, nnx.LinearGeneral))]


def test_gpt_nodes_carry_their_module_paths():
    model = zoo.make("gpt")
    graph = zoo.trace("gpt", model)
    paths = {n.path for n in graph.walk()}
    for sub in ("blocks.0.attn", "blocks.1.attn", "blocks.0.ln1", "blocks.1.ln2", "tok", "ln_f"):
        assert sub in paths
    linears = _linear_paths(model)
    assert "blocks.1.attn.query" in linears and "blocks.0.up" in linears and "head" in linears
    for path in linears:  # each Linear's matmul carries its path and reads its kernel
        kernel = graph.variable(f"{path}.kernel").value
        assert any(n.op == "dot_general" and n.path == path and kernel in n.inputs
                   for n in graph.nodes), path
    assert {n.path for n in graph.nodes if n.op == "gather"} == {"tok", "pos"}


def test_scan_gpt_layer_stack_stays_one_loop():
    graphs = {depth: nnxc.trace(zoo.example_module("scan_gpt").scan_gpt(depth=depth), "i32[B,8]")
              for depth in (2, 4)}
    for depth, graph in graphs.items():
        scans = [n for n in graph.nodes if n.op == "scan"]
        assert len(scans) == 1 and scans[0].attrs["length"] == depth
        assert graph.variable("blocks.up.kernel").value.type.shape == (depth, 64, 256)
        body = {n.path for n in scans[0].regions[0].nodes if n.op == "dot_general"}
        assert {"blocks.attn.query", "blocks.attn.out", "blocks.up", "blocks.down"} <= body
    # the program does not grow with depth: the layers are one loop, not copies
    assert len(list(graphs[2].walk())) == len(list(graphs[4].walk()))


def test_gpt_deterministic_kwarg_overrides_the_mode():
    """``deterministic=`` is a static call keyword, as in NNX: it wins over eval()/train()."""
    model = zoo.make("gpt", train=False)
    graph = nnxc.trace(model, "i32[B,8]", deterministic=False)
    assert sorted(p for p, _ in graph.updates) == ["blocks.0.dropout.rngs.count",
                                                   "blocks.1.dropout.rngs.count"]
    tokens, = zoo.example_inputs("gpt", 3)
    out, state = nnxc.compile(graph).apply(graph.state(), tokens)
    want = nnx.jit(lambda m, t: m(t, deterministic=False))(model, tokens)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
    np.testing.assert_array_equal(state["blocks.0.dropout.rngs.count"], 2)  # two dropouts a block
    assert not nnxc.trace(zoo.make("gpt", train=True), "i32[B,8]", deterministic=True).updates


def test_exe_call_threads_state_like_the_model():
    """``exe(*args)`` keeps the state between calls, as calling the NNX module does."""
    model = zoo.make("mlp", train=True)
    exe = nnxc.compile(zoo.trace("mlp", model, train=True))
    for batch in BATCHES:
        x, = zoo.example_inputs("mlp", batch)
        want, _ = zoo.reference("mlp", model, x, train=True)
        np.testing.assert_array_equal(np.asarray(exe(x)), np.asarray(want))
    np.testing.assert_array_equal(exe.state["dropout.rngs.count"], 4)  # two dropouts per call
    np.testing.assert_array_equal(exe.state["bn1.mean"], model.bn1.mean.get_value())
