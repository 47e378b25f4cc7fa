"""``nnxc.trace``: a Flax NNX module, a Linen module with its variables, or a JAX callable -> Graph.

Each is reduced to one pure function ``(state_leaves, *args) -> (outputs, new_state_leaves)``
traced with ``jax.make_jaxpr``; the jaxpr becomes the IR, and the state leaves become
variables named by their path in the module tree.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import numpy as np
from flax import linen as nn
from flax import nnx

from .._gc import gc_paused
from ..errors import NnxcError
from ..ir.graph import Graph, Value, Variable
from ..ir.types import TensorType
from .. import _jax as jc
from ..ir.params import UnsupportedParam, encode_param
from .jaxpr import jaxpr_to_graph
from .specs import abstract_args, concrete_shape

# keyword arguments of nnxc.trace itself; every other keyword goes to the model call
_OWN = ("method", "variables", "mutable", "rngs", "name", "checkpoint", "weights",
        "logical_axis_rules")
_NOISE_META = {"hijax", "ref", "eager_sharding"}


def trace(obj, *args, method: str | None = None, variables=None, mutable=False, rngs=None,
          name: str | None = None, checkpoint=None, weights=None, logical_axis_rules=None,
          **kwargs) -> Graph:
    """Trace ``obj`` on example ``args`` into a Graph.

    ``obj``: an ``nnx.Module``; a Linen module (with ``variables=``, or lazily initialized
    from ``rngs=``); or a callable. ``args``: arrays, ShapeDtypeStructs or spec strings
    such as ``"f32[B,784]"``. Other keywords are passed to the call as static values.
    ``checkpoint=DIR`` (an Orbax checkpoint of ``nnx.state(model)`` or of Linen variables)
    or ``weights=FILE.safetensors`` (keyed by variable path) replace the model's variables
    first, on a copy (see ``nnxc.frontend.checkpoint``).
    Linen variables boxed by ``nn.with_partitioning`` keep their mesh axis names as
    ``out_sharding`` metadata (as NNX variables do); ``nn.with_logical_partitioning`` names
    are mapped to mesh axes by the box's own rules, else ``logical_axis_rules=`` (pairs
    ``(logical name, mesh axes)``, as ``nn.logical_axis_rules`` takes), else the rules of an
    enclosing ``with nn.logical_axis_rules(...)``.
    """
    from .capture import capture_parts, trace_capture
    parts = capture_parts(obj)
    if parts is not None:  # nnx.capture(model, ...): the model, under the same capture
        source = {k: v for k, v in (("checkpoint", checkpoint), ("weights", weights)) if v is not None}
        return trace_capture(parts, list(args), kwargs, method, source)
    with gc_paused():
        return _trace(obj, args, method, variables, mutable, rngs, name, kwargs, checkpoint, weights,
                      logical_axis_rules)


def _trace(obj, args, method, variables, mutable, rngs, name, kwargs, checkpoint=None,
           weights=None, logical_axis_rules=None) -> Graph:
    kwargs, array_kwargs = _split_kwargs(kwargs)
    positional = [a for a in args if not _is_node(a)]
    abstract = abstract_args(positional + list(array_kwargs.values()))
    kw = _KwInputs(len(positional), tuple(array_kwargs))
    if checkpoint is not None or weights is not None:
        from .checkpoint import restore_weights
        obj, args, variables, rngs = restore_weights(obj, args, variables, rngs, method, kwargs,
                                                     abstract, kw, checkpoint=checkpoint,
                                                     weights=weights)
    if isinstance(obj, nnx.Module):
        graph = _trace_nnx(obj, abstract, kwargs, method or "__call__", name, kw)
    elif isinstance(obj, nn.Module):
        graph = _trace_linen(obj, abstract, kwargs, variables, mutable, rngs, method, name, kw,
                             logical_axis_rules)
    elif callable(obj):
        fn = getattr(obj, method) if method else obj
        if any(_is_node(a) for a in args):
            graph = _trace_function_of_nodes(fn, args, kwargs, name, kw, abstract)
        else:
            graph = _trace_function(fn, abstract, kwargs, name, kw)
    else:
        raise NnxcError(f"cannot trace {type(obj).__name__}: expected an nnx.Module, a Linen "
                        "module or a callable")
    graph.meta["kwarg_inputs"] = kw.names
    return graph


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or (
        not isinstance(x, (str, bytes)) and hasattr(x, "shape") and hasattr(x, "dtype"))


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """(static keyword arguments, array-valued ones): arrays (and pytrees of arrays) become
    data inputs named by keyword; everything else is passed to the call as a static value."""
    static, arrays = {}, {}
    for k, v in kwargs.items():
        leaves = jax.tree_util.tree_leaves(v)
        if leaves and all(_is_array(x) for x in leaves):
            arrays[k] = v
        else:
            static[k] = v
    return static, arrays


class _KwInputs:
    """Array keyword arguments traced as data inputs after the positional ones."""

    def __init__(self, n_positional: int, names: tuple):
        self.n, self.names = n_positional, names

    def split(self, args: tuple) -> tuple[tuple, dict]:
        return tuple(args[:self.n]), dict(zip(self.names, args[self.n:]))

    def arg_names(self, positional: list[str]) -> list[str]:
        return list(positional[:self.n]) + list(self.names)


# -- shared ----------------------------------------------------------------------

def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _join(parts) -> str:
    return ".".join(str(p) for p in parts)


def _arg_names(fn: Callable, n: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{i}" for i in range(len(names), n)]


def _flat_inputs(abstract: tuple, names: list[str]) -> tuple[list[Value], Any]:
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in leaves:
        arg = names[path[0].idx]
        rest = [_key_name(k) for k in path[1:]]
        values.append(Value(TensorType.of(leaf), _join([arg, *rest])))
    return values, jax.tree_util.tree_structure(abstract)


def _build(name: str, fn: Callable, var_structs: list, variables: list[Variable],
           abstract: tuple, arg_names: list[str], var_out_names: Callable[[Any], list[str]]):
    """make_jaxpr ``fn(var_leaves, *args) -> (out, new_var_leaves)`` and convert it."""
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(var_structs, *abstract)
    graph = Graph(name)
    graph.meta["reference"] = _reference(fn, [v.data for v in variables])
    graph.variables = variables
    graph.inputs, graph.in_tree = _flat_inputs(abstract, arg_names)
    in_values = [v.value for v in variables] + graph.inputs
    for v, var in zip(in_values, closed.jaxpr.invars):  # JAX's canonical types (i64 -> i32 without x64)
        v.type = TensorType.of(var.aval)
    outs = jaxpr_to_graph(closed, graph, in_values)
    out_shape, new_var_shapes = shapes
    n_out = len(jax.tree_util.tree_leaves(out_shape))
    graph.outputs = outs[:n_out]
    graph.out_tree = jax.tree_util.tree_structure(out_shape)
    by_path = {v.path: v for v in variables}
    for (path, kind), new in zip(var_out_names(new_var_shapes), outs[n_out:]):
        var = by_path.get(path)
        if var is None:  # created by the call (e.g. a sown intermediate)
            var = Variable(Value(new.type, path), path, kind, {"new": True})
            variables.append(var)
            by_path[path] = var
        if new is not var.value:
            graph.updates.append((path, new))
    return graph


def _reference(fn: Callable, var_data: list) -> Callable:
    """The model's own computation, jitted: ``reference(*args) -> outputs`` at the traced state.

    Used as the exact reference for the XLA and ONNX paths (``nnxc check``, ``crosscheck``).
    ``reference.apply(var_leaves, *args) -> (outputs, new_var_leaves)`` is the pure form.
    """
    jitted = jax.jit(fn)

    def reference(*args, **kwargs):  # array keyword arguments follow in the traced order
        return jitted(var_data, *args, *kwargs.values())[0]

    reference.apply = jitted
    return reference


# -- NNX -------------------------------------------------------------------------

def _variable_leaves(state) -> list[tuple[str, Any, Any]]:
    """(path, Variable, leaf) for every array leaf of an nnx State, in flatten order."""
    out = []
    pairs = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    for path, var in pairs:
        base = [_key_name(k) for k in path]
        if isinstance(var, nnx.Variable):
            for sub, leaf in jax.tree_util.tree_flatten_with_path(var.get_value())[0]:
                out.append((_join(base + [_key_name(k) for k in sub]), var, leaf))
        else:
            out.append((_join(base), None, var))
    return out


def _variable_meta(var) -> dict:
    meta = {}
    if var is None:
        return meta
    for k, v in sorted(var.get_metadata().items()):
        if k in _NOISE_META or k.startswith("_") or v is None:
            continue
        try:
            meta[k] = encode_param(v)
        except UnsupportedParam:
            continue
    meta.update(_nnx_logical_sharding(var))
    return meta


def _nnx_logical_sharding(var) -> dict:
    """An NNX variable partitioned by logical names (``nnx.with_partitioning(init, ("embed",
    "mlp"))``) under logical axis rules (its ``sharding_rules`` metadata, or an enclosing
    ``with nnx.logical_axis_rules(...)``): ``out_sharding`` becomes the mesh axes, as Flax's
    own ``nnx.get_partition_spec`` maps them, and the names are kept as ``logical_names``."""
    from flax.nnx import spmd
    names = var.get_metadata().get("out_sharding")
    if not names or not isinstance(names, (tuple, list)):
        return {}
    spec = spmd.get_var_pspec(var)
    axes = tuple(spec) + (None,) * (len(names) - len(tuple(spec)))
    if spec is None or axes == tuple(names):
        return {}
    return {"logical_names": encode_param(tuple(names)), "out_sharding": encode_param(axes)}


@functools.cache
def _scoped_class(cls: type, path: str) -> type:
    """A subclass of ``cls`` whose methods run inside a named scope for ``path``.

    Instances are switched to it only inside the traced function, so nodes learn their
    module path; the class is kept in the GraphDef, so modules merged again inside
    nnx.scan / nnx.vmap bodies keep their path.
    """
    def wrap(fn):
        @functools.wraps(fn)
        def method(self, *a, **k):
            with jc.named_scope(path):
                return fn(self, *a, **k)
        return method

    body = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    for klass in cls.__mro__:
        if klass in (nnx.Module, object) or not issubclass(klass, nnx.Module):
            continue
        for attr, fn in vars(klass).items():
            if attr in body or not inspect.isfunction(fn):
                continue
            if attr == "__call__" or not attr.startswith("_"):
                body[attr] = wrap(fn)
    return type(cls)(cls.__name__, (cls,), body)


def _scope_modules(root, prefix: str, classes: dict) -> None:
    """Switch every submodule to its scoped class; note each path's class name in ``classes``."""
    for path, node in nnx.iter_graph(root):
        full = _join([prefix, *path] if prefix else path)
        if isinstance(node, nnx.Module) and full:
            cls = type(node)
            classes.setdefault(full, cls.__name__)
            node.__class__ = _scoped_class(cls, full)


