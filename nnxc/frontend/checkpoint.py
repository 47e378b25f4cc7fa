"""Weights from files, restored into a model before it is traced.

- ``checkpoint=DIR``: an Orbax checkpoint in the standard layout, as
  ``orbax.checkpoint.StandardCheckpointer().save(DIR, nnx.state(model))`` writes it (for a
  Linen model, of its ``variables`` dict). ``nnx.State.to_pure_dict()`` checkpoints (no
  ``.value`` level) are read too. Every variable must be in the checkpoint and every array
  in the checkpoint must be a variable of the model, with the same shape and dtype.
- ``weights=FILE.safetensors``: tensors keyed by the variable paths nnxc prints
  (``linear1.kernel``; for Linen also ``params.Dense_0.kernel``). A key that is not a
  variable, or a tensor of another shape or dtype, is an error; variables the file leaves
  out keep the model's own values, with a warning naming them (RNG keys and counters are
  left out of the warning: files of weights rarely hold them).

Nothing here unpickles, and nothing lets a checkpoint make Orbax do so: before Orbax reads
a folder, every file in it is opened without following links and refused when it is a
pickle (or a link, a FIFO, a device); an aggregated msgpack file (``checkpoint``) may hold
only Orbax's own array, scalar, complex and tuple records of plain dtypes, and no pickled
payload.

The model passed in is left alone: restoring works on a copy (``nnx.split`` / ``nnx.merge``
of the model, together with the other NNX objects of a training step so that shared
variables stay shared).
"""
from __future__ import annotations

import io
import os
import pickletools
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ..errors import NnxcError, NnxcWarning

_LIST = 8  # names shown per kind of mismatch before "and N more"


@dataclass
class _Slot:
    """One array leaf of the model that a file may provide."""

    name: str  # the variable path nnxc prints (linear1.kernel)
    keys: tuple  # the leaf's pytree key path, as strings (('linear1', 'kernel', 'value'))
    aliases: tuple  # other spellings a file may use for it
    leaf: Any  # the model's current value
    kind: str  # Variable type (Param, BatchStat, RngKey, ...) or Linen collection


# -- entry point: nnxc.trace(..., checkpoint=, weights=) --------------------------------

def restore_weights(obj, args: tuple, variables, rngs, method, kwargs: dict, abstract, kw, *,
                    checkpoint=None, weights=None):
    """``(obj, args, variables, rngs)`` with the model's variables replaced by the file's.

    ``obj`` is what ``nnxc.trace`` was given: an NNX module, a Linen module (with
    ``variables`` or lazily initialized from ``rngs``) or a function of NNX objects (the
    file restores the first of them, the model of a training step)."""
    from flax import linen as nn
    from flax import nnx
    if checkpoint is not None and weights is not None:
        raise NnxcError("give checkpoint= or weights=, not both")
    source = _Checkpoint(checkpoint) if checkpoint is not None else _Safetensors(weights)
    if isinstance(obj, nnx.Module):
        (obj,) = _restore_nnx((obj,), source)
        return obj, args, variables, rngs
    if isinstance(obj, nn.Module):
        return _restore_linen(obj, variables, rngs, method, kwargs, abstract, kw, source, args)
    from .trace import _is_node
    nodes = [i for i, a in enumerate(args) if _is_node(a)]
    if callable(obj) and nodes:
        restored = _restore_nnx(tuple(args[i] for i in nodes), source)
        args = list(args)
        for i, node in zip(nodes, restored):
            args[i] = node
        return obj, tuple(args), variables, rngs
    raise NnxcError(f"{source.what} {source.label}: {type(obj).__name__} has no variables to restore "
                    "into (give an nnx.Module, a Linen module, or a function of NNX objects)")


