"""Models for ``tools/bench_onnx.py --speed`` (issue 11), written in Flax NNX, eval mode,
deterministic weights (``make_rngs(seed)``, and a seeded numpy draw for BatchNorm statistics).

- ``gpt``: the bundled ``examples/gpt.py`` decoder (LayerNorm, ``nnx.MultiHeadAttention``
  with a causal mask, gelu MLP), with ``max_len`` raised to the benchmark's sequence.
- ``llama``: a Llama-style decoder: RMSNorm, rotary position embeddings (rotate-half form),
  grouped-query attention (fewer key/value heads than query heads, shared by
  ``jnp.repeat``), causal mask, SwiGLU MLP, no biases, untied LM head.
- ``vit``: a small ViT: patch embedding by a strided Conv (NHWC), CLS token, learned
  position embeddings, pre-LayerNorm blocks (``nnx.MultiHeadAttention``, gelu MLP), the head
  on the CLS token.
- ``resnet``: ResNet-18 (7x7/2 stem, 3x3/2 max pool, four stages of two BasicBlocks, 1x1/2
  projection shortcuts, global average pool, 1000 classes) on NHWC images; BatchNorm in
  inference mode with random (seeded) statistics, so folding it matters.

``MODELS`` maps the benchmark's model names to ``Spec``s (factory, input spec string,
input maker, kind); ``TINY`` holds small versions of each for the tests.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_rngs(seed: int) -> nnx.Rngs:
    """Parameters drawn from an ``rbg`` key (XLA compiles its draws in a tenth of the time of
    threefry's, which dominates building a model eagerly); other streams from ``seed``."""
    return nnx.Rngs(seed, params=jax.random.key(seed, impl="rbg"))


def _example(name: str):
    """``examples/<name>.py``, imported once by path."""
    key = f"nnxc_bench_example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(ROOT, "examples", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# -- GPT (examples/gpt.py) -------------------------------------------------------------------

def gpt(depth: int = 4, d_model: int = 256, num_heads: int = 8, seq: int = 128, vocab: int = 64,
        seed: int = 0):
    """The example GPT decoder (``examples/gpt.py``), in eval mode, positions for ``seq`` tokens."""
    model = _example("gpt").GPT(depth, d_model, num_heads, vocab, seq, rngs=make_rngs(seed))
    model.eval()
    return model


# -- Llama-style decoder ---------------------------------------------------------------------

def rope_tables(seq: int, head_dim: int, base: float = 10000.0):
    """cos, sin ``[seq, head_dim]`` of the rotate-half rotary embedding."""
    inv = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotate ``x`` ``[B, T, heads, head_dim]`` by position."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


class GQAttention(nnx.Module):
    """Causal self-attention with ``kv_heads`` key/value heads shared by ``heads`` query heads."""

    def __init__(self, d_model: int, heads: int, kv_heads: int, *, rngs: nnx.Rngs):
        assert d_model % heads == 0 and heads % kv_heads == 0
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d_model // heads
        self.q = nnx.Linear(d_model, heads * self.head_dim, use_bias=False, rngs=rngs)
        self.k = nnx.Linear(d_model, kv_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.v = nnx.Linear(d_model, kv_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.o = nnx.Linear(heads * self.head_dim, d_model, use_bias=False, rngs=rngs)

    def __call__(self, x, cos, sin, mask):
        b, t, _ = x.shape
        hd = self.head_dim
        q = apply_rope(self.q(x).reshape(b, t, self.heads, hd), cos, sin)
        k = apply_rope(self.k(x).reshape(b, t, self.kv_heads, hd), cos, sin)
        v = self.v(x).reshape(b, t, self.kv_heads, hd)
        group = self.heads // self.kv_heads
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, self.heads * hd)
        return self.o(out)


class SwiGLU(nnx.Module):
    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(hidden, d_model, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nnx.Module):
    def __init__(self, d_model: int, heads: int, kv_heads: int, hidden: int, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.attn = GQAttention(d_model, heads, kv_heads, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.mlp = SwiGLU(d_model, hidden, rngs=rngs)

    def __call__(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nnx.Module):
    def __init__(self, depth: int, d_model: int, heads: int, kv_heads: int, hidden: int,
                 vocab: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
        self.layers = nnx.List([LlamaBlock(d_model, heads, kv_heads, hidden, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.RMSNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)
        self.head_dim = d_model // heads

    def __call__(self, tokens):
        t = tokens.shape[1]
        cos, sin = rope_tables(t, self.head_dim)
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, T, T]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.head(self.norm(x))


def llama(depth: int = 4, d_model: int = 256, heads: int = 8, kv_heads: int = 2, hidden: int = 768,
          vocab: int = 256, seed: int = 0) -> Llama:
    return Llama(depth, d_model, heads, kv_heads, hidden, vocab, rngs=make_rngs(seed))


# -- ViT -------------------------------------------------------------------------------------

class ViTBlock(nnx.Module):
    def __init__(self, d_model: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d_model, decode=False, keep_rngs=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.fc1 = nnx.Linear(d_model, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, d_model, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class ViT(nnx.Module):
    def __init__(self, image: int, patch: int, d_model: int, depth: int, heads: int, mlp: int,
                 classes: int, *, rngs: nnx.Rngs):
        assert image % patch == 0
        self.tokens = (image // patch) ** 2
        self.d_model = d_model
        self.patch = nnx.Conv(3, d_model, (patch, patch), strides=(patch, patch), padding="VALID",
                              rngs=rngs)
        self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, d_model)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, self.tokens + 1, d_model)))
        self.blocks = nnx.List([ViTBlock(d_model, heads, mlp, rngs=rngs) for _ in range(depth)])
        self.ln = nnx.LayerNorm(d_model, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(d_model, classes, rngs=rngs)

    def __call__(self, images):  # [B, H, W, 3]
        b = images.shape[0]
        x = self.patch(images).reshape(b, self.tokens, self.d_model)
        cls = jnp.broadcast_to(self.cls[...], (b, 1, self.d_model))
        x = jnp.concatenate([cls, x], axis=1) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x)[:, 0])


def vit(image: int = 32, patch: int = 4, d_model: int = 192, depth: int = 6, heads: int = 3,
        mlp: int = 768, classes: int = 10, seed: int = 0) -> ViT:
    return ViT(image, patch, d_model, depth, heads, mlp, classes, rngs=make_rngs(seed))


# -- ResNet-18 -------------------------------------------------------------------------------

def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = k // 2
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=nnx.initializers.he_normal(), rngs=rngs)


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = _conv(cin, cout, 1, stride, rngs)
            self.proj_bn = nnx.BatchNorm(cout, rngs=rngs)
        else:
            self.proj = self.proj_bn = None

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if self.proj is None else self.proj_bn(self.proj(x))
        return nnx.relu(y + short)


class ResNet(nnx.Module):
    def __init__(self, stages: tuple, width: int, classes: int, *, rngs: nnx.Rngs):
        self.stem = _conv(3, width, 7, 2, rngs)
        self.stem_bn = nnx.BatchNorm(width, rngs=rngs)
        blocks, cin = [], width
        for i, n in enumerate(stages):
            cout = width * 2 ** i
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(cin, classes, rngs=rngs)

    def __call__(self, images):  # [B, H, W, 3]
        x = nnx.relu(self.stem_bn(self.stem(images)))
        # "SAME" as in Flax's ImageNet ResNet; jax2onnx 0.17.1 drops explicit padding pairs
        # of nnx.max_pool (its output would be 55x55 instead of 56x56 at 224x224)
        x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))


def randomize_batch_stats(model: nnx.Module, seed: int) -> None:
    """Give every BatchNorm seeded, non-trivial statistics and affine parameters."""
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.BatchNorm):
            c = m.mean[...].shape
            m.mean[...] = jnp.asarray(rng.normal(0.0, 0.1, c), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.0, c), jnp.float32)
            m.bias[...] = jnp.asarray(rng.normal(0.0, 0.1, c), jnp.float32)