def _trace_nnx(model: nnx.Module, abstract, kwargs, method: str, name: str | None, kw) -> Graph:
    fn = getattr(type(model), method, None)
    names = _arg_names(fn, kw.n + 1)[1:] if fn else _arg_names(lambda: None, kw.n)

    def call(nodes, *args):
        pos, kwa = kw.split(args)
        return getattr(nodes[0], method)(*pos, **kwargs, **kwa)

    graph = _trace_stateful(type(model).__name__ if name is None else name, call, (model,), [""],
                            abstract, kw.arg_names(names))
    graph.meta.update(frontend="nnx", method=method, kwargs=dict(kwargs))
    ref = _nnx_reference(model, method, kwargs, kw)
    ref.apply = graph.meta["reference"].apply
    graph.meta["reference"] = ref
    return graph


def _nnx_reference(model: nnx.Module, method: str, kwargs: dict, kw) -> Callable:
    """The user's own call ``model.method(*args, **kwargs)`` under ``jax.jit`` with the model
    as an argument (Flax's pytree form, ``jax.jit(lambda m, *a: m(*a))(model, *args)``),
    returning the outputs and the variables the call changes, as nnxc's executable does.
    The user's model is never changed. (``nnx.jit`` also returns every unchanged variable;
    XLA may fuse that larger program differently: README, Passes.)"""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree_util.tree_flatten(state)

    @jax.jit
    def run(leaves, *args):
        given = {id(x) for x in leaves}  # a variable the call leaves alone keeps its array
        m = nnx.merge(graphdef, jax.tree_util.tree_unflatten(tree, leaves))
        pos, kwa = kw.split(args)
        out = getattr(m, method)(*pos, **kwargs, **kwa)
        return out, [x for x in jax.tree_util.tree_leaves(nnx.state(m)) if id(x) not in given]

    def reference(*args, **kwa):
        return run(leaves, *args, *(kwa[k] for k in kw.names))[0]

    return reference


