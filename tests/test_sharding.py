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
