"""``nnxc.compile``: an IR graph -> an ahead-of-time compiled XLA executable."""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from ...errors import NnxcError
from ...ir.graph import Graph
from ...ir.ops import jax_dim
from ...ir.parser import require_constant_data
from ...ir.types import DimError, parse_dim, solve_dims, to_dtype
from .lower import DimMismatchError, run_graph, updated_paths


def _struct(t, dims: dict | None = None):
    env = {} if dims is None else dims
    return jax.ShapeDtypeStruct(tuple(jax_dim(d, env) for d in t.shape), to_dtype(t.dtype))


class Compiled:
    """An XLA executable for a graph, holding the graph's state.

    ``exe(*args)`` runs with the held state, applies variable updates to it and returns
    the outputs in the model's own pytree structure; ``exe.apply(state, *args)`` is the
    pure form returning ``(outputs, new_state)``. Executables are compiled ahead of time
    per input shape (once, for graphs without symbolic dims).
    """

    def __init__(self, graph: Graph, state: dict | None = None, mesh=None, shard=None):
        require_constant_data(graph)  # a graph parsed from text with elided<hash> constants
        self.graph = graph
        self.mesh = mesh
        self.shard = shard
        self._inputs = [v for v in graph.variables if not v.meta.get("new")]
        self._updated = updated_paths(graph)
        self.state: dict[str, Any] = {v.path: v.data for v in self._inputs}
        if state is not None:
            self.state.update(state)
        fn = functools.partial(run_graph, graph, mesh=mesh)
        if mesh is None:
            self._jitted = jax.jit(fn)
        else:
            placement = shardings(graph, mesh, shard)
            self._var_shardings = placement["in_shardings"][0]
            self._jitted = jax.jit(fn, **placement)
        self._executables: dict[tuple, Any] = {}
        # the fast path of __call__: argument signatures already validated, and the
        # variables as device arrays, built once per state (see _fast_call)
        self._fast_sigs: set = set()
        self._leaves, self._leaves_of = None, None
        self._index = {v.path: i for i, v in enumerate(self._inputs)}
        flat = jax.tree_util.tree_structure(tuple(range(len(graph.inputs))))
        self._plain_args = graph.in_tree is None or graph.in_tree == flat
        if all(v.type.is_static for v in graph.inputs):
            self._executable(self._arg_structs())

    # -- compiling -------------------------------------------------------------
    def _var_structs(self):
        return [_struct(v.value.type) for v in self._inputs]

    def _arg_structs(self, dims: dict | None = None):
        env = {} if dims is None else dims
        return [_struct(v.type, env) for v in self.graph.inputs]

    def lower(self, *arg_structs):
        """The jax ``Lowered`` for the given flat argument structs (default: the traced types)."""
        structs = list(arg_structs) or self._arg_structs()
        return self._jitted.lower(self._var_structs(), structs)

    def _executable(self, structs):
        key = tuple((tuple(s.shape), str(s.dtype)) for s in structs)
        exe = self._executables.get(key)
        if exe is None:
            exe = self._jitted.lower(self._var_structs(), list(structs)).compile()
            self._executables[key] = exe
        return exe

    # -- running ---------------------------------------------------------------
    def _flat_args(self, args) -> list:
        g = self.graph
        if g.in_tree is not None:
            leaves, tree = jax.tree_util.tree_flatten(tuple(args))
            if tree != g.in_tree:
                raise NnxcError(f"arguments have structure {tree}, expected {g.in_tree}")
        else:
            leaves = list(args)
        if len(leaves) != len(g.inputs):
            raise NnxcError(f"expected {len(g.inputs)} array argument(s) "
                            f"({', '.join(v.name or '?' for v in g.inputs)}), got {len(leaves)}")
        out = []
        for v, x in zip(g.inputs, leaves):
            x = x if isinstance(x, jax.Array) else np.asarray(x)
            want = to_dtype(v.type.dtype)
            if x.dtype != want and jax.dtypes.canonicalize_dtype(x.dtype) == want:
                x = np.asarray(x, dtype=want)  # e.g. int64 data when JAX runs without x64
            if x.dtype != want:
                raise NnxcError(f"argument {v.name}: dtype {x.dtype}, expected {v.type}")
            if len(x.shape) != v.type.rank or any(
                    isinstance(d, int) and d != s for d, s in zip(v.type.shape, x.shape)):
                raise NnxcError(f"argument {v.name}: shape {tuple(x.shape)}, expected {v.type}")
            out.append(x)
        self._check_dims(out)
        return out

    def _check_dims(self, args: list) -> None:
        """Symbolic dims must fit the shapes: one value per symbol (``2*K`` is even, ...).
        Dims whose symbols no input determines (``K*K``) are left to JAX."""
        pairs, where = [], []
        for v, x in zip(self.graph.inputs, args):
            for axis, (d, n) in enumerate(zip(v.type.shape, x.shape)):
                if isinstance(d, str):
                    pairs.append((d, n))
                    where.append((v, axis))
        if not pairs:
            return
        try:
            solve_dims(pairs, strict=False)
        except DimError:
            pass
        else:
            return
        for i in range(1, len(pairs) + 1):  # name the first argument that does not fit
            try:
                solve_dims(pairs[:i], strict=False)
            except DimError as e:
                v, axis = where[i - 1]
                shape = tuple(a.shape for w, a in zip(self.graph.inputs, args) if w is v)[0]
                raise DimMismatchError(f"argument {v.name}: shape {tuple(shape)}, expected {v.type} "
                                       f"(dim {axis}: {e.msg})") from None

    def apply(self, state: dict, *args, **kwargs):
        """Pure call: ``(outputs, new_state)``; ``state`` maps variable paths to arrays.

        Array keyword arguments of the traced call are passed by keyword here too."""
        args = args + self._kwargs(kwargs)
        missing = [v.path for v in self._inputs if state.get(v.path) is None]
        if missing:
            raise NnxcError(f"no value for variable(s) {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else ""))
        flat = self._flat_args(args)
        if self._plain_args and len(args) == len(flat):
            self._fast_sigs.add(tuple([(a.shape, a.dtype) for a in args]))
        structs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in flat]
        exe = self._executable(structs)
        outs, new = exe(self._place([state[v.path] for v in self._inputs]), flat)
        new_state = dict(state)
        new_state.update(zip(self._updated, new))
        tree = self.graph.out_tree
        result = jax.tree_util.tree_unflatten(tree, outs) if tree is not None else tuple(outs)
        return result, new_state

    def _place(self, leaves: list) -> list:
        """Variables on the devices the executable expects (a no-op when already there)."""
        if self.mesh is not None:
            return jax.device_put(leaves, self._var_shardings)
        device = jax.devices()[0]
        return [jax.device_put(x, device) if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
                else x for x in leaves]

    def _kwargs(self, kwargs: dict) -> tuple:
        names = tuple(self.graph.meta.get("kwarg_inputs", ()))
        if set(kwargs) != set(names):
            raise NnxcError(f"keyword arguments: the model was traced with {list(names) or 'none'}, "
                            f"got {sorted(kwargs) or 'none'}")
        return tuple(kwargs[n] for n in names)

    def __call__(self, *args, **kwargs):
        if not kwargs and self.mesh is None and self._plain_args:
            try:
                sig = tuple([(a.shape, a.dtype) for a in args])
            except AttributeError:
                sig = None
            if sig in self._fast_sigs:
                return self._fast_call(list(args))
        out, new_state = self.apply(self.state, *args, **kwargs)
        self.state = new_state
        return out

    def _fast_call(self, args: list):
        """A call with arguments of a signature ``apply`` has validated: straight to jax.jit's
        C++ dispatch (which reuses the executable compiled ahead of time), with the
        variables kept as device arrays between calls."""
        if self._leaves_of is not self.state:
            self._leaves = jax.device_put(self._place([self.state[v.path] for v in self._inputs]))
            self._leaves_of = self.state
        outs, new = self._jitted(self._leaves, args)
        if self._updated:
            state, leaves = dict(self.state), list(self._leaves)
            for path, x in zip(self._updated, new):
                state[path] = x
                i = self._index.get(path)
                if i is not None:
                    leaves[i] = x
            self.state, self._leaves, self._leaves_of = state, leaves, state
        tree = self.graph.out_tree
        return jax.tree_util.tree_unflatten(tree, outs) if tree is not None else tuple(outs)

    # -- inspecting ------------------------------------------------------------
    def as_text(self, dialect: str = "stablehlo", *arg_structs) -> str:
        """StableHLO (symbolic dims kept) or optimized HLO (for the traced or given shapes)."""
        if dialect == "stablehlo":
            return self.export(*arg_structs).mlir_module()
        if dialect == "hlo":
            structs = list(arg_structs) or self._arg_structs(self._example_dims())
            return self._executable(structs).as_text()
        raise NnxcError(f"unknown dialect {dialect!r}: use 'stablehlo' or 'hlo'")

    def export(self, *arg_structs, platforms=None):
        """A ``jax.export.Exported`` with symbolic dims kept symbolic."""
        structs = list(arg_structs) or self._arg_structs()
        return jax.export.export(self._jitted, platforms=platforms)(self._var_structs(), structs)

    def cost_analysis(self, *arg_structs) -> dict:
        structs = list(arg_structs) or self._arg_structs(self._example_dims())
        cost = self._executable(structs).cost_analysis()
        if isinstance(cost, list):
            cost = cost[0] if cost else {}
        return dict(cost or {})

    def memory_analysis(self, *arg_structs) -> dict:
        """Argument, output, temporary and code sizes in bytes of the compiled executable."""
        structs = list(arg_structs) or self._arg_structs(self._example_dims())
        stats = self._executable(structs).memory_analysis()
        names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "generated_code_size_in_bytes")
        return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}

    def collectives(self, *arg_structs, dims: dict | None = None) -> list[dict]:
        """The collectives XLA inserted when partitioning over the mesh (none without one),
        one dict per HLO instruction: ``op``, ``module`` (nnxc module path, "" for the graph),
        ``shape``, ``bytes``, ``axes`` (mesh axes spanned) and ``op_name``, for the given flat
        input structs or ``dims`` (sizes of symbolic dims, default 1). Summarize with
        ``nnxc.backends.xla.collectives.collectives_by_module`` / ``format_collectives``."""
        from .collectives import hlo_collectives
        structs = list(arg_structs) or self._arg_structs(dict(self._example_dims(), **(dims or {})))
        paths = {n.path for n in self.graph.walk() if n.path}
        return hlo_collectives(self._executable(structs).as_text(), paths, self.mesh)

    def cost(self, *arg_structs, dims: dict | None = None, depth: int | None = None):
        """FLOPs (with loop trip counts, and XLA's own figure, which counts each loop body
        once), bytes accessed, peak memory and argument/output/temporary sizes, and FLOPs per
        module: a ``nnxc.backends.xla.cost.CostReport`` for the given flat input structs, or for
        ``dims`` (sizes of symbolic dims, default 1). ``str(report)`` is a table,
        ``report.to_json()`` JSON."""
        from .cost import cost_report
        return cost_report(self, *arg_structs, dims=dims, depth=depth)

    def _example_dims(self) -> dict:
        """Symbolic dims at size 1, for dumps of graphs with symbolic inputs."""
        names = {n for v in self.graph.inputs for d in v.type.shape if isinstance(d, str)
                 for n in parse_dim(d).symbols}
        return {n: 1 for n in names}


