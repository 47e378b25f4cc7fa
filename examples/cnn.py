"""A small NNX CNN on NHWC images: Conv -> BatchNorm -> relu -> max_pool, Conv -> relu ->
avg_pool (padded), then a Linear head.

Input ``f32[B,16,16,1]``, output ``f32[B,10]`` logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx



class CNN(nnx.Module):
    def __init__(self, channels: int = 1, classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, 8, kernel_size=(3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), strides=(1, 1), padding="VALID", rngs=rngs)
        self.head = nnx.Linear(3 * 3 * 16, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))                              # [B,16,16,8]
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")        # [B,8,8,8]
        x = nnx.relu(self.conv2(x))                                        # [B,6,6,16]
        x = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                         count_include_pad=False)                          # [B,3,3,16]
        return self.head(x.reshape(x.shape[0], -1))


def cnn(seed: int = 0) -> CNN:
    """The example CNN (16x16x1 images, 10 classes), in eval mode."""
    model = CNN(rngs=nnx.Rngs(seed))
    model.eval()
    return model


if __name__ == "__main__":
    print(cnn()(jnp.ones((2, 16, 16, 1))).shape)
