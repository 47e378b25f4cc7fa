"""Sharded artifacts and multi-process runs on JAX's distributed runtime.

``nnxc.save(g, path, mesh=...)`` exports the model's function with its shardings (XLA's
SPMD partitioner splits it; ``jax.export`` keeps the shardings in the module) and adds a
``sharding`` entry to the manifest::

    "sharding": {"mesh": {"axes": ["data", "model"], "sizes": [2, 4]},
                 "variables": {path: spec}, "inputs": [spec], "outputs": [spec],
                 "shards": {path: {"0:32,8:16": sha256, ...}},
                 "exported_sha256": hex, "weights_header_sha256": hex}

A spec lists each dim's mesh axes: ``null`` (not split), ``"model"``, or ``["data", "model"]``.
``shards`` keys every distinct block of a variable by its start:stop per dim. The weights
stay whole tensors in the safetensors section; ``nnxc.load(path, mesh=...)`` in each process
reads only the blocks its devices hold (the byte ranges come from the safetensors header),
checks each against its sha256, and never touches the rest of the file.

In a multi-process run every process calls ``initialize`` first (the coordinator on
process 0; CPU collectives through gloo), then loads the same artifact on a mesh of the
same axes and sizes over all processes' devices.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import subprocess
import sys
import time

import jax
import numpy as np

from ..errors import NnxcError
from .artifact import Artifact, _copy_out, _safetensors_index, _SAFETENSORS_DTYPES, checked_weight
from .artifact_format import ArtifactError

# -- saving --------------------------------------------------------------------------


def as_mesh(mesh):
    """A jax Mesh or AbstractMesh as given, or ``"data=2,model=4"`` -> an AbstractMesh (saving
    needs no devices)."""
    from jax.sharding import AbstractMesh, AxisType
    if not isinstance(mesh, str):
        return mesh
    try:
        pairs = [(k.strip(), int(v)) for k, v in (item.split("=") for item in mesh.split(","))]
    except ValueError:
        raise NnxcError(f"bad mesh {mesh!r}: expected axis=size pairs like data=2,model=4") from None
    if not pairs or any(n < 1 or not k.isidentifier() for k, n in pairs):
        raise NnxcError(f"bad mesh {mesh!r}: expected axis=size pairs like data=2,model=4")
    return AbstractMesh(tuple(n for _, n in pairs), tuple(k for k, _ in pairs),
                        axis_types=(AxisType.Auto,) * len(pairs))


def placement_for(graph, mesh, shard=None) -> tuple:
    """(mesh, jit in/out shardings) of ``graph`` on ``mesh``. Split dims of variables must
    divide evenly; an input whose split dim is symbolic stays whole (jax.export cannot split
    a symbolic dim), with a warning."""
    import warnings

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ..backends.xla.compile import shardings
    from ..errors import NnxcWarning
    mesh = as_mesh(mesh)
    placement = shardings(graph, mesh, shard)
    sizes = dict(mesh.shape)
    var_in, arg_in = placement["in_shardings"]
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    for v, s in zip(inputs, var_in):
        t = v.value.type
        for dim, entry in zip(t.shape, s.spec):
            n = _split(entry, sizes)
            if n > 1 and (not isinstance(dim, int) or dim % n):
                raise NnxcError(f"variable {v.path} {t}: dim {dim} is split over {spec_text(s.spec)} "
                                f"({n} ways), so it must be a multiple of {n}")
    for i, (v, s) in enumerate(zip(graph.inputs, arg_in)):
        for dim, entry in zip(v.type.shape, s.spec):
            n = _split(entry, sizes)
            if n > 1 and isinstance(dim, int) and dim % n:
                raise NnxcError(f"input {v.name} {v.type}: dim {dim} is split over "
                                f"{spec_text(s.spec)} ({n} ways), so it must be a multiple of {n}")
            if n > 1 and not isinstance(dim, int):
                warnings.warn(f"input {v.name} {v.type}: the artifact takes it whole on every "
                              f"device (jax.export cannot split the symbolic dim {dim} over "
                              f"{spec_text(s.spec)}); trace with a concrete batch to split it",
                              NnxcWarning, stacklevel=3)
                arg_in[i] = NamedSharding(mesh, P())
                break
    return mesh, placement


def _split(entry, sizes: dict) -> int:
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(sizes[a] for a in axes)


def spec_json(spec) -> list:
    return [e if e is None or isinstance(e, str) else list(e) for e in spec]


def spec_text(spec) -> str:
    return "P(" + ", ".join(repr(e) if not isinstance(e, list) else repr(tuple(e))
                            for e in spec_json(spec)) + ")"


def shard_blocks(shape, spec, sizes: dict) -> list[tuple]:
    """Every distinct block of an array of ``shape`` split by ``spec`` over axes of ``sizes``:
    tuples of (start, stop) per dim."""
    per_dim = []
    for i, d in enumerate(shape):
        n = _split(spec[i] if i < len(spec) else None, sizes)
        step = d // n
        per_dim.append([(k * step, (k + 1) * step) for k in range(n)])
    return list(itertools.product(*per_dim))


def block_key(block) -> str:
    return ",".join(f"{a}:{b}" for a, b in block)


def _sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


def sharding_entry(graph, mesh, placement: dict, tensors: dict, exported: bytes,
                   weights: bytes) -> dict:
    """The manifest's ``sharding`` entry (see the module docstring)."""
    sizes = dict(mesh.shape)
    var_in, arg_in = placement["in_shardings"]
    outs, _ = placement["out_shardings"]
    specs = {}
    inputs = [v for v in graph.variables if not v.meta.get("new")]
    for v, s in zip(inputs, var_in):
        specs[v.path] = spec_json(s.spec)
    returned = dict(zip(_updated(graph), placement["out_shardings"][1]))
    for v in graph.variables:
        if v.path not in specs:
            specs[v.path] = spec_json(returned[v.path].spec) if v.path in returned else []
    shards = {}
    for v in inputs:
        a = tensors[v.path]
        shards[v.path] = {block_key(b): _sha(np.ascontiguousarray(a[tuple(slice(*x) for x in b)]))
                          for b in shard_blocks(a.shape, specs[v.path], sizes)}
    n = int.from_bytes(weights[:8], "little")
    return {"mesh": {"axes": list(mesh.axis_names), "sizes": [int(sizes[a]) for a in mesh.axis_names]},
            "variables": specs, "inputs": [spec_json(s.spec) for s in arg_in],
            "outputs": [spec_json(s.spec) for s in outs], "shards": shards,
            "exported_sha256": _sha(exported), "weights_header_sha256": _sha(weights[:8 + n])}