def _restore_nnx(nodes: tuple, source) -> tuple:
    from flax import nnx

    from .trace import _variable_leaves
    graphdef, state = nnx.split(nodes)
    flat, tree = jax.tree_util.tree_flatten_with_path(state)
    named = _variable_leaves(state)
    if len(named) != len(flat):  # nnxc names every leaf; the two walks agree on NNX states
        raise NnxcError("cannot name the model's variables for restoring")
    slots, index = [], []
    for i, ((path, leaf), (name, var, _)) in enumerate(zip(flat, named)):
        keys = tuple(_key(k) for k in path)
        if keys[0] != "0":  # the other NNX objects of a training step keep their values
            continue
        keys, name = keys[1:], name.partition(".")[2]
        aliases = (keys[:-1],) if keys[-1] == "value" and len(keys) > 1 else ()
        kind = type(var).__name__ if var is not None else "Variable"
        slots.append(_Slot(name, keys, aliases, leaf, kind))
        index.append(i)
    values = source.read(slots, type(nodes[0]).__name__)
    leaves = [leaf for _, leaf in flat]
    for i, slot in zip(index, slots):
        if slot.name in values:
            leaves[i] = _place(values[slot.name], slot.leaf)
    return tuple(nnx.merge(graphdef, jax.tree_util.tree_unflatten(tree, leaves)))


def _restore_linen(module, variables, rngs, method, kwargs, abstract, kw, source, args):
    import functools

    from flax.core import unfreeze

    from .specs import concrete_shape
    if module.scope is not None:  # bound: restore its variables, trace the unbound module
        if variables is not None:
            raise NnxcError("the Linen module is bound to variables already; pass the unbound "
                            "module with variables=..., or the bound module without them")
        module, variables = module.unbind()
    if variables is None:  # lazily initialized, as nnxc.trace would, then restored
        concrete = jax.tree_util.tree_map(
            lambda s: jax.numpy.zeros(concrete_shape(s.shape), s.dtype), abstract)
        init = functools.partial(module.init, method=method, **kwargs) if method else \
            functools.partial(module.init, **kwargs)
        variables = init(jax.random.key(0) if rngs is None else rngs, *concrete[:kw.n],
                         **kw.split(concrete)[1])
        rngs = None
    variables = unfreeze(variables)
    flat, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = [tuple(_key(k) for k in path) for path, _ in flat]
    short = [".".join(k[1:]) for k in keys]
    clash = len(set(short)) != len(short)  # nnxc names them collection.path then (trace.py)
    slots = []
    for k, s, (_, leaf) in zip(keys, short, flat):
        full = ".".join(k)
        slots.append(_Slot(full if clash else s, k, ((full,) if not clash else ()), leaf, k[0]))
    values = source.read(slots, type(module).__name__)
    leaves = [_place(values[s.name], s.leaf) if s.name in values else s.leaf for s in slots]
    return module, args, jax.tree_util.tree_unflatten(tree, leaves), rngs


def _key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _place(value, like):
    """``value`` as the model holds ``like``: a PRNG key from its raw data, on like's devices."""
    if _is_key(like) and not _is_key(value):
        value = jax.random.wrap_key_data(np.asarray(value), impl=jax.random.key_impl(like))
    if isinstance(like, jax.Array):
        try:
            return jax.device_put(value, like.sharding)
        except Exception:  # noqa: BLE001 - a sharding that cannot hold it: leave it where it is
            return value
    return value


def _type(shape, dtype) -> str:
    from ..ir.types import TensorType
    return str(TensorType.of(jax.ShapeDtypeStruct(tuple(shape), dtype)))


def _fits(slot: _Slot, shape, dtype) -> bool:
    """Whether an array of ``shape``/``dtype`` can be the slot's value (a PRNG key may come
    as its raw key data, ``uint32[..., 2]``)."""
    leaf = slot.leaf
    if tuple(shape) == tuple(leaf.shape) and dtype == leaf.dtype:
        return True
    if _is_key(leaf) and not _is_key(jax.ShapeDtypeStruct((), dtype)):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        return tuple(shape) == tuple(data.shape) and np.dtype(dtype) == data.dtype
    return False


def _names(items: list[str], sep: str = ", ") -> str:
    shown = sep.join(items[:_LIST])
    return shown + (f" and {len(items) - _LIST} more" if len(items) > _LIST else "")


