"""Sharded compilation on 8 fake CPU devices (a subprocess: XLA_FLAGS must be set before JAX starts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import nnxc
from nnxc.backends.xla.compile import parse_mesh, partition_names


def test_tensor_parallel_decoder_matches_the_unsharded_run():
    script = os.path.join(os.path.dirname(__file__), "scripts", "sharded_decoder.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["diff"] < 1e-5
    assert {"all-reduce"} & set(result["collectives"]) or {"all-gather"} & set(result["collectives"])
    assert result["kernel_spec"] in ("P(None, 'model')", "PartitionSpec(None, 'model')")
    assert result["devices"] == 8


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
