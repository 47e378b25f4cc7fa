"""The pass manager (nnxc.optimize), the pass registry, and freeze / prune with NNX Filters."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nnxc
from nnxc.ir import parse, verify
from nnxc.ir.graph import Node
from nnxc.passes import PASSES, PRESETS, PassError, parse_filter
from nnxc.passes.manager import count_nodes


# -- small models shared by the pass tests -------------------------------------------------

class MLP(nnx.Module):
    """Linear -> BatchNorm -> gelu -> Dropout -> Linear."""

    def __init__(self, rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.gelu(self.bn(self.l1(x)))))


class Counter(nnx.Variable):
    """A user Variable type."""


class Counting(nnx.Module):
    def __init__(self, rngs):
        self.l = nnx.Linear(4, 4, rngs=rngs)
        self.calls = Counter(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls[...] = self.calls[...] + 1
        return self.l(x)


def randomize(model, seed: int = 0):
    """Random parameters and statistics, so that no bias or mean is zero (as trained ones)."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, (nnx.Param, nnx.BatchStat)):
            v = np.asarray(var.get_value())
            if not np.issubdtype(v.dtype, np.floating):
                continue
            r = rng.standard_normal(v.shape).astype(v.dtype) * 0.5
            var.set_value(jnp.asarray(np.abs(r) + 0.5 if path[-1] == "var" else r))
    return model


def mlp(train: bool = False, seed: int = 0):
    m = randomize(MLP(nnx.Rngs(seed)), seed)
    m.train() if train else m.eval()
    return m


def outputs(graph, *args, state=None):
    """Flat outputs of the graph compiled with XLA (at its own traced state)."""
    out, new_state = nnxc.compile(graph).apply(state or graph.state(), *args)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out)], new_state


def eager(graph, *args):
    """Flat outputs of the graph run op by op (no XLA compilation of the whole graph: fast
    for small graphs, and the same arithmetic as compiled code op for op)."""
    from nnxc.backends.xla.lower import run_graph
    state = [v.data for v in graph.variables if not v.meta.get("new")]
    return [np.asarray(x) for x in run_graph(graph, state, list(args))[0]]


def x8(batch: int = 3, seed: int = 0):
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


# -- the manager -------------------------------------------------------------------------

def test_registry_and_presets_name_real_passes():
    for name, (fn, doc) in PASSES.items():
        assert callable(fn) and doc and "\n" not in doc, name
        assert name == name.lower() and " " not in name
    assert PRESETS["none"] == []
    for preset in PRESETS.values():
        assert all(p in PASSES for p in preset)
    assert "freeze" in PRESETS["inference"] and "freeze" not in PRESETS["default"]


def test_optimize_returns_a_new_graph_and_leaves_the_input_alone():
    g = nnxc.trace(mlp(), "f32[B,8]")
    before = g.text()
    for pipeline in ("none", "default", "inference"):
        g2 = nnxc.optimize(g, pipeline)
        assert g2 is not g and g.text() == before
        assert not {id(n) for n in g2.walk()} & {id(n) for n in g.walk()}
        assert not {id(v.value) for v in g2.variables} & {id(v.value) for v in g.variables}
        verify(g2)
    assert nnxc.optimize(g, "none").text() == before


def test_pipelines_accept_names_and_functions():
    g = nnxc.trace(mlp(), "f32[B,8]")
    seen = []

    def spy(graph):
        seen.append(count_nodes(graph))
        return graph

    g2, stats = nnxc.optimize(g, ["simplify", spy, "dce"], stats=True)
    assert [s.name for s in stats] == ["simplify", "spy", "dce"] and seen
    with pytest.raises(nnxc.NnxcError, match="unknown pass 'nope'"):
        nnxc.optimize(g, ["nope"])
    with pytest.raises(nnxc.NnxcError, match="unknown pipeline"):
        nnxc.optimize(g, "fastest")


def test_stats_report_time_nodes_and_what_fired():
    g = nnxc.trace(mlp(), "f32[B,8]")
    g2, stats = nnxc.optimize(g, "fast", stats=True)
    assert [s.name for s in stats] == PRESETS["fast"]
    assert stats[0].nodes_before == count_nodes(g) and stats[-1].nodes_after == count_nodes(g2)
    assert all(s.seconds >= 0 for s in stats)
    assert stats.fired()["gelu_tanh"] == 1 and stats.fired()["linear"] == 2
    text = str(stats)
    assert "fuse-linear" in text and "linear=2" in text and "total" in text
    assert g2.meta["passes"] == tuple(PRESETS["fast"])


