"""A small Flax Linen CNN with BatchNorm, returned with its variables.

``linen_cnn()`` returns ``(module, variables)``; ``variables`` has ``params`` and
``batch_stats``. Input ``f32[B,12,12,1]``, output ``f32[B,10]``. Call with ``train=True``
and ``mutable=["batch_stats"]`` to update the statistics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn



class LinenCNN(nn.Module):
    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))                    # [B,6,6,8]
        x = nn.Conv(16, (3, 3), padding="VALID")(x)                   # [B,4,4,16]
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))                    # [B,2,2,16]
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def linen_cnn(seed: int = 0):
    """``(LinenCNN(), variables)`` initialized from ``seed``."""
    module = LinenCNN()
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 12, 12, 1)), train=False)
    return module, variables


if __name__ == "__main__":
    module, variables = linen_cnn()
    print(module.apply(variables, jnp.ones((2, 12, 12, 1))).shape)