def _mismatch_error(what: str, label: str, model: str, problems: list[str]) -> NnxcError:
    return NnxcError(f"{what} {label} does not fit {model}: " + "; ".join(problems))


def _shape_problems(slots: list[_Slot], found: dict, where: str) -> list[str]:
    """``found``: slot name -> (shape, dtype) of the file's array for it."""
    bad = []
    for slot in slots:
        if slot.name in found:
            shape, dtype = found[slot.name]
            if not _fits(slot, shape, dtype):
                bad.append(f"{slot.name}: the model has {_type(slot.leaf.shape, slot.leaf.dtype)}, "
                           f"the {where} {_type(shape, dtype)}")
    if not bad:
        return []
    head = f"{len(bad)} variables differ in shape or dtype: " if len(bad) > 1 else ""
    return [head + _names(bad, "; ")]


# -- Orbax checkpoints -------------------------------------------------------------------

class _Checkpoint:
    what = "checkpoint"

    def __init__(self, path):
        self.path = os.fspath(path)
        self.label = self.path

    def read(self, slots: list[_Slot], model: str) -> dict:
        root = _checkpoint_root(self.path)
        check_no_pickle(root)
        import orbax.checkpoint as ocp
        from orbax.checkpoint import metadata as ocp_metadata
        checkpointer = ocp.StandardCheckpointer()
        try:
            meta = checkpointer.metadata(root).item_metadata
        except Exception as e:  # noqa: BLE001 - Orbax's own errors on a damaged folder
            raise NnxcError(f"checkpoint {self.path}: cannot read its metadata: {_first_line(e)}") from None
        if meta is None:
            raise NnxcError(f"checkpoint {self.path}: no tree metadata (_METADATA); write it with "
                            "orbax.checkpoint.StandardCheckpointer().save(path, nnx.state(model))")
        flat = jax.tree_util.tree_flatten_with_path(meta)[0]
        by_keys = {tuple(_key(k) for k in path): m for path, m in flat}
        owner = {}
        for slot in slots:
            for keys in (slot.keys, *slot.aliases):
                if isinstance(keys, tuple) and keys in by_keys:
                    owner[keys] = slot
                    break
        matched = {owner[k].name: k for k in owner}
        missing = [s.name for s in slots if s.name not in matched]
        extra = [_show_keys(k) for k in by_keys if k not in owner]
        not_arrays = [f"{owner[k].name} ({type(m).__name__})" for k, m in by_keys.items()
                      if k in owner and not isinstance(m, ocp_metadata.ArrayMetadata)]
        problems = []
        if not_arrays:
            problems.append(f"not arrays in the checkpoint: {_names(not_arrays)}")
        found = {owner[k].name: (m.shape, m.dtype) for k, m in by_keys.items()
                 if k in owner and isinstance(m, ocp_metadata.ArrayMetadata)}
        problems += _shape_problems(slots, found, "checkpoint")
        if missing:
            problems.append(f"missing from the checkpoint: {_names(missing)}")
        if extra:
            problems.append(f"in the checkpoint but not in the model: {_names(extra)}")
        if problems:
            raise _mismatch_error(self.what, self.path, model, problems)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
        try:
            restored = checkpointer.restore(root, target)
        except Exception as e:  # noqa: BLE001 - damaged array data
            raise NnxcError(f"checkpoint {self.path}: restoring failed: {_first_line(e)}") from None
        values = {tuple(_key(k) for k in path): x
                  for path, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
        return {name: values[keys] for name, keys in matched.items()}


def _show_keys(keys: tuple) -> str:
    keys = keys[:-1] if len(keys) > 1 and keys[-1] == "value" else keys
    return ".".join(keys)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _checkpoint_root(path: str) -> str:
    """The folder holding the checkpoint: ``path``, or its one item folder (a
    ``CheckpointManager`` step folder such as ``1/`` holding ``default/`` or ``state/``)."""
    try:
        st = os.stat(path)
    except OSError:
        raise NnxcError(f"checkpoint folder not found: {path}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NnxcError(f"checkpoint {path} is not a folder (an Orbax checkpoint is a folder; "
                        "for a .safetensors file use weights=)")
    if os.path.exists(os.path.join(path, "_METADATA")):
        return path
    items = [e.path for e in os.scandir(path)
             if e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, "_METADATA"))]
    if len(items) == 1:
        return items[0]
    if items:
        raise NnxcError(f"checkpoint {path} holds several items ({', '.join(sorted(os.path.basename(i) for i in items))}): "
                        "give the folder of the one to restore")
    raise NnxcError(f"checkpoint {path} is not an Orbax checkpoint (no _METADATA); write it with "
                    "orbax.checkpoint.StandardCheckpointer().save(path, nnx.state(model))")