def _updated(graph) -> list:
    from ..backends.xla.lower import updated_paths
    return updated_paths(graph)


# -- loading -------------------------------------------------------------------------

def mesh_text(axes, sizes) -> str:
    return ",".join(f"{a}={n}" for a, n in zip(axes, sizes))


def check_entry(entry, manifest: dict) -> dict:
    """The manifest's ``sharding`` entry, checked (ArtifactError names the bad field)."""
    def bad(where, why):
        raise ArtifactError(f"malformed manifest: sharding.{where}: {why}")

    if not isinstance(entry, dict):
        bad("", "expected an object")
    m = entry.get("mesh")
    if not (isinstance(m, dict) and isinstance(m.get("axes"), list) and isinstance(m.get("sizes"), list)
            and len(m["axes"]) == len(m["sizes"]) and all(isinstance(a, str) for a in m["axes"])
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in m["sizes"])):
        bad("mesh", "expected {\"axes\": [names], \"sizes\": [sizes >= 1]} of equal length")
    axes = set(m["axes"])

    def check_spec(spec, where):
        if not isinstance(spec, list):
            bad(where, f"expected a list, got {str(spec)[:60]}")
        for e in spec:
            names = [] if e is None else [e] if isinstance(e, str) else e
            if not isinstance(names, list) or any(not isinstance(a, str) or a not in axes for a in names):
                bad(where, f"{str(e)[:60]} is not an axis of the mesh {sorted(axes)}")

    variables = entry.get("variables")
    if not isinstance(variables, dict):
        bad("variables", "expected an object")
    for v in manifest["variables"]:
        if v["path"] not in variables:
            bad("variables", f"no spec for variable {v['path']!r}")
        check_spec(variables[v["path"]], f"variables[{v['path']!r}]")
    for key in ("inputs", "outputs"):
        specs = entry.get(key)
        if not isinstance(specs, list) or len(specs) != len(manifest[key]):
            bad(key, f"expected one spec per {key[:-1]} ({len(manifest[key])})")
        for i, s in enumerate(specs):
            check_spec(s, f"{key}[{i}]")
    shards = entry.get("shards")
    if not isinstance(shards, dict):
        bad("shards", "expected an object")
    for v in manifest["variables"]:
        if not v["new"] and not isinstance(shards.get(v["path"]), dict):
            bad("shards", f"no shard hashes for variable {v['path']!r}")
    for k in ("exported_sha256", "weights_header_sha256"):
        if not isinstance(entry.get(k), str):
            bad(k, "expected a sha256 hex string")
    return entry