def _trace_stateful(name: str, call: Callable, nodes: tuple, prefixes: list[str], abstract,
                    arg_names: list[str]) -> Graph:
    """Trace ``call(nodes, *args)`` where ``nodes`` are NNX graph nodes (modules, optimizers).

    Their state becomes the graph's variables, named ``prefix.path`` (no prefix for "").
    """
    graphdef, state = nnx.split(nodes)
    state_tree = jax.tree_util.tree_structure(state)

    def named(leaves):
        out = []
        for path, var, leaf in leaves:
            index, _, rest = path.partition(".")
            prefix = prefixes[int(index)]
            out.append((_join([prefix, rest] if prefix else [rest]), var, leaf))
        return out

    leaves = named(_variable_leaves(state))
    variables = [Variable(Value(TensorType.of(leaf), path), path,
                          type(var).__name__ if var is not None else "Variable",
                          _variable_meta(var), leaf) for path, var, leaf in leaves]
    structs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for _, _, leaf in leaves]
    new_paths = []  # filled while tracing: the state after the call may have new variables
    classes: dict[str, str] = {}  # module path -> class name, filled while tracing

    def out_names(_):
        return [(path, type(var).__name__) for path, var, _ in new_paths[0]]

    def traced(var_leaves, *args):
        merged = nnx.merge(graphdef, jax.tree_util.tree_unflatten(state_tree, var_leaves))
        for node, prefix in zip(merged, prefixes):
            _scope_modules(node, prefix, classes)
        out = call(merged, *args)
        new_state = nnx.state(merged)
        if not new_paths:  # names are needed once; the structure is the same every call
            new_paths.append(named(_variable_leaves(new_state)))
        return out, jax.tree_util.tree_leaves(new_state)

    graph = _build(name, traced, structs, variables, abstract, arg_names, out_names)
    graph.meta.update(graphdef=graphdef, state_tree=state_tree, module_types=dict(classes))
    return graph


