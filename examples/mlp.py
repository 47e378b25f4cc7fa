"""A small NNX MLP: Linear -> BatchNorm -> gelu -> Dropout, twice, then a Linear head.

Input ``f32[B,64]`` (64 features, e.g. a flattened 8x8 image), output ``f32[B,10]`` logits.
``model.eval()`` uses the BatchNorm running averages and turns Dropout off;
``model.train()`` updates the BatchNorm statistics and draws dropout masks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

IN_FEATURES = 64


class MLP(nnx.Module):
    def __init__(self, din: int = IN_FEATURES, dhidden: int = 32, dout: int = 10, *,
                 dropout: float = 0.1, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.bn1 = nnx.BatchNorm(dhidden, rngs=rngs)
        self.linear2 = nnx.Linear(dhidden, dhidden, rngs=rngs)
        self.bn2 = nnx.BatchNorm(dhidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.dropout(nnx.gelu(self.bn1(self.linear1(x))))
        x = self.dropout(nnx.gelu(self.bn2(self.linear2(x))))
        return self.head(x)


def mlp(seed: int = 0) -> MLP:
    """The example MLP (64 -> 32 -> 32 -> 10), in eval mode."""
    model = MLP(rngs=nnx.Rngs(seed))
    model.eval()
    return model


if __name__ == "__main__":
    print(mlp()(jnp.ones((2, IN_FEATURES))).shape)
