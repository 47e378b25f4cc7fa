"""An NNX LSTM over a sequence: ``nnx.RNN`` (an ``nnx.scan`` over time) around an
``nnx.OptimizedLSTMCell``, then a Linear head on the last hidden state.

Input ``f32[B,T,F]`` (batch-major, F=8 features), output ``f32[B,4]``. ``nnx.RNN`` keeps
a ``carry`` RNG stream for the initial carry, so every call advances its RNG count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

FEATURES = 8


class LSTMModel(nnx.Module):
    def __init__(self, features: int = FEATURES, hidden: int = 16, out: int = 4, *,
                 rngs: nnx.Rngs):
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(features, hidden, rngs=rngs))
        self.head = nnx.Linear(hidden, out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.rnn(x)  # [B,T,hidden]
        return self.head(h[:, -1])


def rnn(seed: int = 0) -> LSTMModel:
    """The example LSTM (8 features -> 16 hidden -> 4 outputs)."""
    return LSTMModel(rngs=nnx.Rngs(seed))


if __name__ == "__main__":
    print(rnn()(jnp.ones((2, 6, FEATURES))).shape)