# -- Linen -----------------------------------------------------------------------

def _linen_interceptor(classes: dict, next_fun, args, kwargs, context):
    path = context.module.path
    if not path:
        return next_fun(*args, **kwargs)
    classes.setdefault(_join(path), type(context.module).__name__)
    with jc.named_scope(_join(path)):
        return next_fun(*args, **kwargs)


def _linen_partitioning(variables, rules) -> dict:
    """{key path of a boxed leaf: its meta}: ``out_sharding`` (mesh axes per dim) of
    ``nn.Partitioned`` boxes, and for ``nn.LogicallyPartitioned`` ones also their
    ``logical_names``, mapped through the box's rules, else ``rules``, else the rules of an
    enclosing ``nn.logical_axis_rules`` (no rules anywhere: left unmapped, with a warning)."""
    import warnings

    from ..errors import NnxcWarning
    from flax.core import meta as flax_meta
    out, unmapped = {}, []
    boxes = jax.tree_util.tree_flatten_with_path(
        variables, is_leaf=lambda x: isinstance(x, flax_meta.Partitioned))[0]
    for path, box in boxes:
        if not isinstance(box, flax_meta.Partitioned) or box.names is None:
            continue
        meta = {}
        names = tuple(box.names)
        if isinstance(box, nn.LogicallyPartitioned):
            meta["logical_names"] = names
            given = box.rules if box.rules is not None else rules
            given = given if given is not None else nn.get_logical_axis_rules()
            if not given:
                unmapped.append(_join([_key_name(k) for k in path[1:]] + ["value"]))
                names = None
            else:
                try:
                    names = tuple(nn.logical_to_mesh_axes(names, tuple(given)))
                except (ValueError, TypeError) as e:
                    raise NnxcError(f"Linen variable {_join(_key_name(k) for k in path)}: logical "
                                    f"axis names {names} do not map to mesh axes: {e}") from None
        if names is not None:
            meta["out_sharding"] = names
        try:
            out[tuple(_key_name(k) for k in path)] = {k: encode_param(v) for k, v in meta.items()}
        except UnsupportedParam:
            continue  # e.g. PartitionSpec.UNCONSTRAINED: no fixed layout to record
    if unmapped:
        warnings.warn(f"Linen variable(s) {', '.join(unmapped[:3])}{' ...' if len(unmapped) > 3 else ''} "
                      "have logical axis names but no logical axis rules map them to mesh axes, so "
                      "they are not sharded: trace inside `with nn.logical_axis_rules(rules):` or "
                      "pass nnxc.trace(..., logical_axis_rules=rules)", NnxcWarning, stacklevel=4)
    return out


