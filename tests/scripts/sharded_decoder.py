"""A tensor-parallel decoder (attention heads and MLP split along ``model``).

As a script (a subprocess with 8 fake CPU devices): compiled on a data=2,model=4 mesh; prints
one JSON line: max abs difference to the unsharded run, the collectives in the HLO, and the
collectives per module (``Compiled.collectives``); with an argument, writes the HTML view
with them there. As a model file: ``sharded_decoder.py:decoder`` for ``nnxc compile --mesh``.
"""
import json
import os
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

init = nnx.initializers.lecun_normal()


class Block(nnx.Module):
    def __init__(self, d, heads, rngs):
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads, d, decode=False, rngs=rngs,
            kernel_init=nnx.with_partitioning(init, (None, "model", None)),
            out_kernel_init=nnx.with_partitioning(init, ("model", None, None)))
        self.up = nnx.Linear(d, 4 * d, rngs=rngs, kernel_init=nnx.with_partitioning(init, (None, "model")))
        self.down = nnx.Linear(4 * d, d, rngs=rngs, kernel_init=nnx.with_partitioning(init, ("model", None)))

    def __call__(self, x):
        h = self.ln(x)
        x = x + self.attn(h, mask=nnx.make_causal_mask(jnp.ones(x.shape[:2])))
        return x + self.down(nnx.gelu(self.up(self.ln(x))))


class Decoder(nnx.Module):
    def __init__(self, depth=2, d=32, heads=4, *, rngs):
        self.blocks = nnx.List([Block(d, heads, rngs) for _ in range(depth)])

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def decoder():
    return Decoder(rngs=nnx.Rngs(0))


def main(html_path=None):
    import nnxc
    import nnxc.ir.view
    from nnxc.backends.xla.compile import parse_mesh

    mesh = parse_mesh("data=2,model=4")
    with jax.set_mesh(mesh):
        model = decoder()
    graph = nnxc.trace(model, "f32[B,8,32]")
    x = np.random.default_rng(0).standard_normal((4, 8, 32)).astype(np.float32)
    sharded = nnxc.compile(graph, mesh=mesh)
    plain = nnxc.compile(graph)
    diff = float(np.max(np.abs(np.asarray(sharded(x)) - np.asarray(plain(x)))))
    struct = jax.ShapeDtypeStruct(x.shape, x.dtype)
    hlo = sharded.as_text("hlo", struct)
    found = [c for c in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
             if c in hlo]
    kernel = sharded.state["blocks.0.up.kernel"]
    per_module = sharded.collectives(struct)
    if html_path:
        with open(html_path, "w") as f:
            f.write(nnxc.ir.view.to_html(graph, collectives=per_module))
    print(json.dumps({"diff": diff, "collectives": found, "kernel_spec": str(kernel.sharding.spec),
                      "devices": len(kernel.sharding.device_set), "per_module": per_module,
                      "unsharded": plain.collectives(struct),
                      "page_collectives": nnxc.ir.view.page_data(graph, collectives=per_module)["CO"]}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