def check_mesh(entry: dict, mesh) -> None:
    """NnxcError unless ``mesh`` has the artifact's axes, in order, with its sizes."""
    want_axes, want_sizes = entry["mesh"]["axes"], entry["mesh"]["sizes"]
    want = f"{mesh_text(want_axes, want_sizes)} ({math.prod(want_sizes)} devices)"
    axes, sizes = list(mesh.axis_names), [int(mesh.shape[a]) for a in mesh.axis_names]
    if axes != want_axes:
        raise NnxcError(f"mesh axes {', '.join(axes)} do not match the artifact's mesh {want}: "
                        f"it needs the axes {', '.join(want_axes)} in this order")
    for a, n, m in zip(axes, sizes, want_sizes):
        if n != m:
            raise NnxcError(f"mesh axis {a!r} has size {n}, the artifact was saved for {a}={m} "
                            f"(mesh {want}; given {mesh_text(axes, sizes)})")


def default_mesh(entry: dict):
    """The artifact's mesh over all devices of the run (of every process), in device order."""
    from jax.sharding import AxisType
    axes, sizes = entry["mesh"]["axes"], entry["mesh"]["sizes"]
    need, have = math.prod(sizes), jax.device_count()
    if need != have:
        raise NnxcError(
            f"the artifact is sharded over the mesh {mesh_text(axes, sizes)} ({need} devices); this "
            f"run has {have} device(s) ({jax.process_count()} process(es) x "
            f"{jax.local_device_count()}): run it on {need} devices (on CPU set XLA_FLAGS="
            f"--xla_force_host_platform_device_count=N, or nnxc run --processes) or pass mesh=")
    return jax.make_mesh(tuple(sizes), tuple(axes), axis_types=(AxisType.Auto,) * len(axes),
                         devices=jax.devices())


