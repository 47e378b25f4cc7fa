"""Tensor types of the IR: a shape of ints or symbolic dims, and a short dtype name."""
from __future__ import annotations

import re
from typing import NamedTuple, Union

import numpy as np

Dim = Union[int, str]  # a symbolic dim is its expression text, e.g. "B" or "2*B"

# short name <-> numpy dtype name; the short names are what the text form shows
_SHORT = {
    "bool": "bool", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
    "complex64": "c64", "complex128": "c128",
    "float8_e4m3fn": "f8e4m3fn", "float8_e5m2": "f8e5m2", "float0": "float0",
}
_LONG = {v: k for k, v in _SHORT.items()}
DTYPE_NAMES = frozenset(_LONG) | {"key<fry>", "key<rbg>", "key<urbg>"}
_KEY_IMPLS = {"fry": "threefry2x32", "rbg": "rbg", "urbg": "unsafe_rbg"}
_SYM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def dtype_name(dtype) -> str:
    """Short IR name of a numpy / JAX dtype (``float32`` -> ``f32``, keys -> ``key<fry>``)."""
    try:
        return _NAMES[dtype]
    except (KeyError, TypeError):
        pass
    name = _dtype_name(dtype)
    try:
        _NAMES[dtype] = name
    except TypeError:  # unhashable
        pass
    return name


_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    text = str(dtype)
    if text.startswith("key<"):
        return text
    try:
        return _SHORT[np.dtype(dtype).name]
    except (KeyError, TypeError) as e:
        raise ValueError(f"dtype {dtype!r} has no IR name") from e


def to_dtype(name: str):
    """The numpy (or JAX key) dtype for a short IR name."""
    if name.startswith("key<"):
        import jax
        return jax.random.key(0, impl=_KEY_IMPLS[name[4:-1]]).dtype
    if name == "float0":
        from jax import dtypes
        return dtypes.float0
    long = _LONG.get(name)
    if long is None:
        raise ValueError(f"unknown dtype {name!r}")
    if long in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, long))
    return np.dtype(long)


def is_symbolic(dim: Dim) -> bool:
    return isinstance(dim, str)


def dim_text(dim) -> Dim:
    """Normalize a JAX dim (int or symbolic expression) to an IR dim."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    try:
        return int(dim)
    except Exception:  # noqa: BLE001 - a symbolic expression refuses int()
        return str(dim).replace(" ", "")


def is_plain_symbol(dim: Dim) -> bool:
    return isinstance(dim, str) and _SYM.fullmatch(dim) is not None


class TensorType(NamedTuple):
    shape: tuple
    dtype: str

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def size(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    @staticmethod
    def of(x) -> "TensorType":
        """The type of an array, ShapedArray or ShapeDtypeStruct."""
        return TensorType(tuple(dim_text(d) for d in x.shape), dtype_name(x.dtype))