# -- refusing pickles ----------------------------------------------------------------------

# opcodes that import or call: a pickle holding one runs code when loaded
_CODE_OPS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX",
                       "BUILD", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
_ORBAX_EXT = {1: "ndarray", 2: "complex", 3: "numpy scalar", 4: "tuple"}  # orbax.checkpoint.msgpack_utils


def is_pickle(f) -> bool:
    """Whether the stream ``f`` (binary, at its start) is a pickle ``pickle.load`` would
    read: opcodes through to STOP that start with a protocol 2+ header (``\\x80 N``), or
    that import or call, or that make up the whole stream (protocol 0/1)."""
    head = f.read(2)
    f.seek(0)
    framed = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    calls, ops = False, 0
    try:
        for op, _, pos in pickletools.genops(f):
            ops += 1
            if op.name == "STOP":
                whole = ops > 1 and not f.read(1)
                break
            calls = calls or op.name in _CODE_OPS
        else:
            return False
        if not (framed or calls or whole):
            return False
        f.seek(0)
        pickletools.dis(f, out=_Discard())  # checks the stack and memo as loading would
    except Exception:  # noqa: BLE001 - not a pickle stream
        return False
    return True


class _Discard:
    def write(self, text: str) -> int:
        return len(text)


def check_no_pickle(folder: str) -> None:
    """Refuse ``folder`` if any file in it is a pickle, a msgpack with pickled or unknown
    records, a link, a FIFO or a device; files are opened without following links."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                raise NnxcError(f"checkpoint {folder}: {os.path.relpath(full, folder)} is a link; "
                                "nnxc reads checkpoints only from inside their folder")
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder)
            try:
                fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) |
                             getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                why = "is a link" if os.path.islink(full) else f"cannot be read ({e.strerror})"
                raise NnxcError(f"checkpoint {folder}: {rel} {why}; nnxc reads checkpoints only "
                                "from regular files inside their folder") from None
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise NnxcError(f"checkpoint {folder}: {rel} is not a regular file")
                if is_pickle(f):
                    raise NnxcError(f"checkpoint {folder}: {rel} is a pickle; nnxc does not load "
                                    "pickles (they can run code): save the state with "
                                    "orbax.checkpoint.StandardCheckpointer")
                if name == "checkpoint" or name.endswith(".msgpack"):
                    f.seek(0)
                    _check_msgpack(f.read(), f"checkpoint {folder}: {rel}")


def _check_msgpack(data: bytes, label: str) -> None:
    """An aggregated Orbax msgpack file: only Orbax's array/scalar/complex/tuple records
    of plain dtypes, and no byte string that is a pickle."""
    import msgpack

    def check_bytes(b: bytes, where: str):
        if is_pickle(io.BytesIO(b)):
            raise NnxcError(f"{label}: {where} holds a pickle; nnxc does not load pickles")

    def ext(code, payload):
        if code not in _ORBAX_EXT:
            raise NnxcError(f"{label}: msgpack extension type {code} is not one Orbax writes "
                            f"({', '.join(f'{k} {v}' for k, v in _ORBAX_EXT.items())})")
        check_bytes(payload, f"a {_ORBAX_EXT[code]} record")
        if code in (1, 3):
            try:
                shape, dtype, buffer = msgpack.unpackb(payload, raw=True)
                dt = np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype)
            except Exception:  # noqa: BLE001 - not Orbax's (shape, dtype, buffer)
                raise NnxcError(f"{label}: a malformed {_ORBAX_EXT[code]} record") from None
            if dt.hasobject or dt.kind not in "biufc":
                raise NnxcError(f"{label}: an array of dtype {dt} (only numbers and booleans load)")
            check_bytes(buffer, "an array's data")
            return None
        if code == 4:
            walk(msgpack.unpackb(payload, raw=False, ext_hook=ext, strict_map_key=False), "a tuple")
        return None

    def walk(x, where):
        stack = [x]
        while stack:
            y = stack.pop()
            if isinstance(y, (bytes, bytearray)):
                check_bytes(bytes(y), "a byte string")
            elif isinstance(y, dict):
                stack.extend(y.keys())
                stack.extend(y.values())
            elif isinstance(y, (list, tuple)):
                stack.extend(y)

    try:
        obj = msgpack.unpackb(data, raw=False, ext_hook=ext, strict_map_key=False)
    except NnxcError:
        raise
    except Exception as e:  # noqa: BLE001 - not msgpack
        raise NnxcError(f"{label}: not a msgpack file Orbax wrote ({_first_line(e)})") from None
    walk(obj, "the file")


# -- safetensors ---------------------------------------------------------------------------

class _Safetensors:
    what = "weights"

    def __init__(self, path):
        self.path = os.fspath(path)
        self.label = self.path

    def read(self, slots: list[_Slot], model: str) -> dict:
        from safetensors import safe_open

        from ..ir.summary import is_rng_state
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise NnxcError(f"weights file {self.path}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NnxcError(f"weights file {self.path} is not a regular file")
            via = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else self.path
            try:
                with safe_open(via, framework="numpy") as f:
                    keys = list(f.keys())
                    by_name = self._match(keys, slots, model)
                    tensors = {name: f.get_tensor(key) for name, key in by_name.items()}
            except NnxcError:
                raise
            except Exception as e:  # noqa: BLE001 - safetensors' own errors on a damaged file
                raise NnxcError(f"weights file {self.path} is not a readable safetensors file: "
                                f"{_first_line(e)}") from None
        finally:
            os.close(fd)
        problems = _shape_problems(slots, {n: (t.shape, t.dtype) for n, t in tensors.items()}, "file")
        if problems:
            raise _mismatch_error(self.what, self.path, model, problems)
        missing = [s.name for s in slots if s.name not in tensors and not _rng_kind(s.kind, is_rng_state)]
        if missing:
            warnings.warn(f"weights {self.path} hold no value for {len(missing)} variable(s), which keep "
                          f"the model's own values: {_names(missing)}", NnxcWarning, stacklevel=4)
        return tensors

    def _match(self, keys: list[str], slots: list[_Slot], model: str) -> dict:
        names = {s.name: s for s in slots}
        for s in slots:
            for alias in s.aliases:
                if isinstance(alias, str):
                    names.setdefault(alias, s)
        by_name, unknown, twice = {}, [], []
        for key in keys:
            slot = names.get(key)
            if slot is None:
                unknown.append(key)
            elif slot.name in by_name:
                twice.append(f"{slot.name} (as {by_name[slot.name]} and {key})")
            else:
                by_name[slot.name] = key
        problems = []
        if unknown:
            import difflib
            known = list(names)
            shown = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                shown.append(f"{key} (did you mean {close[0]}?)" if close else key)
            problems.append(f"not variables of the model: {_names(shown)} (variables are named "
                            f"like {', '.join(s.name for s in slots[:3])})")
        if twice:
            problems.append(f"given twice: {_names(twice)}")
        if problems:
            raise _mismatch_error(self.what, self.path, model, problems)
        return by_name


def _rng_kind(kind: str, is_rng_state) -> bool:
    try:
        return is_rng_state(kind)
    except Exception:  # noqa: BLE001 - a Linen collection or a kind no class defines
        return False
