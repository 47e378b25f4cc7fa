"""Run in a subprocess with 4 fake CPU devices: functions using jax.shard_map over meshes of
more than one device, traced (a ``shard_map`` node, its body a region), printed and parsed
back, compiled with and without ``mesh=`` and compared bit for bit with jax.jit of the user's
own function; ONNX export refused. Prints one JSON line."""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, PartitionSpec as P  # noqa: E402

import nnxc  # noqa: E402
from nnxc.errors import UnsupportedOpError  # noqa: E402

mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
ring = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
half = jax.make_mesh((2, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def tensor_parallel(x, w):
    """x split over data, w over model: each block's partial product summed over model."""
    def body(xb, wb):
        y = jnp.tanh(xb @ wb)
        s = lax.psum(y @ wb.T, "model")
        g = lax.all_gather(s, "data", axis=1, tiled=True, to="invarying")
        return s + lax.axis_index("data").astype(s.dtype), g
    return jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P(None, "model")),
                         out_specs=(P("data"), P()))(x, w)


def collectives(x):
    """A ring shift, a reduce-scatter, an all-to-all, max and min over 4 devices."""
    def body(xb):
        shifted = lax.ppermute(xb, "data", [(i, (i + 1) % 4) for i in range(4)])
        scattered = lax.psum_scatter(xb, "data", scatter_dimension=1, tiled=True)
        swapped = lax.all_to_all(xb, "data", 1, 0, tiled=True)
        return shifted, scattered, swapped, lax.pmax(xb, "data"), lax.pmin(xb, "data")
    return jax.shard_map(body, mesh=ring, in_specs=P("data"),
                         out_specs=(P("data"), P("data"), P("data"), P(), P()), check_vma=False)(x)


def size_one_model_axis(x):
    """data=2, model=1: kept (data has 2 devices); the psum over model stays in the body."""
    def body(xb):
        return lax.psum(jnp.sin(xb), "model") * lax.pmean(xb, "data")
    return jax.shard_map(body, mesh=half, in_specs=P("data", "model"), out_specs=P("data", "model"))(x)


rng = np.random.default_rng(0)
x8 = rng.standard_normal((8, 8)).astype(np.float32)
w = rng.standard_normal((8, 6)).astype(np.float32)
cases = {"tensor_parallel": (tensor_parallel, (x8, w), mesh), "collectives": (collectives, (x8,), ring),
         "size_one_model_axis": (size_one_model_axis, (x8[:, :4],), half)}
out = {"devices": jax.device_count()}
for name, (fn, args, m) in cases.items():
    g = nnxc.trace(fn, *args)
    text = str(g)
    back = nnxc.ir.parse(text)
    nnxc.ir.verify(back)
    want = [np.asarray(a) for a in jax.tree_util.tree_leaves(jax.jit(fn)(*args))]

    def same(exe, want=want, args=args):
        got = [np.asarray(a) for a in jax.tree_util.tree_leaves(exe(*args))]
        return len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    try:
        nnxc.export_onnx(g, os.devnull)
        refused = None
    except UnsupportedOpError as e:
        refused = str(e)
    out[name] = {"ops": [n.op for n in g.nodes], "roundtrip": str(back) == text,
                 "exact": same(nnxc.compile(g)), "exact_on_mesh": same(nnxc.compile(g, mesh=m)),
                 "exact_after_parse": same(nnxc.compile(back)),
                 "exact_optimized": same(nnxc.compile(nnxc.optimize(g, "default"))),
                 "body_ops": sorted({n.op for n in g.walk()} - {n.op for n in g.nodes}),
                 "onnx_refused": refused}
    if name == "tensor_parallel":
        out[name]["text"] = text
print(json.dumps(out))