class ShardedArtifact(Artifact):
    """A sharded artifact loaded on a mesh, in one process or in each of many.

    ``art.state`` holds global arrays of which this process has only its devices' shards;
    ``art(*args)`` takes global arrays, or NumPy arrays holding the whole global value (the
    same on every process), or with ``local=True`` this process's part of each input
    (``jax.make_array_from_process_local_data``), and returns global arrays (``gather``
    brings them to NumPy). ``art.local_weight_bytes`` is what this process read and holds.
    """

    def __init__(self, manifest: dict, sections: dict, release=None, mesh=None):
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from .artifact import check_manifest
        check_manifest(manifest)
        self.sharding = check_entry(manifest.get("sharding"), manifest)
        self.mesh = default_mesh(self.sharding) if mesh is None else mesh
        check_mesh(self.sharding, self.mesh)
        if _sha(sections["exported"]) != self.sharding["exported_sha256"]:
            raise ArtifactError("corrupted artifact (exported section sha256 mismatch)")
        named = lambda spec: NamedSharding(self.mesh, P(*(tuple(e) if isinstance(e, list) else e  # noqa: E731
                                                           for e in spec)))
        specs = self.sharding["variables"]
        self._var_shardings = [named(specs[v["path"]]) for v in manifest["variables"] if not v["new"]]
        self._in_shardings = [named(s) for s in self.sharding["inputs"]]
        self._out_shardings = ([named(s) for s in self.sharding["outputs"]],
                               [named(specs[p]) for p in manifest["returned_state"]])
        self.local_weight_bytes = 0
        super().__init__(manifest, sections, release)

    def _jit(self):
        return jax.jit(self.exported.call, in_shardings=(self._var_shardings, self._in_shardings),
                       out_shardings=self._out_shardings)

    def _read_state(self, section, release) -> dict:
        """Each variable as a global array from the blocks this process's devices hold, each
        block read once from its byte ranges and checked against its sha256."""
        data = memoryview(section)
        try:
            tensors, base = _safetensors_index(data)
        except Exception as e:  # noqa: BLE001 - JSON, type and value errors of a bad header
            raise ArtifactError(f"cannot read the weights: {type(e).__name__}: {e}") from None
        if _sha(data[:base]) != self.sharding["weights_header_sha256"]:
            raise ArtifactError("corrupted artifact (weights header sha256 mismatch)")
        specs, state = self.manifest["weights"], {}
        variables = [v for v in self.manifest["variables"] if not v["new"]]
        for var, sharding in zip(variables, self._var_shardings):
            path = var["path"]
            spec, t = specs[path], tensors.get(path)
            if t is None:
                raise ArtifactError(f"the weights have no tensor for variable {path!r}")
            dtype, shape = _dtype(spec["dtype"]), tuple(spec["shape"])
            begin, end = (base + o for o in t["data_offsets"])
            if end - begin != dtype.itemsize * math.prod(shape) or tuple(t["shape"]) != shape \
                    or _SAFETENSORS_DTYPES.get(t["dtype"]) != spec["dtype"]:
                raise ArtifactError(f"weight {path!r}: stored as {t['dtype']}{t['shape']}, "
                                    f"the manifest says {spec['dtype']}{list(shape)}")
            hashes = self.sharding["shards"][path]
            value_shape = tuple(var["shape"])
            blocks, arrays = {}, []
            for device, index in sharding.addressable_devices_indices_map(value_shape).items():
                block = tuple(sl.indices(n)[:2] for sl, n in zip(index, value_shape))
                block = block + tuple((0, n) for n in shape[len(block):])  # key data dims
                key = block_key(block)
                if key not in blocks:
                    x = _read_block(data, begin, shape, dtype, block, release)
                    if hashes.get(key) != _sha(x):
                        raise ArtifactError(f"corrupted artifact (weight {path!r} block [{key}]: "
                                            "sha256 mismatch)")
                    blocks[key] = x
                    self.local_weight_bytes += x.nbytes
                arrays.append(jax.device_put(_wrap(blocks[key], var["dtype"]), device))
            x = jax.make_array_from_single_device_arrays(value_shape, sharding, arrays)
            state[path] = checked_weight(path, var, x)
        jax.block_until_ready(list(state.values()))  # copies done: the section may be unmapped
        return state

    # -- running ---------------------------------------------------------------------
    def __call__(self, *args, local: bool = False):
        return super().__call__(*(self.from_local(args) if local else args))

    def apply(self, state: dict, *args, local: bool = False):
        return super().apply(state, *(self.from_local(args) if local else args))

    def from_local(self, args) -> tuple:
        """Global arrays from this process's parts of the inputs (NumPy or host arrays)."""
        leaves, tree = jax.tree_util.tree_flatten(tuple(args))
        if len(leaves) != len(self._in_shardings):
            return args  # the argument check reports it
        out = [x if isinstance(x, jax.Array) and not x.is_fully_addressable else
               jax.make_array_from_process_local_data(s, np.asarray(x))
               for x, s in zip(leaves, self._in_shardings)]
        return jax.tree_util.tree_unflatten(tree, out)

    def _place_args(self, leaves: list) -> list:
        out = []
        for x, s in zip(leaves, self._in_shardings):
            if isinstance(x, jax.Array):
                if not x.sharding.is_equivalent_to(s, x.ndim):
                    x = jax.device_put(x, s)
            else:
                x = np.asarray(x)
                x = jax.make_array_from_callback(x.shape, s, lambda i, x=x: x[i])
            out.append(x)
        return out


