"""Run in a subprocess with 8 fake CPU devices: examples/gpt.py built and traced inside a mesh
(as ``nnxc compile --mesh`` does), where JAX gives ops like broadcast_in_dim a ``sharding``
param. Prints one JSON line: whether the IR keeps those params and reads back, and how the
compiled graph compares with the model's own nnx.jit under the same mesh."""
import importlib.util
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import nnxc  # noqa: E402
from nnxc.backends.xla.compile import parse_mesh  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("gpt", os.path.join(here, "..", "..", "examples", "gpt.py"))
gpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpt)

mesh = parse_mesh("data=2,model=4")
tokens = np.random.default_rng(0).integers(0, 64, (2, 16)).astype(np.int32)
with jax.set_mesh(mesh):
    model = gpt.gpt()
    graph = nnxc.trace(model, "i32[2,16]")
    want = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))
text = str(graph)
back = nnxc.ir.parse(text)
exe = nnxc.compile(graph, mesh=mesh)
got = np.asarray(exe(tokens))
got_back = np.asarray(nnxc.compile(back, state=exe.state, mesh=mesh)(tokens))  # weights by path
plain = np.asarray(nnxc.compile(graph)(tokens))  # no mesh: the sharding params are dropped
print(json.dumps({"sharding_params": text.count("sharding=NamedSharding(spec="),
                  "roundtrip": str(back) == text,
                  "exact": bool(np.array_equal(got, want)),
                  "exact_after_parse": bool(np.array_equal(got_back, want)),
                  "unsharded_diff": float(np.max(np.abs(plain - want)))}))
