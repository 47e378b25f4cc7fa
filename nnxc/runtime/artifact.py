"""``nnxc.save`` / ``nnxc.load``: one self-contained, versioned AOT artifact file per model.

An artifact holds the serialized ``jax.export.Exported`` of the model's pure function
``(variables, args) -> (outputs, updated variables)`` (StableHLO, symbolic dims kept
symbolic, lowered for the chosen platforms), the weights in safetensors, and a JSON
manifest. Nothing in it can run code on load (no pickle), and loading needs jax and nnxc
only, not the model's Python code. The container (header, manifest, hashed sections) is
described in ``artifact_format``; the manifest holds:

- ``format_version``, ``nnxc_version``, ``jax_version``, ``name``, ``frontend``, ``platforms``
- ``inputs`` / ``outputs``: ``[{"name", "shape", "dtype"}]``, symbolic dims as strings
  (``["B", 784]``), dtypes as IR short names (``f32``, ``bf16``, ``key<fry>``)
- ``input_tree`` / ``output_tree``: the pytree structure, as JSON: a leaf is its flat index,
  ``null`` is None, ``{"tuple": [...]}``, ``{"list": [...]}``, ``{"dict": [[key, sub], ...]}``,
  ``{"namedtuple": name, "fields": [...], "items": [...]}``. Any other pytree node (a
  dataclass, ``nnx.State``, ``FrozenDict``, ...) is written as a ``dict`` of its children by
  key name with ``"class"`` naming the original type; ``load`` rebuilds it as a plain dict
  (namedtuples come back as namedtuples of the same name and fields)
- ``variables``: ``[{"path", "kind", "shape", "dtype", "meta", "new", "updated"}]``;
  ``new`` marks variables the call creates, ``updated`` those it returns a new value for
- ``returned_state``: paths of the updated variables, in the order the function returns them
- ``weights``: path -> stored ``{"dtype", "shape"}`` (key-typed variables are stored as their
  ``jax.random.key_data`` and wrapped again on load)
- ``sections`` / ``payload``: layout and sha256 of the payload (see ``artifact_format``)
- ``sharding`` (only in artifacts saved with ``mesh=``): the mesh, each variable's, input's
  and output's PartitionSpec and a sha256 per weight shard (see ``nnxc.runtime.distributed``)

Only updated variables are returned by the exported function, so running an inference
artifact does not copy its weights on every call.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from typing import Any

import jax
import numpy as np

from .._version import __version__
from ..errors import NnxcError
from ..ir.graph import Graph
from ..backends.xla.lower import updated_paths
from ..ir.parser import dim_expression
from ..ir.types import _KEY_IMPLS, DTYPE_NAMES, DimError, dtype_name, is_plain_symbol, to_dtype
from . import artifact_format as fmt
from .artifact_format import ArtifactError

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


# -- saving ------------------------------------------------------------------------

def save(graph_or_compiled, path: str | os.PathLike, platforms=("cpu",), passes=None,
         state: dict | None = None, mesh=None, shard: dict | None = None) -> dict:
    """Write ``graph_or_compiled`` (an IR Graph or ``nnxc.compile`` result) to ``path``.

    ``platforms``: a subset of cpu, cuda, rocm, tpu (a sequence or ``"cpu,cuda,tpu"``);
    ``passes``: optionally an ``nnxc.optimize`` pipeline applied first; ``state``: variable
    values overriding the held ones (a Compiled's current state, else the traced values).
    ``mesh`` (a jax Mesh, AbstractMesh or ``"data=2,model=4"``; default: a Compiled's own)
    saves a sharded artifact, variables split by their partitioning metadata or ``shard``
    (path glob -> PartitionSpec), for ``nnxc.load(path, mesh=...)`` in one or many processes.
    Returns the manifest written.
    """
    graph, values = _graph_and_state(graph_or_compiled)
    if mesh is None:
        mesh = getattr(graph_or_compiled, "mesh", None)
        shard = shard if shard is not None else getattr(graph_or_compiled, "shard", None)
    values.update(state or {})
    if passes is not None:
        from ..passes import optimize
        # the passes see the values being saved (freeze folds them into constants)
        graph = optimize(dataclasses.replace(graph, variables=[
            dataclasses.replace(v, data=values.get(v.path, v.data)) for v in graph.variables]),
            passes)
    platforms = _platforms(platforms)
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    returned = updated_paths(graph)
    placement = None
    if mesh is not None:
        from .distributed import placement_for
        mesh, placement = placement_for(graph, mesh, shard)
    exported = _export(graph, platforms, placement)
    weights, weight_specs, tensors = _weights(inputs, values)
    in_obj = _placeholder(graph.in_tree, len(graph.inputs))
    out_obj = _placeholder(graph.out_tree, len(graph.outputs))
    manifest = {
        "nnxc_version": __version__,
        "jax_version": jax.__version__,
        "name": graph.name,
        "frontend": graph.meta.get("frontend"),
        "platforms": list(platforms),
        "inputs": [_spec(v.name or f"arg{i}", v.type) for i, v in enumerate(graph.inputs)],
        "input_tree": _render(in_obj),
        "outputs": [_spec(n, v.type) for n, v in zip(_leaf_names(out_obj), graph.outputs)],
        "output_tree": _render(out_obj),
        "variables": [{"path": v.path, "kind": v.kind, "shape": list(v.value.type.shape),
                       "dtype": v.value.type.dtype, "new": bool(v.meta.get("new")),
                       "updated": v.path in returned,
                       "meta": {k: _jsonable(x) for k, x in v.meta.items() if k != "new"}}
                      for v in graph.variables],
        "returned_state": returned,
        "weights": weight_specs,
        "exported": {"calling_convention_version": exported.calling_convention_version,
                     "nr_devices": exported.nr_devices},
    }
    blob = exported.serialize()
    if placement is not None:
        from .distributed import sharding_entry
        manifest["sharding"] = sharding_entry(graph, mesh, placement, tensors, blob, bytes(weights.parts[0]))
    return fmt.write(path, manifest, {"exported": blob, "weights": weights})


def _graph_and_state(obj) -> tuple[Graph, dict]:
    if isinstance(obj, Graph):
        return obj, {v.path: v.data for v in obj.variables
                     if not v.meta.get("new") and v.data is not None}
    graph = getattr(obj, "graph", None)
    if isinstance(graph, Graph) and isinstance(getattr(obj, "state", None), dict):
        return graph, dict(obj.state)
    raise NnxcError(f"nnxc.save expects an IR Graph or a Compiled, got {type(obj).__name__}")


def _platforms(platforms) -> tuple[str, ...]:
    if isinstance(platforms, str):
        platforms = [p.strip() for p in platforms.split(",") if p.strip()]
    platforms = tuple(dict.fromkeys(p.lower() for p in platforms))
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise NnxcError(f"unknown platform(s) {', '.join(bad) or '(none given)'}: "
                        f"choose from {', '.join(PLATFORMS)}")
    return platforms


def _export(graph: Graph, platforms, placement: dict | None = None) -> jax.export.Exported:
    from ..backends.xla.compile import _struct
    from ..backends.xla.lower import run_graph
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    model = functools.partial(run_graph, graph)  # returns (outputs, updated_paths values)

    env: dict = {}  # one symbolic scope for all inputs
    var_structs = [_struct(v.value.type) for v in inputs]
    arg_structs = [_struct(v.type, env) for v in graph.inputs]
    try:
        return jax.export.export(jax.jit(model, **(placement or {})),
                                 platforms=platforms)(var_structs, arg_structs)
    except NnxcError:
        raise
    except Exception as e:  # noqa: BLE001 - lowering errors come in many types
        raise NnxcError(f"cannot export {graph.name} for {','.join(platforms)}: "
                        f"{type(e).__name__}: {e}") from e


def _weights(inputs, values: dict) -> tuple[fmt.Parts, dict, dict]:
    missing = [v.path for v in inputs if values.get(v.path) is None]
    if missing:
        raise NnxcError(f"no value for variable(s) {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else "") + "; pass state={path: array}")
    tensors, specs = {}, {}
    for v in inputs:
        x = values[v.path]
        if v.value.type.dtype.startswith("key<"):
            x = jax.random.key_data(x)
        # JAX arrays stay JAX arrays (written a few MiB at a time: np.asarray of a whole one
        # would keep a NumPy copy alive with it); anything else becomes a C-order array
        a = x if isinstance(x, jax.Array) else np.asarray(x, order="C")
        want = v.value.type
        got = tuple(np.shape(values[v.path]))
        if got != tuple(want.shape) or (not want.dtype.startswith("key<")
                                        and dtype_name(a.dtype) != want.dtype):
            raise NnxcError(f"variable {v.path}: value is {dtype_name(a.dtype)}{list(got)}, "
                            f"the graph expects {want}")
        tensors[v.path] = a
        specs[v.path] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape)}
    return fmt.safetensors_parts(tensors, _IR_TO_SAFETENSORS), specs, tensors


def _spec(name: str, t) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": t.dtype}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)) and not hasattr(v, "_fields"):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


# -- pytree structures as JSON --------------------------------------------------------

def _placeholder(tree, n: int):
    """The tree with its flat leaf indices as leaves (a flat tuple when it has none or
    cannot be rebuilt with ints as leaves)."""
    if tree is not None:
        try:
            return jax.tree_util.tree_unflatten(tree, list(range(n)))
        except Exception:  # noqa: BLE001 - a class whose unflatten insists on arrays
            pass
    return tuple(range(n))


def _key(k) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            x = getattr(k, attr)
            return x if isinstance(x, (str, int)) else str(x)
    return str(k)


def _render(obj) -> Any:
    if obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
        return {"namedtuple": type(obj).__name__, "fields": list(obj._fields),
                "items": [_render(x) for x in obj]}
    if type(obj) in (tuple, list):
        return {type(obj).__name__: [_render(x) for x in obj]}
    if type(obj) is dict:
        return {"dict": [[_key_json(k), _render(x)] for k, x in obj.items()]}
    children = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)[0]
    return {"dict": [[_key(p[0]) if p else i, _render(x)] for i, (p, x) in enumerate(children)],
            "class": f"{type(obj).__module__}.{type(obj).__qualname__}"}


def _key_json(k) -> Any:
    return k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k)


@functools.cache
def _namedtuple(name: str, fields: tuple):
    return collections.namedtuple(name, fields)


def rebuild(spec, leaves: list):
    """The pytree described by ``spec`` (a manifest tree) with ``leaves`` at its leaf indices."""
    if spec is None:
        return None
    if isinstance(spec, int):
        return leaves[spec]
    if "tuple" in spec:
        return tuple(rebuild(s, leaves) for s in spec["tuple"])
    if "list" in spec:
        return [rebuild(s, leaves) for s in spec["list"]]
    if "namedtuple" in spec:
        cls = _namedtuple(spec["namedtuple"], tuple(spec["fields"]))
        return cls(*(rebuild(s, leaves) for s in spec["items"]))
    return {k: rebuild(s, leaves) for k, s in spec["dict"]}


def _has_class(spec) -> bool:
    """Whether a manifest tree has a node rebuilt as a dict in place of its own class."""
    if not isinstance(spec, dict):
        return False
    if "class" in spec:
        return True
    children = spec.get("tuple") or spec.get("list") or spec.get("items") or \
        [s for _, s in spec.get("dict", [])]
    return any(_has_class(c) for c in children)


def _leaf_names(obj) -> list[str]:
    pairs = jax.tree_util.tree_flatten_with_path(obj)[0]
    return [".".join(str(_key(k)) for k in path) or "out" for path, _ in pairs]


# -- loading -----------------------------------------------------------------------

def load(path: str | os.PathLike, mesh=None) -> "Artifact":
    """Read and verify an artifact; the result runs it on the current platform.

    The file is memory-mapped and read in place: the weights are copied once, into the
    JAX arrays of ``Artifact.state``, and the mapping is closed before returning. Every
    check runs here, before anything can run (see ``Artifact``): a broken, edited or
    crafted file raises ArtifactError naming the file, the place and what is wrong.
    A sharded artifact (saved with ``mesh=``) loads on ``mesh`` (default: one made from the
    manifest over all devices), each process reading and checking only its own shards
    (see ``nnxc.runtime.distributed.ShardedArtifact``).
    """
    with fmt.mapped(path, verify_payload=False) as art:
        if "sharding" not in art.manifest:
            if mesh is not None:
                raise NnxcError(f"{os.fspath(path)} was saved without a mesh; load it without mesh=")
            art.verify_payload()
        try:
            if "sharding" in art.manifest:
                from .distributed import ShardedArtifact
                return ShardedArtifact(art.manifest, art.sections, art.release, mesh=mesh)
            return Artifact(art.manifest, art.sections, art.release)
        except ArtifactError as e:
            raise ArtifactError(f"{os.fspath(path)}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a check missing above
            raise ArtifactError(f"{os.fspath(path)}: malformed manifest "
                                f"({type(e).__name__}: {e})") from None


class Artifact:
    """A loaded artifact: ``art(*args)`` runs it and updates ``art.state``.

    ``art.apply(state, *args)`` is the pure form returning ``(outputs, new_state)``;
    ``art.manifest`` is the JSON manifest, ``art.exported`` the ``jax.export.Exported``.
    Inputs are checked against the manifest; one executable is compiled per input shape.
    """

    def __init__(self, manifest: dict, sections: dict, release=None):
        """``sections``: name -> bytes-like; ``release(name, start, end)``, if given, is
        told which byte ranges of a section have been read (see ``artifact_format.mapped``).

        Everything is checked here, before anything can run: the manifest on its own
        (``check_manifest``), the exported module (``check_module``: no custom call nnxc
        does not emit, no effects), the exported signature against the manifest, and the
        weights against both."""
        self.manifest = manifest
        spec = check_manifest(manifest)
        missing = [n for n in ("exported", "weights") if n not in sections]
        if missing:
            raise ArtifactError(f"the artifact has no {' and no '.join(missing)} section")
        try:  # a copy: jax's deserialize can leave references to its input in a cycle
            self.exported = jax.export.deserialize(bytearray(sections["exported"]))
        except Exception as e:  # noqa: BLE001 - flatbuffer / version errors
            raise ArtifactError(f"cannot deserialize the exported function: {e}") from None
        check_module(self.exported)
        check_signature(self.exported, spec)
        self._var_paths = spec.var_paths
        self._returned = spec.returned
        self._inputs = [(n, tuple(s), d, to_dtype(d)) for n, s, d in spec.inputs]
        self.state = self._read_state(
            sections["weights"], None if release is None else functools.partial(release, "weights"))
        self._var_structs = [jax.ShapeDtypeStruct(self.state[p].shape, self.state[p].dtype)
                             for p in self._var_paths]
        in_obj = rebuild(manifest["input_tree"], list(range(len(self._inputs))))
        self._in_tree = jax.tree_util.tree_structure(in_obj)
        self._in_exact = not _has_class(manifest["input_tree"])
        self._out_tree = manifest["output_tree"]
        self._call = self._jit()
        self._executables: dict[tuple, Any] = {}

    def _read_state(self, section, release) -> dict:
        return _read_weights(section, self.manifest, self.manifest["variables"], release)

    def _jit(self):
        return jax.jit(self.exported.call)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(self.exported.platforms)

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}[{','.join(map(str, s))}]" for n, s, d, _ in self._inputs)
        return f"<nnxc Artifact {self.manifest.get('name')}({ins}) for {','.join(self.platforms)}>"

    # -- running -------------------------------------------------------------------
    def apply(self, state: dict, *args):
        """Pure call: ``(outputs, new_state)``; ``state`` maps variable paths to arrays."""
        outs, updated = self._run(state, args)
        new_state = dict(state)
        new_state.update(zip(self._returned, updated))
        return rebuild(self._out_tree, outs), new_state

    def __call__(self, *args):
        outs, updated = self._run(self.state, args)
        if updated:  # a new dict, as apply gives: earlier references keep their values
            self.state = {**self.state, **dict(zip(self._returned, updated))}
        return rebuild(self._out_tree, outs)

    def _run(self, state: dict, args) -> tuple[list, list]:
        leaves, tree = jax.tree_util.tree_flatten(args)
        try:  # fast path: an argument signature already checked and compiled
            exe = self._executables[(tree, *[(x.shape, x.dtype) for x in leaves])]
        except (KeyError, AttributeError):
            leaves, exe = self._prepare(args)
        try:
            var_leaves = list(map(state.__getitem__, self._var_paths))
        except KeyError:
            missing = [p for p in self._var_paths if p not in state]
            raise NnxcError(f"no value for variable(s) {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else "")) from None
        try:
            return exe(var_leaves, self._place_args(leaves))
        except (TypeError, ValueError) as e:
            self._check_state(state)
            raise NnxcError(f"running {self.manifest.get('name')}: {e}") from e

    def _place_args(self, leaves: list) -> list:
        return leaves  # a sharded artifact makes global arrays of them

    def _prepare(self, args) -> tuple[list, Any]:
        """Check the arguments against the manifest; compile for their shapes once."""
        leaves = self._flat_args(args)
        tree = jax.tree_util.tree_structure(args)
        key = (tree, *[(x.shape, x.dtype) for x in leaves])
        exe = self._executables.get(key)
        if exe is None:
            here = jax.export.default_export_platform()
            if here not in self.platforms:
                raise NnxcError(f"artifact {self.manifest.get('name')} was exported for "
                                f"{', '.join(self.platforms)}; it cannot run on {here}")
            structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
            try:
                exe = self._call.lower(self._var_structs, structs).compile()
            except Exception as e:  # noqa: BLE001 - e.g. a dim expression the inputs break
                shapes = ", ".join(f"{n}: {_type_text(s.dtype)}[{','.join(map(str, s.shape))}]"
                                   for (n, *_), s in zip(self._inputs, structs))
                raise NnxcError(f"cannot run {self.manifest.get('name')} on inputs ({shapes}): "
                                f"{type(e).__name__}: {e}") from e
            self._executables[key] = exe
        return leaves, exe

    def _flat_args(self, args) -> list:
        leaves, tree = jax.tree_util.tree_flatten(tuple(args))
        names = ", ".join(n for n, *_ in self._inputs)
        if len(leaves) != len(self._inputs) or (self._in_exact and tree != self._in_tree):
            raise NnxcError(f"{self.manifest.get('name')} takes {len(self._inputs)} input "
                            f"array(s) ({names}) structured as {self._in_tree}; got "
                            f"{len(leaves)} structured as {tree}")
        out, dims = [], {}
        for (name, shape, dtype, want), x in zip(self._inputs, leaves):
            if not isinstance(x, jax.Array):
                x = np.asarray(x)
            if x.dtype != want:
                _input_error(name, shape, dtype, x, "wrong dtype")
            if len(x.shape) != len(shape):
                _input_error(name, shape, dtype, x, "wrong rank")
            for i, (d, s) in enumerate(zip(shape, x.shape)):
                if isinstance(d, int):
                    if d != s:
                        _input_error(name, shape, dtype, x, f"dim {i} is {s}, expected {d}")
                elif is_plain_symbol(d):
                    bound, where = dims.setdefault(d, (s, name))
                    if bound != s:
                        _input_error(name, shape, dtype, x,
                                     f"dim {i} is {s} but {d}={bound} from input {where!r}")
            out.append(x)
        for (name, shape, dtype, _), x in zip(self._inputs, out):  # expressions, e.g. 2*B
            for i, (d, s) in enumerate(zip(shape, x.shape)):
                if isinstance(d, str) and not is_plain_symbol(d):
                    want = _eval_dim(d, {k: v for k, (v, _) in dims.items()})
                    if want is not None and want != s:
                        _input_error(name, shape, dtype, x, f"dim {i} is {s} but {d}={want}")
        return out

    def _check_state(self, state: dict) -> None:
        for path, s in zip(self._var_paths, self._var_structs):
            x = state[path]
            if tuple(np.shape(x)) != tuple(s.shape) or getattr(x, "dtype", None) != s.dtype:
                raise NnxcError(f"state[{path!r}]: expected {_type_text(s.dtype)}"
                                f"{list(s.shape)}, got {_type_text(getattr(x, 'dtype', '?'))}"
                                f"{list(np.shape(x))}")


def _eval_dim(expr: str, env: dict) -> int | None:
    """A dim expression's value when all its symbols are bound, else None."""
    from ..ir.params import eval_dim
    if any(n not in env for n in re.findall(r"[A-Za-z_]\w*", expr)
           if n not in ("floordiv", "mod", "max", "min", "non_negative")):
        return None
    try:
        return int(eval_dim(expr, dict(env)))
    except Exception:  # noqa: BLE001 - leave odd expressions to the exported function
        return None


def _input_error(name, shape, dtype, x, why):
    expected = f"{dtype}[{','.join(map(str, shape))}]"
    got = f"{_type_text(x.dtype)}[{','.join(map(str, x.shape))}]"
    raise NnxcError(f"input {name!r}: expected {expected}, got {got} ({why})")


def _type_text(dtype) -> str:
    try:
        return dtype_name(dtype)
    except ValueError:
        return str(dtype)


# -- checking the manifest -------------------------------------------------------------
#
# ``load`` checks every field it uses before using any, so a manifest that was edited (and
# re-hashed) fails at ``load`` with the field's place, never later when called.

_TREE_DEPTH = 100  # output / input trees nest at most this deep


@dataclasses.dataclass
class ManifestSpec:
    """What ``load`` takes from a checked manifest."""

    inputs: list  # (name, shape, dtype) of each input array
    outputs: list  # (name, shape, dtype) of each output array
    variables: dict  # path -> the manifest's variable entry
    var_paths: list  # the variables the exported function takes, in order
    returned: list  # the variables it returns a new value for, in order


def _bad(where: str, why: str):
    raise ArtifactError(f"malformed manifest: {where}: {why}")


def _field(obj: dict, key: str, types, where: str):
    if key not in obj:
        _bad(where or "the manifest", f"no {key!r} field")
    x = obj[key]
    if not isinstance(x, types) or (isinstance(x, bool) and bool not in _as_tuple(types)):
        _bad(f"{where}.{key}" if where else key,
             f"expected {_type_names(types)}, got {type(x).__name__} {_short(x)}")
    return x


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in _as_tuple(types))


def _short(x) -> str:
    text = json.dumps(x) if not isinstance(x, (bytes, bytearray)) else repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_dtype(x, where: str) -> str:
    if not isinstance(x, str) or x not in DTYPE_NAMES:
        _bad(where, f"unknown dtype {_short(x)}")
    return x


def _check_shape(x, where: str) -> list:
    if not isinstance(x, list):
        _bad(where, f"expected a list of dims, got {_short(x)}")
    for i, d in enumerate(x):
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            _bad(f"{where}[{i}]", f"expected an integer or a dim expression, got {_short(d)}")
        if isinstance(d, int) and d < 0:
            _bad(f"{where}[{i}]", f"negative dim {d}")
        if isinstance(d, str):
            try:
                dim_expression(d)
            except DimError as e:
                _bad(f"{where}[{i}]", f"not a dim expression: {_short(d)} ({e.msg})")
    return x


def _check_specs(manifest: dict, key: str) -> list:
    out, names = [], set()
    for i, x in enumerate(_field(manifest, key, list, "")):
        where = f"{key}[{i}]"
        if not isinstance(x, dict):
            _bad(where, f"expected an object, got {_short(x)}")
        name = _field(x, "name", str, where)
        if name in names:
            _bad(f"{where}.name", f"{name!r} is used twice")
        names.add(name)
        out.append((name, _check_shape(x.get("shape"), f"{where}.shape"),
                    _check_dtype(x.get("dtype"), f"{where}.dtype")))
    return out


def _check_variables(manifest: dict) -> dict:
    out = {}
    for i, v in enumerate(_field(manifest, "variables", list, "")):
        where = f"variables[{i}]"
        if not isinstance(v, dict):
            _bad(where, f"expected an object, got {_short(v)}")
        path = _field(v, "path", str, where)
        if path in out:
            _bad(f"{where}.path", f"variable {path!r} is listed twice")
        _field(v, "kind", str, where)
        _field(v, "new", bool, where)
        _field(v, "updated", bool, where)
        _field(v, "meta", dict, where)
        _check_shape(v.get("shape"), f"{where}.shape")
        _check_dtype(v.get("dtype"), f"{where}.dtype")
        out[path] = v
    return out


def _check_returned(manifest: dict, variables: dict) -> list:
    returned = _field(manifest, "returned_state", list, "")
    for i, p in enumerate(returned):
        where = f"returned_state[{i}]"
        if not isinstance(p, str) or p not in variables:
            _bad(where, f"{_short(p)} is not a variable")
        if not variables[p]["updated"]:
            _bad(where, f"variable {p!r} is returned but not marked updated")
    if len(set(returned)) != len(returned):
        _bad("returned_state", "a variable is returned twice")
    unreturned = [p for p, v in variables.items() if v["updated"] and p not in returned]
    if unreturned:
        _bad("returned_state", f"updated variable {unreturned[0]!r} is not returned")
    return list(returned)


def _key_data_shape(dtype: str) -> tuple:
    """The trailing shape of ``jax.random.key_data`` of a key dtype (``key<fry>`` -> (2,))."""
    return tuple(jax.eval_shape(lambda: jax.random.key_data(
        jax.random.key(0, impl=_KEY_IMPLS[dtype[4:-1]]))).shape)


def _check_weights(manifest: dict, variables: dict) -> None:
    weights = _field(manifest, "weights", dict, "")
    for path, v in variables.items():
        where = f"weights[{path!r}]"
        if v["new"]:
            continue
        w = weights.get(path)
        if not isinstance(w, dict):
            _bad(where, f"no stored spec for variable {path!r}")
        dtype = _check_dtype(w.get("dtype"), f"{where}.dtype")
        shape = _check_shape(w.get("shape"), f"{where}.shape")
        want_dtype, want_shape, note = v["dtype"], list(v["shape"]), ""
        if want_dtype.startswith("key<"):
            want_dtype, want_shape = "u32", want_shape + list(_key_data_shape(want_dtype))
            note = f", stored as its key data {want_dtype}{want_shape}"
        if (dtype, shape) != (want_dtype, want_shape):
            _bad(where, f"weight {path!r} is stored as {dtype}{shape}, the variable is "
                        f"{v['dtype']}{v['shape']}{note}")
    extra = sorted(set(weights) - {p for p, v in variables.items() if not v["new"]})
    if extra:
        _bad("weights", f"{extra[0]!r} is not a variable the function takes")


def check_tree(spec, n: int, where: str) -> None:
    """Raise ArtifactError unless ``spec`` (a manifest tree) is well formed and uses each
    leaf index 0 .. n-1 exactly once."""
    seen: set[int] = set()
    todo = [(spec, where, 0)]
    while todo:
        node, at, depth = todo.pop()
        if depth > _TREE_DEPTH:
            _bad(at, f"the tree nests deeper than {_TREE_DEPTH} levels")
        if node is None:
            continue
        if isinstance(node, int) and not isinstance(node, bool):
            if not 0 <= node < n or node in seen:
                _bad(at, f"leaf {node} is out of range or used twice ({n} leaves)")
            seen.add(node)
            continue
        todo.extend((child, f"{at}{key}", depth + 1)
                    for key, child in _tree_children(node, at))
    if len(seen) != n:
        _bad(where, f"{n - len(seen)} of the {n} leaves are missing")


def _tree_children(node, at: str) -> list:
    """(label, child) pairs of a tree node other than a leaf or None."""
    if not isinstance(node, dict):
        _bad(at, f"not a tree node: {_short(node)}")
    kind = [k for k in ("tuple", "list", "dict", "namedtuple") if k in node]
    allowed = {"tuple": {"tuple"}, "list": {"list"}, "dict": {"dict", "class"},
               "namedtuple": {"namedtuple", "fields", "items"}}
    if len(kind) != 1 or set(node) - allowed[kind[0]]:
        _bad(at, f"not a tree node: {_short(node)}")
    kind = kind[0]
    if kind in ("tuple", "list"):
        return [(f".{kind}[{i}]", c) for i, c in enumerate(_field(node, kind, list, at))]
    if kind == "dict":
        if "class" in node:
            _field(node, "class", str, at)
        items, keys = _field(node, "dict", list, at), set()
        for i, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
                    and not isinstance(item[0], bool)):
                _bad(f"{at}.dict[{i}]", f"expected [key, tree], got {_short(item)}")
            if item[0] in keys:
                _bad(f"{at}.dict[{i}]", f"key {item[0]!r} is used twice")
            keys.add(item[0])
        return [(f"[{k!r}]", c) for k, c in items]
    name, fields = _field(node, "namedtuple", str, at), _field(node, "fields", list, at)
    items = _field(node, "items", list, at)
    try:
        _namedtuple(name, tuple(fields))
    except (ValueError, TypeError) as e:
        _bad(at, f"not a namedtuple: {e}")
    if len(items) != len(fields):
        _bad(at, f"{len(items)} items for {len(fields)} fields")
    return [(f".{f}", c) for f, c in zip(fields, items)]