def test_dump_dir_gets_numbered_files_after_each_change(tmp_path):
    g = nnxc.trace(mlp(), "f32[B,8]")
    g2, stats = nnxc.optimize(g, "fast", dump_dir=tmp_path, stats=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    changed = [f"{i:02d}-{s.name}.ir" for i, s in enumerate(stats, 1) if s.changed]
    assert files == ["00-input.ir"] + changed
    assert (tmp_path / "00-input.ir").read_text() == str(g)
    assert (tmp_path / changed[-1]).read_text() == str(g2)
    for f in files:  # every dump parses back
        assert str(parse((tmp_path / f).read_text())) == (tmp_path / f).read_text()


def test_print_after_and_verify_from_the_environment(monkeypatch, capsys):
    g = nnxc.trace(mlp(), "f32[B,8]")
    monkeypatch.setenv("NNXC_PRINT_AFTER", "fuse-linear")
    nnxc.optimize(g, "fast")
    err = capsys.readouterr().err
    assert "IR after fuse-linear" in err and "nnxc.linear" in err and "IR after dce" not in err
    monkeypatch.setenv("NNXC_PRINT_AFTER", "changed")
    nnxc.optimize(g, ["cse", "fuse-activations"])
    err = capsys.readouterr().err
    assert "IR after fuse-activations" in err and "IR after cse" not in err

    monkeypatch.delenv("NNXC_PRINT_AFTER")
    monkeypatch.setenv("NNXC_VERIFY", "0")
    nnxc.optimize(g, [_breaks_types])  # not verified: no error
    monkeypatch.setenv("NNXC_VERIFY", "1")
    with pytest.raises(PassError):
        nnxc.optimize(g, [_breaks_types], verify=False)


def _breaks_types(graph):
    from nnxc.passes.rewrite import Rebuild
    from nnxc.ir.types import TensorType

    def visit(old, new, rb):  # a gelu whose result claims a wrong shape
        if new.op == "tanh":
            t = new.outputs[0].type
            return rb.emit("tanh", new.inputs, types=[TensorType(t.shape[:-1] + (99,), t.dtype)])
        return None
    return Rebuild(graph, visit).run()


def test_a_failing_pass_is_named_with_the_passes_before_it(tmp_path):
    g = nnxc.trace(mlp(), "f32[B,8]")
    with pytest.raises(PassError, match=r"pass '_breaks_types' \(after simplify, cse\) produced "
                                        r"invalid IR: tanh"):
        nnxc.optimize(g, ["simplify", "cse", _breaks_types, "dce"], dump_dir=tmp_path)
    assert (tmp_path / "03-_breaks_types.invalid.ir").exists()

    def boom(graph):
        raise RuntimeError("kaput")
    with pytest.raises(PassError, match=r"pass 'boom' \(the first pass\) raised RuntimeError: kaput"):
        nnxc.optimize(g, [boom])


def test_an_invalid_input_is_reported_before_any_pass():
    g = nnxc.trace(mlp(), "f32[B,8]")
    g.nodes.reverse()
    with pytest.raises(PassError, match="input graph is invalid"):
        nnxc.optimize(g, "default")


def test_a_pass_that_changes_nothing_returns_its_argument():
    g = nnxc.optimize(nnxc.trace(mlp(), "f32[B,8]"), "default")
    for name in PRESETS["default"]:
        assert PASSES[name][0](g) is g, name


# -- freeze / prune with NNX filters --------------------------------------------------------

def paths(graph) -> set:
    return {v.path for v in graph.variables}


@pytest.mark.parametrize("flt, frozen", [
    (nnx.Param, {"l1.kernel", "l1.bias", "l2.kernel", "l2.bias", "bn.scale", "bn.bias"}),
    (nnx.BatchStat, {"bn.mean", "bn.var"}),
    (nnx.PathContains("l1"), {"l1.kernel", "l1.bias"}),
    (nnx.All(nnx.Param, nnx.PathContains("bn")), {"bn.scale", "bn.bias"}),
    (nnx.Any(nnx.BatchStat, nnx.RngCount), {"bn.mean", "bn.var", "drop.rngs.count"}),
    (nnx.Not(nnx.Param), {"bn.mean", "bn.var", "drop.rngs.count", "drop.rngs.key"}),
    ("default", {"drop.rngs.count", "drop.rngs.key"}),  # a tag
    ((nnx.RngKey, nnx.RngCount), {"drop.rngs.count", "drop.rngs.key"}),
    (lambda path, v: path[-1] == "kernel", {"l1.kernel", "l2.kernel"}),
    (..., "all"), (True, "all"), (False, set()), (None, set()),
])
def test_freeze_takes_nnx_filters(flt, frozen):
    model = mlp(train=True)
    g = nnxc.trace(model, "f32[B,8]")
    everything = paths(g)
    frozen = everything if frozen == "all" else frozen
    g2 = nnxc.optimize(g, "none", freeze=flt)
    assert paths(g2) == everything - frozen
    assert not {p for p, _ in g2.updates} & frozen  # updates of frozen variables are dropped
    verify(g2)
    x = x8()
    for a, b in zip(eager(g, x), eager(g2, x)):
        np.testing.assert_array_equal(a, b)  # same numbers, the dropout mask included


def test_freeze_matches_user_variable_types_and_linen_collections():
    g = nnxc.trace(Counting(nnx.Rngs(0)), "f32[B,4]")
    assert nnxc.optimize(g, "none", freeze=Counter).variables and \
        "calls" not in paths(nnxc.optimize(g, "none", freeze=Counter))
    assert [p for p, _ in g.updates] == ["calls"]
    assert nnxc.optimize(g, "none", prune=Counter).updates == []
    assert paths(nnxc.optimize(g, ["dce-variables"], prune=Counter)) == {"l.kernel", "l.bias"}

    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(nn.Dense(3)(x))
    g = nnxc.trace(Net(), "f32[B,4]")
    kinds = {v.path: v.kind for v in g.variables}
    assert set(kinds.values()) == {"params", "batch_stats"}
    stats = {p for p, k in kinds.items() if k == "batch_stats"}
    assert paths(nnxc.optimize(g, "none", freeze=nnx.BatchStat)) == set(kinds) - stats


def test_prune_drops_updates_and_what_only_fed_them():
    g = nnxc.trace(mlp(train=True), "f32[B,8]")
    assert {p for p, _ in g.updates} == {"bn.mean", "bn.var", "drop.rngs.count"}
    g2 = nnxc.optimize(g, "none", prune=nnx.BatchStat)
    assert {p for p, _ in g2.updates} == {"drop.rngs.count"}
    assert count_nodes(g2) < count_nodes(g)  # the running-average arithmetic is gone
    g3 = nnxc.optimize(g, "none", prune=...)
    assert g3.updates == []
    x = x8()
    for a, b in zip(eager(g, x), eager(g3, x)):
        np.testing.assert_array_equal(a, b)


def test_prune_removes_variables_a_call_creates():
    class Sow(nnx.Module):
        def __init__(self, rngs):
            self.l = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            y = self.l(x)
            self.sow(nnx.Intermediate, "h", y)
            return jnp.tanh(y)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        g = nnxc.trace(Sow(nnx.Rngs(0)), "f32[B,4]")
    assert any(v.meta.get("new") for v in g.variables)
    g2 = nnxc.optimize(g, "none", prune=nnx.Intermediate)
    assert not any(v.meta.get("new") for v in g2.variables) and g2.updates == []
    verify(g2)


def test_an_explicit_filter_replaces_the_presets_freeze():
    g = nnxc.trace(mlp(), "f32[B,8]")
    g2 = nnxc.optimize(g, "inference", freeze=nnx.Param)
    assert paths(g2) == {"bn.mean", "bn.var"}  # statistics stay variables (RNGs are unused)
    assert paths(nnxc.optimize(g, "inference")) == set()


def test_freezing_a_graph_without_values_is_an_error():
    g = parse(nnxc.trace(mlp(), "f32[B,8]").text())
    with pytest.raises(PassError, match="cannot freeze 'bn.bias'"):
        nnxc.optimize(g, "inference")


def test_cli_filter_syntax():
    assert parse_filter("BatchStat") is nnx.BatchStat
    g = nnxc.trace(mlp(train=True), "f32[B,8]")

    def frozen(text):
        return paths(g) - paths(nnxc.optimize(g, "none", freeze=parse_filter(text)))
    assert frozen("BatchStat,RngKey") == {"bn.mean", "bn.var", "drop.rngs.key"}
    assert frozen("*.kernel") == {"l1.kernel", "l2.kernel"}
    assert frozen("bn") == {"bn.mean", "bn.var", "bn.scale", "bn.bias"}
    assert frozen("drop.*") == {"drop.rngs.count", "drop.rngs.key"}
    assert frozen("tag:default") == {"drop.rngs.count", "drop.rngs.key"}
    assert frozen("!Param") == {"bn.mean", "bn.var", "drop.rngs.count", "drop.rngs.key"}
    assert frozen("...") == paths(g)
    with pytest.raises(nnxc.NnxcError):
        parse_filter(" , ")


def test_frozen_rng_keys_become_random_wrap_of_their_data():
    g = nnxc.trace(mlp(train=True), "f32[B,8]")
    g2 = nnxc.optimize(g, "none", freeze=nnx.RngKey)
    wraps = [n for n in g2.nodes if n.op == "random_wrap"]
    assert len(wraps) == 1 and wraps[0].inputs[0].type.shape == (2,)
    assert str(parse(str(g2))) == str(g2)  # keys have no literal; their data does
    assert isinstance(g2.nodes[0], Node) and g2.nodes[0].op == "random_wrap"
