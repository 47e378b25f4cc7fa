"""An NNX model that sows an intermediate activation (``nnx.Intermediate``).

Input ``f32[B,16]``, output ``f32[B,4]``. Flax 0.12 collects sown values with
``nnx.capture``: ``nnx.capture(model, nnx.Intermediate)(x)`` returns ``(y, intermediates)``
with ``intermediates["hidden"]`` the post-gelu activation ``f32[B,32]``; nnxc traces that
call as it is (``nnxc ir examples/sow.py:captured -i x:f32[B,16]``), the intermediates
being outputs. Calling the model itself still sows into the model (deprecated in flax 0.12;
nnxc turns the sown value into a new variable), which ``sow_model`` keeps for the tests.
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


def captured(seed: int = 0):
    """The MLP's call with its sown intermediates captured: ``x -> (y, intermediates)``."""
    return nnx.capture(sow_model(seed), nnx.Intermediate)


if __name__ == "__main__":
    y, intermediates = captured()(jnp.ones((2, 16)))
    print(y.shape, intermediates["hidden"][0].shape)