def _dtype(name: str):
    from ..ir.types import to_dtype
    return to_dtype(name)


def _wrap(x: np.ndarray, dtype: str):
    if dtype.startswith("key<"):
        from ..ir.types import _KEY_IMPLS
        return jax.random.wrap_key_data(x, impl=_KEY_IMPLS[dtype[4:-1]])
    return x


def _read_block(data: memoryview, begin: int, shape: tuple, dtype, block: tuple, release=None):
    """The block (start, stop per dim) of the C-ordered tensor at ``data[begin:]`` as a new
    array, copied from the byte ranges it covers only; those pages are then released."""
    if all((a, b) == (0, n) for (a, b), n in zip(block, shape)):  # the whole tensor
        end = begin + dtype.itemsize * math.prod(shape)
        return _copy_out(data, begin, end, release).view(dtype).reshape(shape)
    count = math.prod(shape)
    whole = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
    out = np.array(whole[tuple(slice(a, b) for a, b in block)])  # reads the needed runs only
    if release is not None and out.size:
        strides = [dtype.itemsize * math.prod(shape[i + 1:]) for i in range(len(shape))]
        lo = sum(a * s for (a, _), s in zip(block, strides))
        hi = sum((b - 1) * s for (_, b), s in zip(block, strides)) + dtype.itemsize
        release(begin + lo, begin + hi)
    return out


def gather(tree):
    """NumPy copies of (global) arrays on every process: all-gathered when a process holds
    only part of one."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)


# -- the distributed runtime -----------------------------------------------------------

def initialize(coordinator: str, num_processes: int, process_id: int, timeout: float = 60) -> None:
    """Join a run of ``num_processes`` processes coordinated at ``coordinator`` (HOST:PORT;
    process 0 serves it). CPU collectives go through gloo. Call before any other JAX use;
    a coordinator that does not come up within ``timeout`` seconds is an NnxcError."""
    if not 0 <= process_id < num_processes:
        raise NnxcError(f"process id {process_id} is not in 0..{num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(timeout))
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError / RuntimeError from the client
        raise NnxcError(f"process {process_id}: cannot join the run coordinated at {coordinator} "
                        f"within {timeout:.0f} s: {str(e).splitlines()[0][:300]}") from None


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(commands: list[list[str]], env: dict | None = None, timeout: float = 300) -> list[int]:
    """Run the commands as child processes (output passed through); their exit codes.
    When one fails, or ``timeout`` seconds pass, the others are ended (SIGTERM, then SIGKILL)
    and report -15/-9; no child outlives this call."""
    procs = [subprocess.Popen(c, env=env) for c in commands]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                if not failed:
                    print(f"nnxc: error: the run did not finish within {timeout:.0f} s; "
                          "ending its processes", file=sys.stderr)
                break
            time.sleep(0.05)
    finally:
        _end(procs)
    return [p.returncode for p in procs]


def _end(procs, grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def child_env(devices_per_process: int | None) -> dict:
    """The environment of a local child process with this many CPU devices."""
    env = dict(os.environ)
    if devices_per_process:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    return env


def linen_partitioning(variables, rules=None) -> dict:
    """{variable path: PartitionSpec} of Linen variables boxed by ``nn.with_partitioning``
    (``nn.with_logical_partitioning`` names mapped to mesh axes by ``rules``), keyed as
    ``nnxc.trace`` names them, for ``nnxc.save(..., shard=...)`` / ``nnxc.compile``."""
    from flax import linen as nn
    from jax.sharding import PartitionSpec as P
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(
        variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for path, x in leaves:
        if not isinstance(x, nn.Partitioned):
            continue
        names = x.names
        if isinstance(x, nn.LogicallyPartitioned):
            names = tuple(nn.logical_to_mesh_axes(names, rules or x.rules or ()))
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out[".".join(parts[1:] + ["value"])] = P(*names)
    return out