def resnet(stages: tuple = (2, 2, 2, 2), width: int = 64, classes: int = 1000, seed: int = 0) -> ResNet:
    """ResNet-18 by default, in eval mode (BatchNorm on its running statistics)."""
    model = ResNet(tuple(stages), width, classes, rngs=make_rngs(seed))
    randomize_batch_stats(model, seed)
    model.eval()
    return model


# -- the benchmark's models ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    factory: Callable  # () -> an NNX module in eval mode
    shape: tuple  # one example's input shape (the batch axis is symbolic B)
    dtype: str  # "i32" tokens or "f32" images
    kind: str  # "transformer" or "cnn" (the targets and the int8 mode follow)
    vocab: int = 0  # token inputs: draw from [0, vocab)

    def spec(self) -> str:
        """The ``nnxc.trace`` spec string, batch symbolic: ``i32[B,128]``."""
        return f"{self.dtype}[B,{','.join(map(str, self.shape))}]"

    def input(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.dtype == "i32":
            return rng.integers(0, self.vocab, (batch, *self.shape)).astype(np.int32)
        return rng.standard_normal((batch, *self.shape)).astype(np.float32)

    @property
    def quantize_mode(self) -> str:
        """int8 dynamic for transformers, static (calibrated) for CNNs."""
        return "static" if self.kind == "cnn" else "dynamic"


SEQ = 128
MODELS = {
    "gpt4": Spec(lambda: gpt(depth=4), (SEQ,), "i32", "transformer", vocab=64),
    "gpt8": Spec(lambda: gpt(depth=8), (SEQ,), "i32", "transformer", vocab=64),
    "llama": Spec(lambda: llama(), (SEQ,), "i32", "transformer", vocab=256),
    "vit": Spec(lambda: vit(), (32, 32, 3), "f32", "transformer"),
    "resnet18": Spec(lambda: resnet(), (224, 224, 3), "f32", "cnn"),
}

TINY = {  # the same architectures at test size
    "gpt": Spec(lambda: gpt(depth=1, d_model=32, num_heads=4, seq=8), (8,), "i32", "transformer", vocab=64),
    "llama": Spec(lambda: llama(depth=1, d_model=32, heads=4, kv_heads=2, hidden=64, vocab=32), (8,),
                  "i32", "transformer", vocab=32),
    "vit": Spec(lambda: vit(image=8, patch=4, d_model=32, depth=1, heads=2, mlp=64), (8, 8, 3), "f32",
                "transformer"),
    "resnet": Spec(lambda: resnet(stages=(1, 1, 1, 1), width=8, classes=10), (32, 32, 3), "f32", "cnn"),
}