def compile(graph: Graph, state: dict | None = None, mesh=None, shard=None) -> Compiled:  # noqa: A001
    """Compile ``graph`` ahead of time for the current platform (on ``mesh``, sharded; ``shard``
    maps variable path globs to PartitionSpecs overriding the model's own, see ``shardings``)."""
    return Compiled(graph, state, mesh, shard)


SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")


def partition_names(meta: dict, rank: int, axis_names) -> tuple:
    """A variable's partitioning (``nnx.with_partitioning`` names) restricted to the mesh."""
    names = next((meta[k] for k in SHARDING_KEYS if meta.get(k) is not None), None)
    if names is None or len(names) != rank:
        return ()
    return tuple(n if n in axis_names else None for n in names)


def variable_specs(graph: Graph, axis_names, shard=None) -> dict:
    """path -> PartitionSpec of each variable: its partitioning metadata restricted to the
    mesh axes, or the first ``shard`` entry (path glob -> PartitionSpec, tuple or text like
    ``"None,model"``) matching its path. A glob matching no variable, a spec naming an axis
    the mesh lacks or of another rank is an NnxcError."""
    import fnmatch

    from jax.sharding import PartitionSpec as P
    rules = [(glob, parse_spec(s) if isinstance(s, str) else P(*s)) for glob, s in (shard or {}).items()]
    used, out = set(), {}
    for v in graph.variables:
        rank = v.value.type.rank
        spec = P(*partition_names(v.meta, rank, axis_names))
        for glob, s in rules:
            if fnmatch.fnmatchcase(v.path, glob):
                used.add(glob)
                if len(s) > rank:
                    raise NnxcError(f"shard {glob}={_spec_text(s)}: variable {v.path} has rank {rank}, "
                                    f"the spec names {len(s)} dims")
                spec = s
                break
        out[v.path] = spec
    for glob, s in rules:
        if glob not in used:
            raise NnxcError(f"shard {glob}={_spec_text(s)}: no variable matches {glob!r} "
                            f"(variables: {', '.join(v.path for v in graph.variables[:6])}"
                            f"{' ...' if len(graph.variables) > 6 else ''})")
        bad = [a for e in s for a in ((e,) if isinstance(e, str) else (e or ())) if a not in axis_names]
        if bad:
            raise NnxcError(f"shard {glob}={_spec_text(s)}: the mesh has no axis {bad[0]!r} "
                            f"(axes: {', '.join(axis_names)})")
    return out