def check_manifest(manifest: dict) -> ManifestSpec:
    """Check every manifest field ``load`` and the call use; ArtifactError names the first
    bad field (``outputs[2].shape[0]``) and says what is wrong with it."""
    inputs, outputs = _check_specs(manifest, "inputs"), _check_specs(manifest, "outputs")
    variables = _check_variables(manifest)
    returned = _check_returned(manifest, variables)
    _check_weights(manifest, variables)
    check_tree(manifest.get("input_tree"), len(inputs), "input_tree")
    check_tree(manifest.get("output_tree"), len(outputs), "output_tree")
    var_paths = [p for p, v in variables.items() if not v["new"]]
    return ManifestSpec(inputs, outputs, variables, var_paths, returned)


# -- checking the exported function ------------------------------------------------------

# The custom-call targets an artifact may use: what nnxc itself emits. Every zoo model
# (tests/zoo.py, saved for cpu, cuda, rocm and tpu) uses shape_assertion only; sharded
# models add the sharding annotations; the JAX linear-algebra primitives nnxc binds as
# core ops (cholesky, qr, eigh, svd, lu, triangular_solve, ...) lower to these kernels.
# Anything else -- above all the host-callback targets (xla_ffi_python_cpu_callback, ...),
# whose operands are pointers into the process that exported them -- is refused.
ALLOWED_CUSTOM_CALLS = frozenset({
    "shape_assertion",
    "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
    *(f"lapack_{t}{op}_ffi" for t in "sdcz" for op in (
        "potrf", "geqrf", "geev", "gesdd", "getrf", "gehrd", "gees", "trsm", "gtsv")),
    *(f"lapack_{t}{op}_ffi" for t in "sd" for op in ("orgqr", "syevd", "sytrd")),
    *(f"lapack_{t}{op}_ffi" for t in "cz" for op in ("ungqr", "heevd", "hetrd")),
    *(f"{lib}_{op}_ffi" for lib in ("cusolver", "hipsolver") for op in (
        "getrf", "geqrf", "orgqr", "potrf", "syevd", "gesvd", "gesvdj", "sytrd")),
    "hipsolver_gesdd_ffi", "cusparse_gtsv2_ffi",
    "cu_lu_pivots_to_permutation", "hip_lu_pivots_to_permutation",
    "cu_threefry2x32_ffi", "hip_threefry2x32_ffi",
    "Eigh", "Qr", "ProductOfElementaryHouseholderReflectors", "LuDecomposition",
})
# ops that move data to or from the host: nnxc never emits them
REFUSED_OPS = frozenset({"stablehlo.send", "stablehlo.recv", "stablehlo.infeed",
                         "stablehlo.outfeed"})


