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

Only updated variables are returned by the exported function, so running an inference
artifact does not copy its weights on every call.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re
from typing import Any

import jax
import numpy as np

from .._version import __version__
from ..errors import NnxcError
from ..ir.graph import Graph
from ..backends.xla.lower import updated_paths
from ..ir.types import _KEY_IMPLS, dtype_name, is_plain_symbol, to_dtype
from . import artifact_format as fmt
from .artifact_format import ArtifactError

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


# -- saving ------------------------------------------------------------------------

def save(graph_or_compiled, path: str | os.PathLike, platforms=("cpu",), passes=None,
         state: dict | None = None) -> dict:
    """Write ``graph_or_compiled`` (an IR Graph or ``nnxc.compile`` result) to ``path``.

    ``platforms``: a subset of cpu, cuda, rocm, tpu (a sequence or ``"cpu,cuda,tpu"``);
    ``passes``: optionally an ``nnxc.optimize`` pipeline applied first; ``state``: variable
    values overriding the held ones (a Compiled's current state, else the traced values).
    Returns the manifest written.
    """
    graph, values = _graph_and_state(graph_or_compiled)
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
    exported = _export(graph, platforms)
    weights, weight_specs = _weights(inputs, values)
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
    data, manifest = fmt.pack(manifest, {"exported": exported.serialize(), "weights": weights})
    fmt.write_atomic(path, data)
    return manifest


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


def _export(graph: Graph, platforms) -> jax.export.Exported:
    from ..backends.xla.compile import _struct
    from ..backends.xla.lower import run_graph
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    model = functools.partial(run_graph, graph)  # returns (outputs, updated_paths values)

    env: dict = {}  # one symbolic scope for all inputs
    var_structs = [_struct(v.value.type) for v in inputs]
    arg_structs = [_struct(v.type, env) for v in graph.inputs]
    try:
        return jax.export.export(jax.jit(model), platforms=platforms)(var_structs, arg_structs)
    except NnxcError:
        raise
    except Exception as e:  # noqa: BLE001 - lowering errors come in many types
        raise NnxcError(f"cannot export {graph.name} for {','.join(platforms)}: "
                        f"{type(e).__name__}: {e}") from e


def _weights(inputs, values: dict) -> tuple[bytes, dict]:
    from safetensors.numpy import save as st_save
    missing = [v.path for v in inputs if values.get(v.path) is None]
    if missing:
        raise NnxcError(f"no value for variable(s) {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else "") + "; pass state={path: array}")
    tensors, specs = {}, {}
    for v in inputs:
        x = values[v.path]
        if v.value.type.dtype.startswith("key<"):
            x = jax.random.key_data(x)
        a = np.asarray(x, order="C")  # ascontiguousarray would turn 0-d into 1-d
        want = v.value.type
        got = tuple(np.shape(values[v.path]))
        if got != tuple(want.shape) or (not want.dtype.startswith("key<")
                                        and dtype_name(a.dtype) != want.dtype):
            raise NnxcError(f"variable {v.path}: value is {dtype_name(a.dtype)}{list(got)}, "
                            f"the graph expects {want}")
        tensors[v.path] = a
        specs[v.path] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape)}
    return st_save(tensors), specs


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

def load(path: str | os.PathLike) -> "Artifact":
    """Read and verify an artifact; the result runs it on the current platform.

    The file is memory-mapped and read in place: the weights are copied once, into the
    JAX arrays of ``Artifact.state``, and the mapping is closed before returning.
    """
    with fmt.mapped(path) as art:
        try:
            return Artifact(art.manifest, art.sections, art.release)
        except ArtifactError as e:
            raise ArtifactError(f"{os.fspath(path)}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:
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
        told which byte ranges of a section have been read (see ``artifact_format.mapped``)."""
        self.manifest = manifest
        try:  # a copy: jax's deserialize can leave references to its input in a cycle
            self.exported = jax.export.deserialize(bytearray(sections["exported"]))
        except Exception as e:  # noqa: BLE001 - flatbuffer / version errors
            raise ArtifactError(f"cannot deserialize the exported function: {e}") from None
        variables = manifest["variables"]
        self._var_paths = [v["path"] for v in variables if not v["new"]]
        self._returned = list(manifest["returned_state"])
        self._inputs = [(i["name"], tuple(i["shape"]), i["dtype"], to_dtype(i["dtype"]))
                        for i in manifest["inputs"]]
        n_in, n_out = len(self.exported.in_avals), len(self.exported.out_avals)
        if (n_in, n_out) != (len(self._var_paths) + len(self._inputs),
                             len(manifest["outputs"]) + len(self._returned)):
            raise ArtifactError(f"the exported function takes {n_in} arrays and returns "
                                f"{n_out}, which does not fit the manifest's "
                                f"{len(self._var_paths)} variables, {len(self._inputs)} "
                                f"inputs, {len(manifest['outputs'])} outputs and "
                                f"{len(self._returned)} updated variables")
        self.state = _read_weights(
            sections["weights"], manifest, variables,
            None if release is None else functools.partial(release, "weights"))
        self._var_structs = [jax.ShapeDtypeStruct(self.state[p].shape, self.state[p].dtype)
                             for p in self._var_paths]
        in_obj = rebuild(manifest["input_tree"], list(range(len(self._inputs))))
        self._in_tree = jax.tree_util.tree_structure(in_obj)
        self._in_exact = not _has_class(manifest["input_tree"])
        self._out_tree = manifest["output_tree"]
        self._call = jax.jit(self.exported.call)
        self._executables: dict[tuple, Any] = {}

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
            return exe(var_leaves, leaves)
        except (TypeError, ValueError) as e:
            self._check_state(state)
            raise NnxcError(f"running {self.manifest.get('name')}: {e}") from e

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
        begin, end = t["data_offsets"]
        shape = t["shape"]
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= size
                and isinstance(shape, list) and all(isinstance(d, int) and d >= 0
                                                    for d in shape)):
            raise ValueError(f"invalid entry for tensor {name!r}: {t}")
        tensors[name] = t
    return tensors, 8 + n


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
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) \
                or tuple(t["shape"]) != shape:
            raise ArtifactError(f"weight {path!r}: stored as {t['dtype']}{t['shape']}, "
                                f"the manifest says {spec['dtype']}{list(shape)}")
        x = jax.device_put(_copy_out(data, begin, end, release).view(dtype).reshape(shape),
                           may_alias=True)
        if var["dtype"].startswith("key<"):
            x = jax.random.wrap_key_data(x, impl=_KEY_IMPLS[var["dtype"][4:-1]])
        if list(x.shape) != var["shape"] or _type_text(x.dtype) != var["dtype"]:
            raise ArtifactError(f"weight {path!r} is {_type_text(x.dtype)}{list(x.shape)}, "
                                f"variable is {var['dtype']}{var['shape']}")
        state[path] = x
    jax.block_until_ready(list(state.values()))  # copies done: the section may be unmapped
    return state
