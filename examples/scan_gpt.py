"""The GPT decoder with its layers stacked: blocks are created with ``nnx.vmap`` (one
split RNG per layer) and applied with ``nnx.scan``, so the layer stack is one loop.

Input ``i32[B,T]`` tokens, output ``f32[B,T,vocab]`` logits. Every block parameter has a
leading layer axis (``blocks.attn.query.kernel: f32[depth,64,4,16]``). The block is the
one in gpt.py, repeated here so that each example is a single self-contained file.
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


class ScanGPT(nnx.Module):
    def __init__(self, depth: int = 4, d_model: int = 64, num_heads: int = 4, vocab: int = VOCAB,
                 max_len: int = MAX_LEN, *, dropout: float = 0.1, rngs: nnx.Rngs):
        self.tok = nnx.Embed(vocab, d_model, rngs=rngs)
        self.pos = nnx.Embed(max_len, d_model, rngs=rngs)

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create_blocks(rngs: nnx.Rngs) -> Block:
            return Block(d_model, num_heads, dropout=dropout, rngs=rngs)

        self.blocks = create_blocks(rngs)
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        mask = nnx.make_causal_mask(tokens)  # [B,1,T,T]
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))[None]

        # x is the carry, the stacked blocks are scanned over their layer axis, the mask is
        # the same for every layer; `deterministic` is a Python value, so it is closed over
        @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
        def forward(x, block: Block, mask):
            return block(x, mask, deterministic)

        x = forward(x, self.blocks, mask)
        return self.head(self.ln_f(x))


def scan_gpt(depth: int = 4, d_model: int = 64, num_heads: int = 4, vocab: int = VOCAB,
             max_len: int = MAX_LEN, seed: int = 0) -> ScanGPT:
    """The example scanned GPT, in eval mode."""
    model = ScanGPT(depth, d_model, num_heads, vocab, max_len, rngs=nnx.Rngs(seed))
    model.eval()
    return model


if __name__ == "__main__":
    print(scan_gpt()(jnp.zeros((2, 8), jnp.int32)).shape)
