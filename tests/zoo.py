"""The model zoo used by the tests: the models in examples/, how to call them, and their
own (JAX) results as the reference nnxc must reproduce bit for bit.

    entry = ZOO["gpt"]
    model = make("gpt", train=False)                 # linen: a (module, variables) pair
    graph = trace("gpt", model, train=False)         # symbolic batch B
    x, = example_inputs("gpt", batch=3)
    out, state = reference("gpt", model, x, train=False)   # nnx.jit / jax.jit of apply

Example files are loaded by path, the way the CLI loads ``examples/gpt.py:gpt``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

import nnxc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


@functools.cache
def example_module(file: str):
    """The module ``examples/<file>.py``, imported once by path."""
    path = os.path.join(EXAMPLES, f"{file}.py")
    spec = importlib.util.spec_from_file_location(f"nnxc_example_{file}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Linen's dataclass transform looks the module up there
    spec.loader.exec_module(module)
    return module


def _factory(file: str, name: str) -> Callable:
    return lambda: getattr(example_module(file), name)()


@dataclass(frozen=True)
class Entry:
    factory: Callable[[], Any]  # zero arguments; NNX: a module, Linen: (module, variables)
    specs: tuple[str, ...]  # input specs with the symbolic batch dim B
    kwargs: dict = field(default_factory=dict)  # static keyword arguments of every call
    train: bool = False  # has train-mode behaviour (BatchNorm statistics, Dropout)
    linen: bool = False
    mutable: tuple[str, ...] = ()  # Linen: collections the call updates in train mode
    vocab: int | None = None  # integer inputs are token ids in [0, vocab)


ZOO: dict[str, Entry] = {
    "mlp": Entry(_factory("mlp", "mlp"), ("f32[B,64]",), train=True),
    "cnn": Entry(_factory("cnn", "cnn"), ("f32[B,16,16,1]",), train=True),
    "gpt": Entry(_factory("gpt", "gpt"), ("i32[B,8]",), train=True, vocab=64),
    "scan_gpt": Entry(_factory("scan_gpt", "scan_gpt"), ("i32[B,8]",), train=True, vocab=64),
    "rnn": Entry(_factory("rnn", "rnn"), ("f32[B,6,8]",)),
    "linen_cnn": Entry(_factory("linen_cnn", "linen_cnn"), ("f32[B,12,12,1]",), train=True,
                       linen=True, mutable=("batch_stats",)),
    "sow": Entry(_factory("sow", "sow_model"), ("f32[B,16]",)),
}

# (name, mode) for every zoo model in eval mode, and in train mode where that differs
CASES = [(name, mode) for name, e in ZOO.items()
         for mode in (("eval", "train") if e.train else ("eval",))]


def make(name: str, train: bool = False):
    """A fresh model (same seed, same weights every time); NNX modules in the given mode."""
    model = ZOO[name].factory()
    if isinstance(model, nnx.Module):
        model.train() if train else model.eval()
    return model


def call_kwargs(name: str, train: bool) -> dict:
    e = ZOO[name]
    return {**e.kwargs, "train": train} if e.linen else dict(e.kwargs)


def trace(name: str, model, train: bool = False) -> nnxc.ir.Graph:
    """``nnxc.trace`` of a zoo model on its symbolic-batch specs."""
    e = ZOO[name]
    with warnings.catch_warnings():  # Module.sow outside nnx.capture is deprecated in flax 0.12
        warnings.simplefilter("ignore", DeprecationWarning)
        if e.linen:
            module, variables = model
            mutable = list(e.mutable) if train and e.mutable else False
            return nnxc.trace(module, *e.specs, variables=variables, mutable=mutable,
                              **call_kwargs(name, train))
        return nnxc.trace(model, *e.specs, **call_kwargs(name, train))


def example_inputs(name: str, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Concrete inputs for the entry's specs with ``B = batch``."""
    return random_inputs(ZOO[name].specs, batch, seed, ZOO[name].vocab)


def random_inputs(specs, batch: int, seed: int = 0, vocab: int | None = None) -> list[np.ndarray]:
    """Normal floats, or token ids in [0, vocab) for integer specs; ``B`` is ``batch``."""
    rng = np.random.default_rng([seed, batch])
    out = []
    for spec in specs:
        dtype, dims = spec[:-1].split("[")
        shape = tuple(batch if d == "B" else int(d) for d in dims.split(","))
        if dtype.startswith("i"):
            out.append(rng.integers(0, vocab or 8, size=shape).astype(np.int32))
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def as_numpy(x) -> np.ndarray:
    """An array as numpy; PRNG key arrays as their raw key data."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _keyname(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def state_by_path(model) -> dict[str, np.ndarray]:
    """Every variable leaf of the model by dotted path (``blocks.0.attn.query.kernel``)."""
    if isinstance(model, tuple):  # Linen: {collection: {module: {name: leaf}}}, collection dropped
        tree = {k: v for k, v in model[1].items()}
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {".".join(_keyname(k) for k in path[1:]): as_numpy(x) for path, x in leaves}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        for sub, leaf in jax.tree_util.tree_flatten_with_path(var.get_value())[0]:
            out[".".join([str(p) for p in path] + [_keyname(k) for k in sub])] = as_numpy(leaf)
    return out


def reference(name: str, model, *inputs, train: bool = False):
    """The model's own result, ``(outputs, state_by_path)``, jitted the way users run it.

    Stateful like an NNX call: an NNX model is updated in place (BatchNorm statistics,
    RNG counts); a Linen ``(module, variables)`` pair gets its mutated collections written
    back into ``variables``. Sown intermediates from earlier calls are dropped first, so
    each call sows afresh, as the traced graph does.
    """
    kwargs = call_kwargs(name, train)
    if ZOO[name].linen:
        module, variables = model
        mutable = list(ZOO[name].mutable) if train and ZOO[name].mutable else False
        apply = jax.jit(lambda v, *xs: module.apply(v, *xs, mutable=mutable, **kwargs))
        out = res = apply(variables, *inputs)
        if mutable:
            out, updates = res
            variables.update(updates)
        return out, state_by_path(model)
    nnx.pop(model, nnx.Intermediate)
    model.train() if train else model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = nnx.jit(lambda m, *xs: m(*xs, **kwargs))(model, *inputs)
    return out, state_by_path(model)


# -- small models for the golden IR files (tests/golden/<name>.ir) -------------------------

class TinyMLP(nnx.Module):
    """Linear -> BatchNorm -> relu -> Linear; traced in train mode, so it has updates."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


class TinyScan(nnx.Module):
    """Three Linear layers made with nnx.vmap and applied with nnx.scan: one scan node."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs):
            return nnx.Linear(4, 4, rngs=rngs)

        self.layers = create(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, layer):
            return nnx.tanh(layer(x))

        return step(x, self.layers)


def _tiny_mlp():
    model = TinyMLP(nnx.Rngs(0))
    model.train()
    return model


# name -> (factory, specs); tools/update_goldens.py writes tests/golden/<name>.ir from these
GOLDEN: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "tiny_mlp": (_tiny_mlp, ("f32[B,4]",)),
    "sow": (ZOO["sow"].factory, ZOO["sow"].specs),
    "tiny_scan": (lambda: TinyScan(nnx.Rngs(0)), ("f32[B,4]",)),
}
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")


def trace_golden(name: str) -> nnxc.ir.Graph:
    factory, specs = GOLDEN[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return nnxc.trace(factory(), *specs)


def golden_text(name: str) -> str:
    """The IR text of a golden model, without source locations."""
    return trace_golden(name).text(locs=False)
