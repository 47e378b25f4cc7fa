"""Sharded compilation on 8 fake CPU devices (a subprocess: XLA_FLAGS must be set before JAX starts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import nnxc
from nnxc.backends.xla.compile import parse_mesh, partition_names
from nnxc.errors import NnxcWarning


SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
MESH_ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
NNXC = [sys.executable, "-c", "import sys; from nnxc.cli import main; sys.exit(main(sys.argv[1:]))"]
PROJECTIONS = {"blocks.0.attn.out", "blocks.0.down", "blocks.1.attn.out", "blocks.1.down"}


def _script(name: str, *args) -> dict:
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    """The tensor-parallel decoder compiled on data=2,model=4 (8 fake devices), and its HTML view."""
    page = tmp_path_factory.mktemp("decoder") / "decoder.html"
    return _script("sharded_decoder.py", page), page


def test_tensor_parallel_decoder_matches_the_unsharded_run(decoder_run):
    result, _ = decoder_run
    assert result["diff"] < 1e-5
    assert {"all-reduce"} & set(result["collectives"]) or {"all-gather"} & set(result["collectives"])
    assert result["kernel_spec"] in ("P(None, 'model')", "PartitionSpec(None, 'model')")
    assert result["devices"] == 8


def test_collectives_name_the_module_they_came_from(decoder_run):
    """Heads and MLP split along model: the attention out-projection and the MLP
    down-projection contract over the split dim, so each needs one all-reduce over model;
    the replicated output is gathered over data by the graph itself."""
    result, _ = decoder_run
    rows = result["per_module"]
    reduces = [r for r in rows if r["op"] == "all-reduce"]
    assert {r["module"] for r in reduces} == PROJECTIONS and len(reduces) == 4
    assert all(r["axes"] == "model" and r["shape"] == "f32[2,8,32]" and r["bytes"] == 2 * 8 * 32 * 4
               for r in reduces), reduces
    assert all(r["module"] in r["op_name"].split("/") for r in reduces)
    assert [(r["module"], r["op"], r["axes"]) for r in rows if r["op"] != "all-reduce"] == [("", "all-gather", "data")]
    assert result["unsharded"] == []  # no mesh, no collectives
    assert result["page_collectives"] == [[r["module"], r["op"], r["shape"], r["bytes"], r["axes"]] for r in rows]


def test_html_view_shows_shardings_and_collectives(decoder_run):
    from chromium import Browser, find_chromium
    binary, why = find_chromium(install=False)
    if binary is None:
        pytest.skip(why)
    _, page = decoder_run
    with Browser(binary, width=1400, height=900) as b:
        b.open(page.as_uri())
        details = b.eval("document.querySelector('#details').innerText").lower()  # the whole graph
        assert 'blocks.0.up.kernel' in details and '(none,"model")' in details
        assert "collectives (5)" in details and "blocks.0.attn.out" in details
        b.click_on('.tabs button[data-tab="modules"]')
        table = b.eval("document.querySelector('#modules').innerText")
        if os.environ.get("NNXC_SCREENSHOTS"):
            b.screenshot(os.path.join(os.environ["NNXC_SCREENSHOTS"], "collectives.png"))
        assert "collectives xla inserted (5)" in table.lower()
        lines = [ln for ln in table.splitlines() if "all-reduce" in ln]
        assert len(lines) == 4 and all("model" in ln for ln in lines), lines
        assert b.errors() == []


def test_nnxc_compile_on_a_mesh_prints_collectives_per_module(tmp_path):
    r = subprocess.run(NNXC + ["compile", os.path.join(SCRIPTS, "sharded_decoder.py") + ":decoder",
                               "-i", "x:f32[4,8,32]", "--mesh", "data=2,model=4", "-o", tmp_path / "m.nnxc",
                               "--dump-dir", tmp_path / "dump", "-q"],
                       capture_output=True, text=True, timeout=300, env=MESH_ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout[r.stdout.index("collectives (XLA SPMD, per module):"):].splitlines()
    assert table[1].split() == ["module", "all-reduce", "all-gather", "result", "bytes", "over"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in table[2:] if ln.strip()}
    assert set(rows) == PROJECTIONS | {"(graph)"}
    assert all(rows[m] == ["1", "2.0", "KiB", "model"] for m in PROJECTIONS), rows
    report = json.load(open(tmp_path / "dump" / "report.json"))
    assert {c["module"] for c in report["collectives"] if c["op"] == "all-reduce"} == PROJECTIONS


def test_linen_models_shard_by_their_own_partitioning():
    """Linen MLPs boxed by nn.with_partitioning, and by logical names mapped through
    nn.logical_axis_rules, traced without shard=: the IR carries each kernel's mesh axes,
    the artifact records them, and the compiled and loaded runs equal the model's own
    jax.jit on the same mesh and shardings (Flax's own get_partition_spec) bit for bit."""
    result = _script("linen_sharded.py")
    specs = {"Dense_0.kernel.value": [None, "model"], "Dense_0.bias.value": ["model"],
             "Dense_1.kernel.value": ["model", None], "Dense_1.bias": []}
    for kind, r in result.items():
        assert r["saved"] == specs, (kind, r["saved"])
        assert r["exact"] and r["exact_loaded"], (kind, r)
        assert ["Dense_1", "all-reduce", "model"] in r["collectives"], r["collectives"]
    assert 'var %Dense_0.kernel.value: f32[32,64] params {out_sharding=(None,"model")}' in result["partitioned"]["ir"]
    assert ('var %Dense_1.kernel.value: f32[64,16] params {logical_names=("mlp","embed"), '
            'out_sharding=("model",None)}') in result["logical"]["ir"]
    assert result["logical"]["meta"]["Dense_1.bias"] == {}


def test_linen_logical_names_take_the_rules_in_flax_order():
    """The box's own rules, else nnxc.trace(logical_axis_rules=), else the enclosing
    nn.logical_axis_rules; with none, the names stay logical (not sharded) and a warning says so."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    init = nn.initializers.lecun_normal()

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x)
            own = nn.with_logical_partitioning(init, ("mlp", "embed"), rules=(("mlp", "data"),))
            return nn.Dense(4, kernel_init=own)(x)

    variables = Two().init(jax.random.key(0), jnp.ones((2, 4)))

    def specs(g):
        return {v.path: v.meta.get("out_sharding") for v in g.variables if "kernel" in v.path}

    with nn.logical_axis_rules((("mlp", "model"),)):
        in_context = nnxc.trace(Two(), "f32[2,4]", variables=variables)
        given = nnxc.trace(Two(), "f32[2,4]", variables=variables, logical_axis_rules=[("embed", "model")])
    assert specs(in_context) == {"Dense_0.kernel.value": (None, "model"), "Dense_1.kernel.value": ("data", None)}
    assert specs(given) == {"Dense_0.kernel.value": ("model", None), "Dense_1.kernel.value": ("data", None)}
    with pytest.warns(NnxcWarning, match=r"Dense_0.kernel.value have logical axis names but no logical "
                                         r"axis rules.*logical_axis_rules=rules"):
        bare = nnxc.trace(Two(), "f32[2,4]", variables=variables)
    assert specs(bare) == {"Dense_0.kernel.value": None, "Dense_1.kernel.value": ("data", None)}
    assert bare.variable("Dense_0.kernel.value").meta["logical_names"] == ("embed", "mlp")
    text = str(in_context)
    assert str(nnxc.ir.parse(text)) == text
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(np.asarray(nnxc.compile(in_context)(x)),
                          np.asarray(jax.jit(Two().apply)(variables, x)))


def test_hlo_collectives_read_every_replica_group_form():
    from jax.sharding import AbstractMesh
    from nnxc.backends.xla.collectives import format_collectives, hlo_collectives
    mesh = AbstractMesh((2, 4), ("data", "model"))
    hlo = "\n".join([
        '  %a = f32[2,8]{1,0} all-reduce(%x), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add, '
        'metadata={op_name="jit(run_graph)/blocks/blocks.0.mlp/dot_general"}',
        '  %b = (f32[4]{0}, bf16[4]{0}) all-reduce(%x, %y), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add, '
        'metadata={op_name="jit(run_graph)/head/dot_general"}',
        "  ROOT %c = f32[8,8]{1,0} all-gather(%z), replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, "
        "dimensions={0}",
        '  %d = f32[2]{0} collective-permute-start(%x), source_target_pairs={{0,1},{1,0}}, '
        'metadata={op_name="jit(run_graph)/blocks.0.mlp.sub/neg"}',
        '  %e = f32[2]{0} add(%x, %y), metadata={op_name="jit(run_graph)/head/add"}'])
    rows = hlo_collectives(hlo, {"blocks.0.mlp", "head"}, mesh)
    assert [(r["op"], r["module"], r["shape"], r["bytes"], r["axes"]) for r in rows] == [
        ("all-reduce", "blocks.0.mlp", "f32[2,8]", 64, "model"),
        ("all-reduce", "head", "(f32[4], bf16[4])", 24, "data"),
        ("all-gather", "", "f32[8,8]", 256, "data"),
        ("collective-permute", "", "f32[2]", 8, "model")]  # blocks.0.mlp.sub is no node's path
    table = format_collectives(rows).splitlines()
    assert table[1].split()[:4] == ["module", "all-reduce", "all-gather", "collective-permute"]
    assert table[2].split() == ["blocks.0.mlp", "1", "64", "B", "model"]
    assert "none" in format_collectives([])


def test_partition_names_keep_only_mesh_axes():
    assert partition_names({"out_sharding": (None, "model")}, 2, ("data", "model")) == (None, "model")
    assert partition_names({"sharding_names": ("embed", "model")}, 2, ("data", "model")) == (None, "model")
    assert partition_names({"out_sharding": ("model",)}, 2, ("model",)) == ()
    assert partition_names({}, 2, ("model",)) == ()


def test_a_mesh_larger_than_the_machine_is_refused():
    with pytest.raises(nnxc.NnxcError, match="needs 64 devices"):
        parse_mesh("data=8,model=8")
    with pytest.raises(nnxc.NnxcError, match="bad mesh"):
        parse_mesh("data:2")


def test_a_model_traced_inside_a_mesh_keeps_its_sharding_params():
    """examples/gpt.py built and traced inside a mesh (as `nnxc compile --mesh` does): JAX gives
    broadcast_in_dim a NamedSharding param, which the IR keeps as its spec, prints, reads back,
    and lowers on the mesh; the compiled graph equals the model's own nnx.jit on that mesh."""
    script = os.path.join(os.path.dirname(__file__), "scripts", "gpt_traced_in_mesh.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["sharding_params"] > 0 and result["roundtrip"], result
    assert result["exact"] and result["exact_after_parse"], result


def test_sharding_params_encode_as_their_spec_and_drop_without_a_mesh():
    import jax
    from jax.sharding import PartitionSpec as P
    from nnxc.ir.attrs import Record
    from nnxc.ir.params import UnsupportedParam, decode_param, encode_param
    enc = encode_param(P(None, "model", ("data", "model")))
    assert enc == Record("PartitionSpec", (("spec", (None, "model", ("data", "model"))),))
    assert decode_param(enc) is None  # no mesh set: JAX's "no sharding given"
    with pytest.raises(UnsupportedParam, match="sharding entry"):
        encode_param(P(P.UNCONSTRAINED))
    mesh = jax.sharding.AbstractMesh((1, 1), ("data", "model"))
    with jax.sharding.use_abstract_mesh(mesh):
        assert decode_param(enc) == P(None, "model", ("data", "model"))


def test_nnx_logical_names_map_to_mesh_axes_through_their_rules():
    """NNX variables partitioned by logical names: the variable's own sharding_rules, or an
    enclosing nnx.logical_axis_rules at trace time, map them to mesh axes as Flax's
    nnx.get_partition_spec does; without rules the names stay and shard nothing."""
    import jax
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from nnxc.backends.xla.compile import variable_specs
    init = nnx.initializers.lecun_normal()
    rules = (("mlp", "model"), ("embed", None))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.up = nnx.Linear(8, 16, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")))
            self.down = nnx.Linear(16, 8, rngs=rngs, kernel_init=nnx.with_partitioning(
                init, ("mlp", "embed"), sharding_rules=rules))

        def __call__(self, x):
            return self.down(nnx.relu(self.up(x)))

    auto = (jax.sharding.AxisType.Auto,)
    with jax.set_mesh(jax.make_mesh((1,), ("model",), axis_types=auto)), nnx.logical_axis_rules(rules):
        model = MLP(nnx.Rngs(0))
    plain = nnxc.trace(model, "f32[B,8]")
    with nnx.logical_axis_rules(rules):
        ruled = nnxc.trace(model, "f32[B,8]")
    for g, up in ((plain, P(None, None)), (ruled, P(None, "model"))):
        specs = variable_specs(g, ("data", "model"))
        assert specs["down.kernel"] == P("model", None)  # its own rules
        assert specs["up.kernel"] == up
        meta = {v.path: v.meta for v in g.variables}
        assert meta["down.kernel"]["logical_names"] == ("mlp", "embed")
        assert str(nnxc.ir.parse(str(g))) == str(g)
    want = jax.jit(lambda m, x: m(x))(model, np.ones((2, 8), np.float32))
    assert np.array_equal(np.asarray(nnxc.compile(ruled)(np.ones((2, 8), np.float32))), np.asarray(want))
