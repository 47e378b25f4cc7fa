"""JAX's threefry PRNG in ONNX integer ops, bit for bit, so train-mode Dropout exports exactly.

A ``key<fry>[...]`` value is its ``uint32[..., 2]`` key data. The Threefry-2x32 hash is one
model-local function (``nnxc.threefry2x32``), called by random_bits / random_split /
random_fold_in the way JAX's partitionable threefry implementation calls it.
"""
from __future__ import annotations

import itertools

import numpy as np
from onnx import helper, numpy_helper

from .shape import dims_of
from .table import Refused, rule

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry_function(opset: int):
    nodes, count = [], itertools.count()

    def op(kind, *ins, **attrs):
        out = f"t{next(count)}"
        nodes.append(helper.make_node(kind, list(ins), [out], **attrs))
        return out

    def const(v):
        return op("Constant", value=numpy_helper.from_array(np.array(v, np.uint32), "value"))

    ks = ["k1", "k2", op("BitwiseXor", op("BitwiseXor", "k1", "k2"), const(0x1BD11BDA))]
    x = [op("Add", "x1", "k1"), op("Add", "x2", "k2")]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = op("Add", x[0], x[1])
            rot = op("BitwiseOr", op("BitShift", x[1], const(r), direction="LEFT"),
                     op("BitShift", x[1], const(32 - r), direction="RIGHT"))
            x = [x0, op("BitwiseXor", x0, rot)]
        x = [op("Add", x[0], ks[(i + 1) % 3]), op("Add", op("Add", x[1], ks[(i + 2) % 3]), const(i + 1))]
    nodes.append(helper.make_node("Identity", [x[0]], ["y1"]))
    nodes.append(helper.make_node("Identity", [x[1]], ["y2"]))
    return helper.make_function("nnxc", "threefry2x32", ["k1", "k2", "x1", "x2"], ["y1", "y2"],
                                nodes, [helper.make_opsetid("", opset)],
                                doc_string="Threefry-2x32 with 20 rounds, as jax.random")


def threefry(b, k1: str, k2: str, x1: str, x2: str) -> list[str]:
    if b.opset < 18:
        raise Refused(f"JAX's threefry PRNG needs bitwise ops (opset >= 18; exporting at opset "
                      f"{b.opset}): export at a newer opset, or trace in eval mode so the model "
                      "draws no random numbers")
    if "threefry2x32" not in b.ctx.functions:
        b.ctx.functions["threefry2x32"] = _threefry_function(b.opset)
    return b.op("threefry2x32", k1, k2, x1, x2, outs=2, domain="nnxc")


def _check_impl(node):
    for v in list(node.inputs) + list(node.outputs):
        if v.type.dtype.startswith("key<") and v.type.dtype != "key<fry>":
            raise Refused(f"PRNG implementation {v.type.dtype}: only threefry keys export "
                          "(or trace in eval mode so no random numbers are drawn)")
    impl = node.attrs.get("impl")
    if impl is not None and impl.get("name") != "threefry2x32":
        raise Refused(f"PRNG implementation {impl.get('name')}: only threefry2x32 exports")


def _halves(b, keys: str, extra: int) -> tuple[str, str]:
    """The two uint32 words of each key, with ``extra`` trailing unit dims for broadcasting."""
    k1 = b.op("Gather", keys, b.scalar(0, "i64"), axis=-1)
    k2 = b.op("Gather", keys, b.scalar(1, "i64"), axis=-1)
    return b.unsqueeze(k1, range(-extra, 0)), b.unsqueeze(k2, range(-extra, 0))


def _counts(b, shape) -> tuple[str, str]:
    """jax's iota_2x32_shape: the row-major index of every element as (high, low) words."""
    size = 1
    for d in shape:
        size = size * d if isinstance(d, int) and isinstance(size, int) else None
    n = b.dim_scalar("*".join(f"({d})" for d in shape) if size is None else size)
    idx = b.reshape(b.op("Range", b.scalar(0, "i64"), n, b.scalar(1, "i64")), shape)
    lo = b.cast(b.op("Mod", idx, b.scalar(2**32, "i64")), "i64", "u32")
    if size is not None and size <= 2**32:
        return b.scalar(0, "u32"), lo
    return b.cast(b.op("Div", idx, b.scalar(2**32, "i64")), "i64", "u32"), lo


def _stack(b, a: str, c: str) -> str:
    return b.op("Concat", b.unsqueeze(a, [-1]), b.unsqueeze(c, [-1]), axis=-1)


@rule("random_bits")
def _random_bits(b, node, xs):
    _check_impl(node)
    shape, width = dims_of(node.attrs["shape"]), node.attrs["bit_width"]
    k1, k2 = _halves(b, xs[0], len(shape))
    hi, lo = _counts(b, shape) if shape else (b.scalar(0, "u32"), b.scalar(0, "u32"))
    y1, y2 = threefry(b, k1, k2, hi, lo)
    out = node.outputs[0].type.dtype
    if width == 64:
        high = b.op("BitShift", b.cast(y1, "u32", "u64"), b.scalar(32, "u64"), direction="LEFT")
        return b.op("BitwiseOr", high, b.cast(y2, "u32", "u64"))
    return b.cast(b.op("BitwiseXor", y1, y2), "u32", out)


@rule("random_split")
def _random_split(b, node, xs):
    _check_impl(node)
    shape = dims_of(node.attrs["shape"])
    k1, k2 = _halves(b, xs[0], len(shape))
    hi, lo = _counts(b, shape) if shape else (b.scalar(0, "u32"), b.scalar(0, "u32"))
    return _stack(b, *threefry(b, k1, k2, hi, lo))


@rule("random_fold_in")
def _random_fold_in(b, node, xs):
    _check_impl(node)
    k1, k2 = _halves(b, xs[0], 0)
    msg = b.cast(xs[1], node.inputs[1].type.dtype, "u32")
    return _stack(b, *threefry(b, k1, k2, b.scalar(0, "u32"), msg))


@rule("random_seed")
def _random_seed(b, node, xs):
    _check_impl(node)
    t = node.inputs[0].type.dtype
    if t in ("i64", "u64"):
        wide = b.cast(xs[0], t, "u64")
        hi = b.cast(b.op("BitShift", wide, b.scalar(32, "u64"), direction="RIGHT"), "u64", "u32")
        lo = b.cast(wide, "u64", "u32")
    else:
        seed = xs[0]
        if t in ("i8", "i16", "u8", "u16", "bool"):
            seed, t = b.cast(seed, t, "i32"), "i32"
        lo = b.cast(seed, t, "u32")  # two's complement bits, as JAX's seed & 0xFFFFFFFF
        hi = b.op("Sub", lo, lo)
    return _stack(b, hi, lo)


@rule("random_wrap", "random_unwrap", "random_clone")
def _random_identity(b, node, xs):
    _check_impl(node)
    return xs[0]


@rule("iota_2x32_shape")
def _iota_2x32_shape(b, node, xs):
    shape = dims_of(node.attrs["shape"])
    hi, lo = _counts(b, shape)
    return [b.expand(hi, shape), lo]


@rule("threefry2x32")
def _threefry2x32(b, node, xs):
    return threefry(b, *xs)