def module_problems(exported) -> list[str]:
    """What in ``exported``'s StableHLO module nnxc refuses to run: custom calls to
    targets not in ALLOWED_CUSTOM_CALLS and host-transfer ops, each with its function and
    source location.

    The serialized module is read, never run, and read in a child process: MLIR's bytecode
    reader loops forever or crashes on some malformed (crafted) modules, and neither may
    take nnxc down. A module read clean once is not read again in this process."""
    blob = exported.mlir_module_serialized
    digest = hashlib.sha256(blob).digest()
    if digest in _CLEAN_MODULES:
        return []
    timeout = _READ_TIMEOUT + len(blob) / _READ_RATE
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _MODULE_READER, json.dumps(sys.path),
             json.dumps(sorted(ALLOWED_CUSTOM_CALLS)), json.dumps(sorted(REFUSED_OPS))],
            input=blob, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"reading the exported StableHLO module did not finish within "
                            f"{timeout:.0f} s: the module is malformed") from None
    result = _reader_result(proc)
    if "error" in result:
        raise ArtifactError(f"cannot read the exported StableHLO module: {result['error']}")
    problems = [str(p) for p in result.get("problems", [])]
    if not problems:
        if len(_CLEAN_MODULES) > 1000:
            _CLEAN_MODULES.clear()
        _CLEAN_MODULES.add(digest)
    return problems


