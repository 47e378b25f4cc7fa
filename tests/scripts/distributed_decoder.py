"""A tensor-parallel GPT-like decoder saved once as a sharded artifact and run in processes.

``save DIR PORT``: in one process with 8 CPU devices, save DIR/decoder.nnxc on the mesh
data=2,model=4 and write the references: the artifact run in this process, the model's own
jax.jit under the same mesh and shardings, and the unsharded model's own jax.jit. This
process joins a one-process distributed run first, so its collectives are gloo's, as in the
multi-process run (XLA:CPU's in-process all-reduce adds the devices' partial sums in device
order, ((p0+p1)+p2)+p3; gloo in its algorithm's order, which varies along the buffer:
``probe`` shows which).
``worker DIR PORT ID N``: one of N processes (8/N CPU devices each) on loopback: load the
artifact on two device layouts of the same mesh (``data`` across the processes, and
``model`` across them), run, and on process 0 write the outputs. Each prints one JSON line.
"""
import json
import os
import resource
import sys
import time

mode, folder, port = sys.argv[1], sys.argv[2], sys.argv[3]
nproc = int(sys.argv[5]) if mode == "worker" else 1
pid = int(sys.argv[4]) if mode == "worker" else 0
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import nnxc  # noqa: E402
from nnxc.runtime import distributed  # noqa: E402

D, HEADS, DEPTH, BATCH, SEQ = 64, 4, 2, 8, 16
ARTIFACT = os.path.join(folder, "decoder.nnxc")


def rss_kib() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def probe() -> list:
    """An all-reduce over the ``model`` axis (4 devices) of partial sums whose total depends
    on the order they are added in: [1e8, 1, -1e8, 1] and rotations. Added in device order
    the totals are [1, 0, 1, 0]."""
    mesh = layouts()["data_across"]
    parts = np.array([[1e8, 1, -1e8, 1], [1, 1e8, 1, -1e8], [-1e8, 1, 1e8, 1], [1, -1e8, 1, 1e8]],
                     np.float32).T[None].repeat(2, 0)  # (data, model, 4): device (d, i) holds row i
    g = jax.make_array_from_callback(parts.shape, NamedSharding(mesh, P("data", "model")),
                                     lambda i: parts[i])
    f = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "model"), mesh=mesh,
                              in_specs=P("data", "model"), out_specs=P("data")),
                out_shardings=NamedSharding(mesh, P()))
    return np.asarray(f(g))[0].ravel().tolist()


def layouts():
    """The mesh data=2,model=4 over all devices: rows (data) across the processes, or
    columns (model) across them."""
    devs = np.array(jax.devices())
    return {"data_across": Mesh(devs.reshape(2, 4), ("data", "model")),
            "model_across": Mesh(devs.reshape(4, 2).T, ("data", "model"))}


distributed.initialize(f"127.0.0.1:{port}", nproc, pid, timeout=30)
if mode == "save":
    from flax import nnx

    init = nnx.initializers.lecun_normal()

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(D, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                HEADS, D, decode=False, rngs=rngs,
                kernel_init=nnx.with_partitioning(init, (None, "model", None)),
                out_kernel_init=nnx.with_partitioning(init, ("model", None, None)))
            self.ln2 = nnx.LayerNorm(D, rngs=rngs)
            self.up = nnx.Linear(D, 4 * D, rngs=rngs, kernel_init=nnx.with_partitioning(init, (None, "model")),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("model",)))
            self.down = nnx.Linear(4 * D, D, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("model", None)))

        def __call__(self, x):
            x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(jnp.ones(x.shape[:2])))
            return x + self.down(nnx.gelu(self.up(self.ln2(x))))

    class Decoder(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(rngs) for _ in range(DEPTH)])
            self.head = nnx.Linear(D, 128, rngs=rngs, kernel_init=nnx.with_partitioning(init, (None, "model")))

        def __call__(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    mesh = layouts()["data_across"]
    with jax.set_mesh(mesh):
        model = Decoder(nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((BATCH, SEQ, D)).astype(np.float32)
    graph = nnxc.trace(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
    t0 = time.perf_counter()
    manifest = nnxc.save(graph, ARTIFACT, mesh=mesh)
    save_s = time.perf_counter() - t0
    art = nnxc.load(ARTIFACT, mesh=mesh)
    one = np.asarray(art(x))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(art(x))
        times.append(time.perf_counter() - t0)
    # the model's own jax.jit, unsharded and under the same mesh and shardings
    graphdef, state = nnx.split(model)
    plain_state = jax.device_put(state, jax.devices()[0])
    fn = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    unsharded = np.asarray(jax.jit(fn)(plain_state, x))
    specs = jax.tree_util.tree_map(lambda a: a.sharding, state)
    jitted = jax.jit(fn, in_shardings=(specs, NamedSharding(mesh, P("data"))),
                     out_shardings=NamedSharding(mesh, P()))
    same_mesh = np.asarray(jitted(state, x))
    np.save(os.path.join(folder, "x.npy"), x)
    np.save(os.path.join(folder, "one_process.npy"), one)
    np.save(os.path.join(folder, "jit_same_mesh.npy"), same_mesh)
    np.save(os.path.join(folder, "jit_unsharded.npy"), unsharded)
    weights = sum(int(np.prod(w["shape"])) * 4 for w in manifest["weights"].values())
    print(json.dumps({"weight_bytes": weights, "local_weight_bytes": art.local_weight_bytes,
                      "save_s": save_s, "run_ms": 1e3 * min(times), "probe": probe()}))
else:
    x = np.load(os.path.join(folder, "x.npy"))
    result = {"process": pid, "devices": jax.device_count(), "local_devices": jax.local_device_count(),
              "rss_kib_before": rss_kib()}
    for name, mesh in layouts().items():
        art = nnxc.load(ARTIFACT, mesh=mesh)
        held = sum(s.data.nbytes for a in art.state.values() for s in a.addressable_shards)
        y = art(x)  # global x, the same on every process
        out = distributed.gather(y)
        # process-local data: this process's half of the batch when data spans the processes
        rows = sorted({i[0].indices(BATCH)[:2] for i in
                       art._in_shardings[0].addressable_devices_indices_map(x.shape).values()})
        lo, hi = rows[0][0], rows[-1][1]
        y_local = distributed.gather(art(x[lo:hi], local=True))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(art(x))
            times.append(time.perf_counter() - t0)
        if pid == 0:
            np.save(os.path.join(folder, f"{name}.npy"), out)
            np.save(os.path.join(folder, f"{name}.local.npy"), y_local)
        result[name] = {"local_weight_bytes": art.local_weight_bytes, "device_bytes": held,
                        "rows": [lo, hi], "run_ms": 1e3 * min(times)}
    result["rss_kib_after"] = rss_kib()
    result["probe"] = probe()
    print(json.dumps(result), flush=True)
jax.distributed.shutdown()
