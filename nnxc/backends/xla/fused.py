"""XLA lowerings of the ``nnxc.*`` ops that fusion passes introduce (defined in ir/fused_ops.py).

Each is written with the same JAX calls Flax and jax.nn use, so a fused graph computes what
the model computed (bit-exact for the forms Flax produces).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .rules import attrs_of, rule


@rule("nnxc.linear")
def _linear(node, args, dims):
    x, w, b = args
    a = attrs_of(node, dims)
    y = lax.dot_general(x, w, a["dimension_numbers"], precision=a.get("precision"),
                        preferred_element_type=a.get("preferred_element_type"))
    return [y + jnp.reshape(b, (1,) * (y.ndim - b.ndim) + tuple(b.shape))]


def _keep(v, x, axes):
    """``v`` (the normalized dims' shape, or a scalar) reshaped to broadcast against ``x``."""
    if v.ndim == 0:
        return v
    return jnp.reshape(v, (1,) * (x.ndim - len(axes)) + tuple(v.shape))


def _mean(x, axes):
    n = math.prod(x.shape[a] for a in axes)
    return lax.div(jnp.sum(x, axis=axes), jnp.asarray(n, x.dtype))


@rule("nnxc.layer_norm")
def _layer_norm(node, args, dims):
    x, scale, bias = args
    axes, eps = tuple(node.attrs["axes"]), node.attrs["epsilon"]
    mean = _mean(x, axes)
    if node.attrs["fast_variance"]:  # Flax's default: one pass over x
        var = jnp.expand_dims(jnp.maximum(0.0, _mean(lax.square(x), axes) - lax.square(mean)), axes)
        mean = jnp.expand_dims(mean, axes)
    else:
        mean = jnp.expand_dims(mean, axes)
        var = jnp.expand_dims(_mean(lax.square(x - mean), axes), axes)
    mul = lax.rsqrt(var + jnp.asarray(eps, x.dtype)) * _keep(scale, x, axes)
    return [(x - mean) * mul + _keep(bias, x, axes)]


@rule("nnxc.rms_norm")
def _rms_norm(node, args, dims):
    x, scale = args
    axes, eps = tuple(node.attrs["axes"]), node.attrs["epsilon"]
    var = jnp.expand_dims(_mean(lax.square(x), axes), axes)
    return [x * (lax.rsqrt(var + jnp.asarray(eps, x.dtype)) * _keep(scale, x, axes))]


@rule("nnxc.gelu")
def _gelu(node, args, dims):
    return [jax.nn.gelu(args[0], approximate=node.attrs["approximate"])]


@rule("nnxc.silu")
def _silu(node, args, dims):
    return [jax.nn.silu(args[0])]


@rule("nnxc.softmax")
def _softmax(node, args, dims):
    return [jax.nn.softmax(args[0], axis=node.attrs["axis"])]


@rule("nnxc.attention")
def _attention(node, args, dims):
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else None
    bias = mask if mask is not None and mask.dtype != bool else None  # added to the scaled logits
    return [jax.nn.dot_product_attention(q, k, v, bias=bias, mask=None if bias is not None else mask,
                                         scale=node.attrs["scale"], implementation="xla")]