def _reader_result(proc) -> dict:
    """The JSON line the module reader printed (ArtifactError when it died or printed none)."""
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
    if proc.returncode < 0:
        raise ArtifactError(f"reading the exported StableHLO module crashed the reader "
                            f"(signal {-proc.returncode}): the module is malformed")
    last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    raise ArtifactError(f"cannot read the exported StableHLO module (the reader exited with "
                        f"code {proc.returncode}: {last[0][:300]})")


_CLEAN_MODULES: set[bytes] = set()  # sha256 of modules read without problems
_READ_TIMEOUT, _READ_RATE = 20.0, 5e6  # seconds, plus one per this many bytes
_RESULT_MARK = "nnxc-module-check: "
# The child process: reads the module's bytecode from stdin, walks its operations, prints
# one line "nnxc-module-check: {"problems": [...]}" (or {"error": ...}). Its argv: the
# parent's sys.path, the allowed custom-call targets, the refused op names.
_MODULE_READER = r"""
import json, sys
sys.path[:] = json.loads(sys.argv[1])
allowed, refused = set(json.loads(sys.argv[2])), set(json.loads(sys.argv[3]))
try:
    from jaxlib import _jax
    from jaxlib.mlir import ir
    deserialize = _jax.mlir.deserialize_portable_artifact
except (ImportError, AttributeError):
    import jax
    from jax.extend import mlir as jmlir
    from jax.extend.mlir import ir
    deserialize = jmlir.deserialize_portable_artifact
MARK = "nnxc-module-check: "
problems, diagnostics = [], []

def diagnose(d):  # MLIR's messages go into the error, not to stderr
    try:
        diagnostics.append(f"{d.message} at {d.location}")
    except Exception:
        diagnostics.append("(a diagnostic that is not text)")
    return True

def place(op):
    func, parent = "?", op.parent
    while parent is not None:
        if parent.name == "func.func":
            func = str(parent.attributes["sym_name"]).strip('"')
            break
        parent = parent.parent
    loc = str(op.location)
    return f"in @{func} at {loc if len(loc) <= 160 else loc[:157] + '...'}"

def visit(op):
    if op.name == "stablehlo.custom_call":
        try:
            target = ir.StringAttr(op.attributes["call_target_name"]).value
        except (KeyError, ValueError):
            target = None
        if target not in allowed:
            what = repr(target) if target is not None else "an unreadable target"
            problems.append(f"a custom call to {what} {place(op)}")
    elif op.name in refused:
        problems.append(f"a host transfer ({op.name}) {place(op)}")
    return ir.WalkResult.ADVANCE

with ir.Context() as ctx:
    ctx.attach_diagnostic_handler(diagnose)
    try:
        module = deserialize(sys.stdin.buffer.read(), ctx)
    except Exception as e:
        print(MARK + json.dumps({"error": "; ".join(diagnostics[:2]) or str(e)}))
        sys.exit(0)
    module.operation.walk(visit)
print(MARK + json.dumps({"problems": problems}))
"""


