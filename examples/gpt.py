"""A small GPT-style decoder in NNX: token + position embeddings, a Python loop over
pre-LayerNorm blocks (causal self-attention and a gelu MLP), final LayerNorm, Linear logits.

Input ``i32[B,T]`` tokens (T <= ``max_len``), output ``f32[B,T,vocab]`` logits. The blocks
live in an ``nnx.List`` (flax 0.12 refuses plain lists of modules), so their paths are
``blocks.0.attn.query.kernel`` and so on. Dropout follows NNX: ``model.eval()`` /
``model.train()``, or ``deterministic=`` on the call, which overrides the mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

VOCAB = 64
MAX_LEN = 16


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, num_heads: int, *, dropout: float, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads, d_model, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.down = nnx.Linear(4 * d_model, d_model, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x, mask, deterministic: bool | None = None):
        h = self.attn(self.ln1(x), mask=mask, deterministic=deterministic)
        x = x + self.dropout(h, deterministic=deterministic)
        h = self.down(nnx.gelu(self.up(self.ln2(x))))
        return x + self.dropout(h, deterministic=deterministic)


class GPT(nnx.Module):
    def __init__(self, depth: int = 2, d_model: int = 64, num_heads: int = 4, vocab: int = VOCAB,
                 max_len: int = MAX_LEN, *, dropout: float = 0.1, rngs: nnx.Rngs):
        self.tok = nnx.Embed(vocab, d_model, rngs=rngs)
        self.pos = nnx.Embed(max_len, d_model, rngs=rngs)
        self.blocks = nnx.List([Block(d_model, num_heads, dropout=dropout, rngs=rngs)
                                for _ in range(depth)])
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        mask = nnx.make_causal_mask(tokens)  # [B,1,T,T]
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))[None]
        for block in self.blocks:  # unrolled: each block is its own copy in the IR
            x = block(x, mask, deterministic)
        return self.head(self.ln_f(x))


def gpt(depth: int = 2, d_model: int = 64, num_heads: int = 4, vocab: int = VOCAB,
        max_len: int = MAX_LEN, seed: int = 0) -> GPT:
    """The example GPT, in eval mode."""
    model = GPT(depth, d_model, num_heads, vocab, max_len, rngs=nnx.Rngs(seed))
    model.eval()
    return model


if __name__ == "__main__":
    print(gpt()(jnp.zeros((2, 8), jnp.int32)).shape)