def _trace_linen(module, abstract, kwargs, variables, mutable, rngs, method, name, kw,
                 logical_axis_rules=None) -> Graph:
    from flax.core import unfreeze
    user_module, user_variables, user_rngs = module, variables, rngs
    if module.scope is not None:  # bound: trace with its own variables, as calling it would
        if variables is not None:
            raise NnxcError("the Linen module is bound to variables already; pass the unbound "
                            "module with variables=..., or the bound module without them")
        module, variables = module.unbind()
    if variables is None:
        if rngs is None:
            rngs = jax.random.key(0)
        concrete = jax.tree_util.tree_map(
            lambda s: jax.numpy.zeros(concrete_shape(s.shape), s.dtype), abstract)
        init = functools.partial(module.init, method=method, **kwargs) if method else \
            functools.partial(module.init, **kwargs)
        variables = init(rngs, *concrete[:kw.n], **kw.split(concrete)[1])
        rngs = None
    variables = unfreeze(variables)
    rng_tree = {} if rngs is None else (dict(rngs) if isinstance(rngs, dict) else {"params": rngs})
    inputs = {"variables": variables, "rngs": rng_tree}
    flat, tree = jax.tree_util.tree_flatten_with_path(inputs)
    paths = []
    kinds = []
    for path, _ in flat:
        parts = [_key_name(k) for k in path]
        if parts[0] == "variables":
            kinds.append(parts[1])
            paths.append(_join(parts[2:]))
        else:
            kinds.append("RngKey")
            paths.append(_join(["rngs", *parts[1:]]))
    if len(set(paths)) != len(paths):  # the same name in two collections: keep them apart
        paths = [p if k == "RngKey" else f"{k}.{p}" for p, k in zip(paths, kinds)]
    boxed = _linen_partitioning(variables, logical_axis_rules)
    variables_ir = [Variable(Value(TensorType.of(leaf), p), p, k,
                             dict(boxed.get(tuple(_key_name(x) for x in kp[1:-1]), {})), leaf)
                    for (kp, leaf), p, k in zip(flat, paths, kinds)]
    structs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for _, leaf in flat]
    path_of = {(k, _join([_key_name(x) for x in kp[2:]])): p
               for (kp, _), p, k in zip(flat, paths, kinds) if k != "RngKey"}

    classes: dict[str, str] = {}  # module path -> class name, filled while tracing

    def traced(var_leaves, *args):
        ins = jax.tree_util.tree_unflatten(tree, var_leaves)
        pos, kwa = kw.split(args)
        call_kwargs = dict(kwargs, **kwa)
        if method:
            call_kwargs["method"] = method
        with nn.intercept_methods(functools.partial(_linen_interceptor, classes)):
            res = module.apply(ins["variables"], *pos, rngs=ins["rngs"] or None,
                               mutable=mutable, **call_kwargs)
        if mutable is False:
            return res, []
        out, mutated = res
        return out, unfreeze(mutated)

    def out_names(mutated):
        names = []
        for kp, _ in jax.tree_util.tree_flatten_with_path(mutated)[0]:
            parts = [_key_name(k) for k in kp]
            names.append((path_of.get((parts[0], _join(parts[1:])), _join(parts[1:])), parts[0]))
        return names

    target = getattr(module, method) if isinstance(method, str) else module.__call__
    graph = _build(type(module).__name__ if name is None else name, traced, structs,
                   variables_ir, abstract, kw.arg_names(_arg_names(target, kw.n)), out_names)
    graph.meta.update(frontend="linen", kwargs=dict(kwargs), mutable=mutable, module_types=dict(classes))
    ref = _linen_reference(user_module, user_variables, variables, user_rngs, rngs, mutable, method,
                           kwargs, kw)
    ref.apply = graph.meta["reference"].apply
    graph.meta["reference"] = ref
    return graph