def check_module(exported) -> None:
    """Refuse an exported function that could reach host code: effects, custom calls nnxc
    does not emit, host transfers (see ``module_problems``)."""
    effects = [*exported.ordered_effects, *exported.unordered_effects]
    if effects:
        raise ArtifactError(f"the exported function has effects ({', '.join(map(str, effects))}); "
                            "nnxc never exports effects (they are host callbacks, prints or "
                            "I/O), so this artifact was not made by nnxc.save; refusing to load it")
    problems = module_problems(exported)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ArtifactError(f"the exported module makes {problems[0]}{more}, which nnxc never "
                            "emits: a custom call or host transfer can reach host code, so "
                            "artifacts may only use shape assertions, sharding annotations "
                            "and JAX's linear-algebra kernels; refusing to load it")


def check_signature(exported, spec: ManifestSpec) -> None:
    """The exported function takes the manifest's variables and inputs and returns its
    outputs and updated variables: same structure, counts, dtypes and shapes."""
    nv, ni, no, nr = len(spec.var_paths), len(spec.inputs), len(spec.outputs), len(spec.returned)
    want_in = jax.tree_util.tree_structure((([0] * nv, [0] * ni), {}))
    want_out = jax.tree_util.tree_structure(([0] * no, [0] * nr))
    if exported.in_tree != want_in or exported.out_tree != want_out:
        raise ArtifactError(f"the exported function takes {exported.in_tree} and returns "
                            f"{exported.out_tree}, which does not fit the manifest's {nv} "
                            f"variables, {ni} inputs, {no} outputs and {nr} updated variables")
    variables = spec.variables
    wanted_in = [(f"variable {p!r}", variables[p]["shape"], variables[p]["dtype"])
                 for p in spec.var_paths] + [(f"input {n!r}", s, d) for n, s, d in spec.inputs]
    wanted_out = [(f"output {n!r}", s, d) for n, s, d in spec.outputs] + \
        [(f"updated variable {p!r}", variables[p]["shape"], variables[p]["dtype"])
         for p in spec.returned]
    for (what, shape, dtype), aval in [*zip(wanted_in, exported.in_avals),
                                       *zip(wanted_out, exported.out_avals)]:
        got_dtype = _type_text(aval.dtype)
        if got_dtype != dtype or not _same_shape(aval.shape, shape):
            raise ArtifactError(f"the manifest says {what} is {_type_str(dtype, shape)}, the "
                                f"exported function has {_type_str(got_dtype, aval.shape)}")


