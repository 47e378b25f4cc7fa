"""Sharded artifacts run across processes: 2 processes x 4 CPU devices on loopback (gloo).

A tensor-parallel decoder (tests/scripts/distributed_decoder.py) is saved once on the mesh
data=2,model=4, loaded in both processes on two device layouts, and compared bit for bit
with the one-process 8-device run and the model's own jax.jit on the same mesh. Every child
process is bounded by a timeout and killed when it runs over.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import nnxc
from nnxc.runtime.distributed import as_mesh, free_port, linen_partitioning

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, "scripts", "distributed_decoder.py")
NNXC = [sys.executable, "-c", "import sys; from nnxc.cli import main; sys.exit(main(sys.argv[1:]))"]
TIMEOUT = 90


def run_all(commands, cwd, env=None, timeout=TIMEOUT):
    """Run the commands concurrently; (exit codes, stdouts, stderrs). All are killed when
    the timeout passes (the test then fails), none is left running."""
    procs, files = [], []
    try:
        for i, c in enumerate(commands):
            out, err = (open(os.path.join(cwd, f".p{i}.{k}"), "w+") for k in ("out", "err"))
            files.append((out, err))
            procs.append(subprocess.Popen(c, stdout=out, stderr=err, cwd=cwd,
                                          env=dict(os.environ, **(env or {}))))
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for out, err in files:
        with out, err:
            out.seek(0)
            err.seek(0)
            texts.append((out.read(), err.read()))
    return [p.returncode for p in procs], [o for o, _ in texts], [e for _, e in texts]


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """Save the artifact in one process, then run at once: the two worker processes, ``nnxc
    run --processes 2`` and the commands that must fail (the machine has 2 cores: together
    they take half the time)."""
    folder = str(tmp_path_factory.mktemp("distributed"))
    codes, outs, errs = run_all([[sys.executable, SCRIPT, "save", folder, str(free_port())]], folder)
    assert codes == [0], errs[0][-3000:]
    saved = last_json(outs[0])
    art, port, nobody = os.path.join(folder, "decoder.nnxc"), str(free_port()), str(free_port())
    four = "--xla_force_host_platform_device_count=4"
    commands = [[sys.executable, SCRIPT, "worker", folder, port, str(i), "2"] for i in range(2)] + [
        [*NNXC, "run", art, "-i", f"x={folder}/x.npy", "--processes", "2", "-o", f"{folder}/y.npz",
         "--repeat", "1", "--timeout", "80"],
        ["env", f"XLA_FLAGS={four}", *NNXC, "run", art, "--random", "-q"],  # 4 devices, not 8
        ["env", f"XLA_FLAGS={four}", *NNXC, "run", art, "--random", "-q", "--coordinator",
         f"127.0.0.1:{nobody}", "--process-id", "1", "--num-processes", "2", "--timeout", "3"],
        [*NNXC, "run", art, "--random", "--processes", "3"]]
    t0 = time.monotonic()
    codes, outs, errs = run_all(commands, folder)
    seconds = time.monotonic() - t0
    assert codes[:2] == [0, 0], "\n".join(e[-2000:] for e in errs[:2])
    workers = [last_json(o) for o in outs[:2]]
    return folder, saved, workers, (codes[2:], outs[2:], errs[2:], seconds, nobody)


def test_two_processes_equal_one_process_and_jit_on_the_same_mesh(decoder):
    folder, _, workers, _ = decoder
    assert [(w["devices"], w["local_devices"]) for w in workers] == [(8, 4), (8, 4)]
    load = lambda name: np.load(os.path.join(folder, name + ".npy"))  # noqa: E731
    one, jitted, unsharded = load("one_process"), load("jit_same_mesh"), load("jit_unsharded")
    np.testing.assert_array_equal(one, jitted)  # nnxc's sharded run is jax.jit's, bit for bit
    for layout in ("data_across", "model_across"):
        for name in (layout, layout + ".local"):  # global inputs, then each process's own part
            np.testing.assert_array_equal(load(name), one, err_msg=name)
    # sharding changes each device's dot shapes, which XLA:CPU rounds differently
    np.testing.assert_allclose(one, unsharded, rtol=1e-5, atol=1e-5)


def test_each_process_reads_only_its_share_of_the_weights(decoder):
    _, saved, workers, _ = decoder
    total = saved["weight_bytes"]
    assert saved["local_weight_bytes"] == total  # one process holds everything
    for w in workers:
        # data across the processes: each holds every model shard, the whole model
        assert w["data_across"]["local_weight_bytes"] == total
        # model across them: half of each split weight, all of the replicated ones
        share = w["model_across"]["local_weight_bytes"]
        assert 0.45 * total < share < 0.6 * total, (share, total)
    assert workers[0]["data_across"]["rows"] == [0, 4] and workers[1]["data_across"]["rows"] == [4, 8]
    # on its devices each process holds half of what the mesh's 8 devices hold: data=2 keeps
    # two copies of the model (plus the unsplit weights on every device), one per process
    for layout in ("data_across", "model_across"):
        held = [w[layout]["device_bytes"] for w in workers]
        assert held[0] == held[1] and total <= held[0] < 1.1 * total, (layout, held, total)


def test_the_reduction_whose_order_changes_is_the_all_reduce(decoder):
    """The sharded decoder's cross-device reductions are the all-reduces over ``model`` of the
    partial sums of the attention output and MLP down projections. XLA:CPU's in-process
    all-reduce (one process, no jax.distributed) adds the 4 partial sums in device order,
    ((p0+p1)+p2)+p3, which gives [1, 0, 1, 0] on the probe; gloo adds them in its algorithm's
    order, which varies along the buffer, and is the same in one process as in two. Hence the
    one-process reference joins a one-process gloo run, and then agrees bit for bit."""
    _, saved, workers, _ = decoder
    assert saved["probe"] != [1.0, 0.0, 1.0, 0.0]
    assert all(w["probe"] == saved["probe"] for w in workers)


def test_nnxc_run_processes_gathers_the_outputs_on_process_0(decoder):
    folder, _, _, (codes, outs, errs, _, _) = decoder
    assert codes[0] == 0, errs[0][-3000:]
    assert "(2 processes, 8 devices)" in outs[0] and "Traceback" not in errs[0]
    with np.load(os.path.join(folder, "y.npz")) as y:
        np.testing.assert_array_equal(y[y.files[0]], np.load(os.path.join(folder, "one_process.npy")))


def test_a_mesh_mismatch_and_a_missing_coordinator_end_with_clear_errors(decoder):
    _, _, _, (codes, _, errs, seconds, nobody) = decoder
    assert seconds < TIMEOUT  # nothing was left to the timeout of run_all
    assert codes[1:] == [1, 1, 2], errs
    assert "the artifact is sharded over the mesh data=2,model=4 (8 devices); this run has 4 device(s)" \
        in errs[1]
    assert (f"process 1: joining the run coordinated at 127.0.0.1:{nobody} did not finish within 3 s"
            in errs[2]) or "cannot join the run" in errs[2]
    assert "has 8 devices, which do not split evenly over 3 processes" in errs[3]
    assert not any("Traceback" in e for e in errs)


# -- in this process (one device): manifests, mesh checks, overrides ---------------------

def _mlp():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.up = nnx.Linear(8, 16, rngs=rngs)
            self.down = nnx.Linear(16, 8, rngs=rngs)

        def __call__(self, x):
            return self.down(nnx.relu(self.up(x)))
    return nnxc.trace(MLP(nnx.Rngs(0)), "f32[4,8]")


def test_the_manifest_records_mesh_specs_and_shard_hashes(tmp_path):
    g = _mlp()
    m = nnxc.save(g, tmp_path / "m.nnxc", mesh="data=2,model=4",
                  shard={"up.kernel": "None,model", "up.bias": "model", "down.kernel": ("model", None)})
    s = m["sharding"]
    assert s["mesh"] == {"axes": ["data", "model"], "sizes": [2, 4]}
    assert s["variables"]["up.kernel"] == [None, "model"] and s["variables"]["down.bias"] == []
    assert s["inputs"] == [["data"]] and s["outputs"] == [[]]
    assert sorted(s["shards"]["up.kernel"]) == ["0:8,0:4", "0:8,12:16", "0:8,4:8", "0:8,8:12"]
    assert list(s["shards"]["down.bias"]) == ["0:8"]
    with pytest.raises(nnxc.NnxcError, match="mesh axis 'data' has size 4, the artifact was saved "
                                             "for data=2"):
        nnxc.load(tmp_path / "m.nnxc", mesh=as_mesh("data=4,model=2"))
    with pytest.raises(nnxc.NnxcError, match="mesh axes model, data do not match"):
        nnxc.load(tmp_path / "m.nnxc", mesh=as_mesh("model=4,data=2"))
    with pytest.raises(nnxc.NnxcError, match=r"data=2,model=4 \(8 devices\); this run has 1 device"):
        nnxc.load(tmp_path / "m.nnxc")
    nnxc.save(g, tmp_path / "plain.nnxc")
    with pytest.raises(nnxc.NnxcError, match="saved without a mesh"):
        nnxc.load(tmp_path / "plain.nnxc", mesh=as_mesh("data=2"))


def test_shard_overrides_are_checked(tmp_path):
    g = _mlp()
    for shard, message in [({"nope.*": "model"}, "no variable matches 'nope.*'"),
                           ({"up.kernel": "None,tensor"}, "the mesh has no axis 'tensor'"),
                           ({"up.bias": "None,model"}, "up.bias has rank 1, the spec names 2 dims"),
                           ({"up.kernel": "model,None"}, "dim 8 is split over P('model', None) "
                                                         "(16 ways)")]:
        with pytest.raises(nnxc.NnxcError, match=re.escape(message)):
            nnxc.save(g, tmp_path / "m.nnxc", mesh="data=1,model=16" if "16 ways" in message
                      else "data=2,model=4", shard=shard)


def test_linen_partitioning_gives_the_variables_specs(tmp_path):
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    class Dense(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                                (None, "model")))(x)

    variables = Dense().init(jax.random.key(0), jnp.ones((2, 4)))
    g = nnxc.trace(Dense(), "f32[2,4]", variables=variables)
    shard = linen_partitioning(variables)
    assert {k: tuple(v) for k, v in shard.items()} == {"Dense_0.kernel.value": (None, "model")}
    m = nnxc.save(g, tmp_path / "l.nnxc", mesh="model=2", shard=shard)
    assert m["sharding"]["variables"]["Dense_0.kernel.value"] == [None, "model"]
