"""An NNX model that sows an intermediate activation (``nnx.Intermediate``).

Input ``f32[B,16]``, output ``f32[B,4]``; after a call the model holds ``hidden``, a
tuple with the post-gelu activation ``f32[B,32]``, which nnxc turns into a new variable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx



class SowMLP(nnx.Module):
    def __init__(self, din: int = 16, dhidden: int = 32, dout: int = 4, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.l2 = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.gelu(self.l1(x))
        self.sow(nnx.Intermediate, "hidden", h)
        return self.l2(h)


def sow_model(seed: int = 0) -> SowMLP:
    """The example sowing MLP (16 -> 32 -> 4)."""
    return SowMLP(rngs=nnx.Rngs(seed))


if __name__ == "__main__":
    model = sow_model()
    print(model(jnp.ones((2, 16))).shape, model.hidden[0].shape)