def parse_spec(text: str):
    """``"None,model"`` / ``"(data+fsdp, None)"`` / ``""`` (replicated) -> a PartitionSpec;
    ``+`` joins the mesh axes one dim is split over."""
    from jax.sharding import PartitionSpec as P
    body = text.strip()
    if body.startswith("P(") and body.endswith(")"):
        body = body[2:-1]
    body = body.strip().strip("()[]")
    items = [t.strip().strip("'\"") for t in body.split(",")] if body.strip() else []
    if items and items[-1] == "" and len(items) > 1:
        items.pop()  # a trailing comma: "model,"
    out = []
    for t in items:
        names = [n.strip().strip("'\"") for n in t.split("+")]
        if t in ("None", "none", "_", "-"):
            out.append(None)
        elif all(n.isidentifier() for n in names):
            out.append(names[0] if len(names) == 1 else tuple(names))
        else:
            raise NnxcError(f"bad partition spec {text!r}: expected mesh axis names or None per "
                            "dim, separated by commas, like None,model (a+b splits a dim over two axes)")
    return P(*out)


def _spec_text(spec) -> str:
    return ",".join("None" if e is None else e if isinstance(e, str) else "+".join(e) for e in spec)


def shardings(graph: Graph, mesh, shard=None) -> dict:
    """jit in/out shardings: variables by their partitioning metadata (or ``shard`` overrides,
    see ``variable_specs``), data inputs split along their leading dim over a ``data`` axis
    (when the mesh has one), outputs replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    axes = mesh.axis_names
    specs = variable_specs(graph, axes, shard)
    var = [NamedSharding(mesh, specs[v.path]) for v in graph.variables]
    batch = "data" if "data" in axes else None
    args = [NamedSharding(mesh, P(batch) if batch and v.type.rank else P()) for v in graph.inputs]
    inputs = [s for s, v in zip(var, graph.variables) if not v.meta.get("new")]
    by_path = {v.path: s for s, v in zip(var, graph.variables)}
    outs = [NamedSharding(mesh, P()) for _ in graph.outputs]
    return {"in_shardings": (inputs, args),
            "out_shardings": (outs, [by_path[p] for p in updated_paths(graph)])}


def parse_mesh(text: str):
    """``"data=2,model=4"`` -> a jax Mesh over the first devices (Auto axis types)."""
    from jax.sharding import AxisType
    try:
        pairs = [(k.strip(), int(v)) for k, v in (item.split("=") for item in text.split(","))]
    except ValueError:
        raise NnxcError(f"bad mesh {text!r}: expected axis=size pairs like data=2,model=4") from None
    size = int(np.prod([n for _, n in pairs]))
    if size > jax.device_count():
        raise NnxcError(f"mesh {text!r} needs {size} devices, {jax.device_count()} available "
                        "(on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    return jax.make_mesh(tuple(n for _, n in pairs), tuple(k for k, _ in pairs),
                         axis_types=(AxisType.Auto,) * len(pairs))