def _type_str(dtype: str, shape) -> str:
    """``f32[B,4]``, shortened when long."""
    dims = ",".join(str(d).replace(" ", "") for d in shape)
    return f"{dtype}[{dims if len(dims) <= 60 else dims[:57] + '...'}]"


def _same_shape(jax_shape, shape: list) -> bool:
    if len(jax_shape) != len(shape):
        return False
    for got, want in zip(jax_shape, shape):
        if isinstance(want, int) or isinstance(got, int):
            if not (isinstance(want, int) and isinstance(got, int) and got == want):
                return False
        else:
            try:
                if dim_expression(str(got)) != dim_expression(want):
                    return False
            except DimError:
                pass  # JAX spells some expressions differently: symbolic on both sides
    return True


def _safetensors_index(data: memoryview) -> tuple[dict, int]:
    """(tensor name -> header entry, offset of the data) of safetensors bytes: an 8-byte
    little-endian header length, the JSON header, then the tensors' bytes."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the {len(data)}-byte section")
    header = json.loads(bytes(data[8:8 + n]))
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, expected an object")
    size = len(data) - 8 - n
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not _is_tensor_entry(t, size):
            raise ValueError(f"invalid entry for tensor {name!r}: {str(t)[:200]}")
        tensors[name] = t
    return tensors, 8 + n


def _is_tensor_entry(t, size: int) -> bool:
    """A safetensors header entry: a dtype name, a shape, data offsets inside ``size``."""
    if not (isinstance(t, dict) and isinstance(t.get("dtype"), str)
            and isinstance(t.get("shape"), list) and isinstance(t.get("data_offsets"), list)
            and len(t["data_offsets"]) == 2):
        return False
    begin, end = t["data_offsets"]
    return (all(isinstance(x, int) and not isinstance(x, bool) for x in (begin, end))
            and 0 <= begin <= end <= size
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                    for d in t["shape"]))


_ALIGN = 64  # XLA's CPU client uses host buffers this aligned in place, others it copies
_CHUNK = 1 << 24


def _copy_out(data: memoryview, begin: int, end: int, release=None) -> np.ndarray:
    """A copy of ``data[begin:end]`` as a fresh, aligned uint8 array, made chunk by chunk,
    each chunk passed to ``release`` once copied."""
    n = end - begin
    buf = np.empty(n + _ALIGN, np.uint8)
    k = -buf.ctypes.data % _ALIGN
    out = buf[k:k + n]
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        out[a:b] = np.frombuffer(data[begin + a:begin + b], np.uint8)
        if release is not None:
            release(begin + a, begin + b)
    return out


# safetensors dtype names -> IR dtype names
_SAFETENSORS_DTYPES = {"BOOL": "bool", "U8": "u8", "I8": "i8", "U16": "u16", "I16": "i16",
                       "F16": "f16", "BF16": "bf16", "U32": "u32", "I32": "i32", "F32": "f32",
                       "U64": "u64", "I64": "i64", "F64": "f64", "C64": "c64",
                       "F8_E4M3": "f8e4m3fn", "F8_E5M2": "f8e5m2"}


_IR_TO_SAFETENSORS = {ir: st for st, ir in _SAFETENSORS_DTYPES.items()}


def _read_weights(section, manifest: dict, variables: list, release=None) -> dict:
    """The variables' values from the safetensors ``section``, each copied once from it into
    an array that becomes (on CPU, without another copy) the JAX array's buffer;
    ``release(start, end)`` is told each byte range of the section once it is copied."""
    data = memoryview(section)
    try:
        tensors, base = _safetensors_index(data)
    except Exception as e:  # noqa: BLE001 - JSON, type and value errors of a bad header
        raise ArtifactError(f"cannot read the weights: {type(e).__name__}: {e}") from None
    specs = manifest["weights"]
    state = {}
    for var in variables:
        if var["new"]:
            continue
        path = var["path"]
        spec, t = specs.get(path), tensors.get(path)
        if spec is None or t is None:
            raise ArtifactError(f"the weights have no tensor for variable {path!r}")
        dtype, shape = to_dtype(spec["dtype"]), tuple(spec["shape"])
        begin, end = (base + o for o in t["data_offsets"])
        if end - begin != dtype.itemsize * math.prod(shape) \
                or tuple(t["shape"]) != shape \
                or _SAFETENSORS_DTYPES.get(t["dtype"]) != spec["dtype"]:
            raise ArtifactError(f"weight {path!r}: stored as {t['dtype']}{t['shape']}, "
                                f"the manifest says {spec['dtype']}{list(shape)}")
        x = jax.device_put(_copy_out(data, begin, end, release).view(dtype).reshape(shape),
                           may_alias=True)
        if var["dtype"].startswith("key<"):
            x = jax.random.wrap_key_data(x, impl=_KEY_IMPLS[var["dtype"][4:-1]])
        state[path] = checked_weight(path, var, x)
    jax.block_until_ready(list(state.values()))  # copies done: the section may be unmapped
    return state


def checked_weight(path: str, var: dict, x):
    """``x``, once its shape and dtype are the manifest variable ``var``'s."""
    if list(x.shape) != var["shape"] or _type_text(x.dtype) != var["dtype"]:
        raise ArtifactError(f"weight {path!r} is {_type_text(x.dtype)}{list(x.shape)}, "
                            f"variable is {var['dtype']}{var['shape']}")
    return x
