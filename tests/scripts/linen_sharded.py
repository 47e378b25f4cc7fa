"""Run in a subprocess with 8 fake CPU devices: Linen MLPs sharded by ``nn.with_partitioning``
and by logical names with ``nn.logical_axis_rules``, traced (no ``shard=``), compiled and saved on
a data=2,model=4 mesh. Prints one JSON line: the variables' IR metadata, the saved specs, and
whether the compiled and loaded runs equal the model's own jax.jit on the same mesh and shardings.
"""
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nnxc  # noqa: E402
from nnxc.backends.xla.compile import parse_mesh  # noqa: E402

init = nn.initializers.lecun_normal()
RULES = (("batch", "data"), ("mlp", "model"), ("embed", None))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(64, kernel_init=nn.with_partitioning(init, (None, "model")),
                     bias_init=nn.with_partitioning(nn.initializers.normal(), ("model",)))(x)
        return nn.Dense(16, kernel_init=nn.with_partitioning(init, ("model", None)))(nn.gelu(h))


class LogicalMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(64, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.normal(), ("mlp",)))(x)
        return nn.Dense(16, kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(nn.gelu(h))


def own_jit(model, variables, mesh, x, logical):
    """The model's own apply under jax.jit with Flax's own shardings of the variables (mesh
    axis names as they are, or logical names through RULES)."""
    specs = nn.get_partition_spec(variables)
    var_shardings = (nn.logical_to_mesh_sharding(specs, mesh, RULES) if logical
                     else jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                                 is_leaf=lambda s: isinstance(s, P)))
    fn = jax.jit(lambda v, x: model.apply(v, x),
                 in_shardings=(var_shardings, NamedSharding(mesh, P("data"))),
                 out_shardings=NamedSharding(mesh, P()))
    return np.asarray(fn(variables, x))


def run(model, mesh, x, tmp, rules_in_context):
    variables = model.init(jax.random.key(0), x)
    if rules_in_context:
        with nn.logical_axis_rules(RULES):
            graph = nnxc.trace(model, "f32[8,32]", variables=variables)
    else:
        graph = nnxc.trace(model, "f32[8,32]", variables=variables)
    want = own_jit(model, variables, mesh, x, rules_in_context)
    exe = nnxc.compile(graph, mesh=mesh)
    got = np.asarray(exe(x))
    path = os.path.join(tmp, type(model).__name__ + ".nnxc")
    manifest = nnxc.save(graph, path, mesh=mesh)
    loaded = np.asarray(nnxc.load(path, mesh=mesh)(x))
    return {"meta": {v.path: {k: list(x) for k, x in v.meta.items()} for v in graph.variables},
            "ir": [line.strip() for line in str(graph).splitlines() if line.strip().startswith("var ")],
            "saved": manifest["sharding"]["variables"],
            "collectives": sorted({(r["module"], r["op"], r["axes"]) for r in exe.collectives()}),
            "exact": bool(np.array_equal(got, want)), "exact_loaded": bool(np.array_equal(loaded, want)),
            "unsharded_diff": float(np.max(np.abs(np.asarray(nnxc.compile(graph)(x)) - want)))}


mesh = parse_mesh("data=2,model=4")
x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
with tempfile.TemporaryDirectory() as tmp:
    out = {"partitioned": run(MLP(), mesh, x, tmp, False),
           "logical": run(LogicalMLP(), mesh, x, tmp, True)}
print(json.dumps(out))
sys.stdout.flush()
