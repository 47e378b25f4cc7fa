"""IR variable kinds (``Param``, ``BatchStat``, Linen collections, user subclasses) as the
flax ``nnx.Variable`` classes they name: what filters and summaries need to know about them."""
from __future__ import annotations

from flax import nnx

# Linen collections as NNX Variable types (nnx.bridge uses the same correspondence)
LINEN_KINDS = {"params": "Param", "batch_stats": "BatchStat", "intermediates": "Intermediate",
               "cache": "Cache", "rngs": "RngKey"}
_STAND_INS: dict[str, type] = {}


def _subclasses(cls: type):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def variable_class(kind: str) -> type:
    """The nnx.Variable class named ``kind`` (flax's own, then user subclasses by name)."""
    name = LINEN_KINDS.get(kind, kind)
    cls = getattr(nnx, name, None)
    if isinstance(cls, type) and issubclass(cls, nnx.Variable):
        return cls
    for sub in _subclasses(nnx.Variable):
        if sub.__name__ == name and sub.__module__ != __name__:
            return sub
    if name not in _STAND_INS:  # a kind no loaded class has (e.g. a graph parsed from text)
        _STAND_INS[name] = type(name, (nnx.Variable,), {"__module__": __name__})
    return _STAND_INS[name]