def _linen_reference(user_module, user_variables, variables, user_rngs, rngs, mutable, method,
                     kwargs, kw) -> Callable:
    """The user's own call, jitted: a bound module called directly, an unbound one through
    ``module.apply(variables, ...)`` with the variables the user gave (or lazily initialized)."""
    call_kwargs = dict(kwargs)
    if method:
        call_kwargs["method"] = method

    if user_module.scope is not None:
        def run(*args):
            pos, kwa = kw.split(args)
            fn = getattr(user_module, method) if isinstance(method, str) else user_module
            return fn(*pos, **kwargs, **kwa)
    else:
        given = user_variables if user_variables is not None else variables

        def run(*args):
            pos, kwa = kw.split(args)
            res = user_module.apply(given, *pos, rngs=rngs if user_variables is not None else None,
                                    mutable=mutable, **call_kwargs, **kwa)
            return res if mutable is False else res[0]

    jitted = jax.jit(run)

    def reference(*args, **kwa):
        return jitted(*args, *(kwa[k] for k in kw.names))

    return reference


# -- plain functions -------------------------------------------------------------

def _trace_function(fn: Callable, abstract, kwargs, name: str | None, kw) -> Graph:
    def traced(_, *args):
        pos, kwa = kw.split(args)
        return fn(*pos, **kwargs, **kwa), []

    graph = _build(name or getattr(fn, "__name__", "function").strip("<>") or "function", traced,
                   [], [], abstract, kw.arg_names(_arg_names(fn, kw.n)), lambda _: [])
    graph.meta.update(frontend="function", kwargs=dict(kwargs))
    jitted = jax.jit(lambda *args: fn(*kw.split(args)[0], **kwargs, **kw.split(args)[1]))

    def reference(*args, **kwa):  # the user's function as the user calls it, jitted
        return jitted(*args, *(kwa[k] for k in kw.names))

    reference.apply = graph.meta["reference"].apply
    graph.meta["reference"] = reference
    return graph


def nnx_state(graph: Graph, state: dict) -> "nnx.State":
    """An ``nnx.State`` for a traced NNX graph from a ``{path: array}`` dict (e.g. ``exe.state``).

    For a function of several NNX objects (a training step), a tuple of States in argument order.

    Merge it back with ``nnx.update(model, nnx_state(graph, exe.state))`` or build a new
    module with ``nnx.merge(graph.meta["graphdef"], nnx_state(graph, exe.state))``.
    """
    if "state_tree" not in graph.meta:
        raise NnxcError("nnx_state needs a graph traced from an nnx.Module (or a function of them)")
    leaves = [state[v.path] for v in graph.variables if not v.meta.get("new")]
    states = jax.tree_util.tree_unflatten(graph.meta["state_tree"], leaves)
    parts = tuple(states[i] for i in sorted(states.keys()))
    return parts[0] if graph.meta.get("frontend") == "nnx" else parts


def _is_node(x) -> bool:
    return isinstance(x, nnx.Pytree) and nnx.graphlib.is_graph_node(x)


def _trace_function_of_nodes(fn: Callable, args: tuple, kwargs, name: str | None, kw,
                             abstract) -> Graph:
    """A function of NNX modules/optimizers and arrays, e.g. a training step
    ``train_step(model, optimizer, batch)``: the nodes' state becomes variables named
    ``model.linear1.kernel``, ``optimizer.opt_state.0.mu.linear1.kernel``; what the function
    mutates (parameters, optimizer state) becomes variable updates."""
    names = _arg_names(fn, len(args))
    node_pos = [i for i, a in enumerate(args) if _is_node(a)]
    arrays = [i for i in range(len(args)) if i not in node_pos]

    def call(nodes, *array_args):
        pos, kwa = kw.split(array_args)
        full = list(args)
        for i, node in zip(node_pos, nodes):
            full[i] = node
        for i, a in zip(arrays, pos):
            full[i] = a
        return fn(*full, **kwargs, **kwa)

    graph = _trace_stateful(name or getattr(fn, "__name__", "function").strip("<>"), call,
                            tuple(args[i] for i in node_pos), [names[i] for i in node_pos],
                            abstract, kw.arg_names([names[i] for i in arrays]))
    graph.meta.update(frontend="function", kwargs=dict(kwargs))
    return graph
