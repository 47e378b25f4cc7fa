"""``export_onnx``: an IR graph -> a checked ``onnx.ModelProto`` (and a file, written atomically).

Graph inputs keep the user's argument names, variables become initializers named by their
module path (or graph inputs with ``weights_as_inputs=True``), symbolic dims become
``dim_param``s of the same name. Outputs are named after the output pytree ("output",
"output.0", "logits", ...), followed by the variable updates ("<path>.new", or "<path>" for
variables the call created, e.g. sown intermediates). Constants that were variables keep the
variable's path (``-O inference`` freezes them), folded ones ``<path>.folded``.

Complex values cross the boundary as real tensors with a trailing axis of 2 (real part,
imaginary part; c64 -> f32[..., 2], c128 -> f64[..., 2]), the layout nnxc computes them in
(``fft.py``): complex inputs, outputs, variables and variable updates alike. Each such input
and output says so in its ``doc_string``, the model in its ``doc_string`` and in the
metadata key ``nnxc.complex_as_pairs`` (the names, comma-separated).

After lowering, ``layout.py`` moves the layout Transposes of NHWC convolutions down the
graph until they cancel (an NHWC conv net keeps one in and one out) and ``conv_bias.py``
makes each per-channel Add after a Conv its bias input: the same function, graph inputs and
outputs unchanged, in the form onnxruntime's Conv fusions match.

Every node carries ``metadata_props`` (what ``node_metadata`` returns): ``namespace``, the
module path of the IR node it was lowered from as torch.onnx writes it (levels joined by
``/`` under the graph name, so Model Explorer builds its layer tree from it: ``GPT/blocks.0/
attn``; ``GPT`` at top level), ``nnxc.path`` (the dotted module path, "" at top level),
``nnxc.class`` (the module's class) and ``nnxc.loc`` (the user's source line). The model
carries ``producer_name`` ``nnxc``, ``producer_version`` and ``metadata_props``
(``model_metadata``): the model's class, frontend, graph name and the opset choice, and
``nnxc.low_precision``: how many f16/bf16 nodes ``fit_kernels`` computes in f32 for
onnxruntime's CPU provider (``cpu_kernels=True``, the default), or that they were kept.
"""
from __future__ import annotations

import functools
import os
import tempfile
import warnings

import jax
import numpy as np
import onnx
from onnx import TensorProto, helper

from ..._version import __version__
from ...errors import NnxcWarning, NnxcError, UnsupportedOpError
from ...ir.graph import Graph
from ...ir.types import is_plain_symbol
from ...passes.strip_jit_boundaries import strip_jit_boundaries
from . import control, elementwise, fused, indexing, linalg, reducers, reductions, rng, shape, special, fft  # noqa: F401 - rules
from .builder import Builder, Context, host_array, live_nodes, value_info
from .graphtools import fresh as _fresh, prune
from .layout import Permuted, optimize_layout
from .fft import PART, as_pair, boundary_type, is_complex, pair
from .table import Refused
from .save import INLINE_BELOW, build_initializers, write_model

MIN_OPSET = 13


@functools.cache
def max_opset() -> int:
    """The newest ai.onnx opset that both the onnx package and the installed onnxruntime run."""
    import onnxruntime as ort
    from onnx import TensorProto
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for v in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", v)],
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", v)]))
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return v
        except Exception:  # noqa: BLE001 - onnxruntime refuses newer opsets with various errors
            continue
    return MIN_OPSET


def _levels(path: str) -> list[str]:
    """``blocks.0.attn`` -> ``["blocks.0", "attn"]``: a list index stays with its container."""
    parts, out = path.split("."), []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}.{part}"
        else:
            out.append(part)
    return out


def root_class(graph: Graph) -> str | None:
    """The class of the traced model (None for a plain function)."""
    classes = graph.meta.get("module_types") or {}
    if classes.get(""):
        return classes[""]
    return graph.name if graph.meta.get("frontend") in ("nnx", "linen") else None


def node_metadata(graph: Graph):
    """``(module path, loc) -> [(key, value)]``: the ``metadata_props`` of ONNX nodes."""
    classes = dict(graph.meta.get("module_types") or {})
    top = root_class(graph)

    def meta(path: str, loc: str | None) -> list:
        pairs = [("namespace", "/".join([graph.name, *_levels(path)]) if path else graph.name),
                 ("nnxc.path", path)]
        cls = classes.get(path) if path else top
        if cls:
            pairs.append(("nnxc.class", cls))
        if loc:
            pairs.append(("nnxc.loc", loc))
        return pairs
    return meta


def model_metadata(graph: Graph, opset: int, requested) -> dict:
    """The model's ``metadata_props``: what was exported and how the opset was chosen."""
    import onnxruntime as ort
    out = {"nnxc.graph": graph.name}
    cls = root_class(graph)
    if cls:
        out["nnxc.class"] = cls
    if graph.meta.get("frontend"):
        out["nnxc.frontend"] = str(graph.meta["frontend"])
    out["nnxc.opset"] = str(opset)
    default = f"default: the newest at which onnxruntime {ort.__version__} runs every fused op natively"
    if isinstance(requested, str) and requested.startswith("raised"):
        out["nnxc.opset_choice"] = f"{default}, {requested}"
    elif requested is True:
        out["nnxc.opset_choice"] = f"requested (nnxc exports {MIN_OPSET}..{max_opset()})"
    else:
        out["nnxc.opset_choice"] = default
    return out


def supported_opsets() -> range:
    return range(MIN_OPSET, max_opset() + 1)


def resolve_opset(opset) -> int:
    if opset is None:
        from .native import default_opset
        return default_opset()
    ok = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ok:
        import onnxruntime as ort
        raise NnxcError(f"opset {opset!r} is not supported: nnxc exports ai.onnx opsets "
                        f"{ok.start}..{ok.stop - 1} (the newest one that onnxruntime "
                        f"{ort.__version__} runs is {ok.stop - 1})")
    return opset


def output_names(graph: Graph) -> list[str]:
    """Names for the graph outputs from the output pytree's key paths."""
    n = len(graph.outputs)
    if graph.out_tree is None:
        return [f"output.{i}" for i in range(n)] if n != 1 else ["output"]
    tree = jax.tree_util.tree_unflatten(graph.out_tree, list(range(n)))
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for k in path:
            for attr in ("key", "idx", "name"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        text = ".".join(parts)
        names.append("output" if not text else f"output.{text}" if text[0].isdigit() else text)
    return names


class _NeedsOpset(Exception):
    def __init__(self, opset: int, ops: list):
        self.opset, self.ops = opset, ", ".join(ops)


def export_onnx(graph: Graph, path=None, opset: int | None = None, external_data=None,
                weights_as_inputs: bool = False, *, check: bool = True,
                value_names: dict | None = None, cpu_kernels: bool = True,
                _chosen: str | None = None) -> onnx.ModelProto:
    """Lower ``graph`` to ONNX; write it to ``path`` if given (atomically) and return the model.

    ``opset``: default the newest at which every fused op runs natively in the installed
    onnxruntime (see native.py), raised to the opset an op needs (BitCast: 26) when the
    graph has one. ``external_data``:
    None writes weights to ``<model>.data`` beside the model only when they pass 2 GB; True
    always does; a file name picks that name; False never does. ``check`` runs
    ``onnx.checker.check_model(full_check=True)`` (strict shape inference included) on the
    graph with its weights declared as typed inputs, before the weights are added.
    ``value_names``: a dict to fill with the ONNX name of each top-level IR value (before
    graph outputs are renamed; ``nnxc.runtime.permodule`` reads intermediates by them); a
    value the layout pass left permuted (the model holds its NCHW source) has a
    ``layout.Permuted`` name: ``Transpose(name.source, name.perm)`` is the value. The model
    is the same with or without ``value_names``.
    ``cpu_kernels``: fit the model to onnxruntime's CPU provider (``fit_kernels``): f16/bf16
    nodes it has no kernel for are computed in f32 and rounded back, and nodes it still
    cannot run warn (``OnnxKernelWarning``). False keeps every node in its own dtype, for
    runtimes with such kernels (CUDA), and warns of nothing. The metadata key
    ``nnxc.low_precision`` says which.
    """
    requested = opset is not None
    if not requested:  # the fused-op default, raised when an op needs a newer opset
        try:
            return export_onnx(graph, path, resolve_opset(None), external_data, weights_as_inputs,
                               check=check, value_names=value_names, cpu_kernels=cpu_kernels,
                               _chosen="default")
        except _NeedsOpset as e:
            return export_onnx(graph, path, e.opset, external_data, weights_as_inputs, check=check,
                               value_names=value_names, cpu_kernels=cpu_kernels,
                               _chosen=f"raised to {e.opset} for {e.ops}")
    opset = resolve_opset(opset)
    if value_names is not None and any(n.op == "jit_boundary" for n in graph.walk()):
        stripped: dict = {}
        vmap: dict = {}
        model = export_onnx(strip_jit_boundaries(graph, vmap), path, opset, external_data,
                            weights_as_inputs, check=check, value_names=stripped,
                            cpu_kernels=cpu_kernels, _chosen=_chosen)
        for v, new in vmap.items():  # the names of the caller's values
            if new in stripped:
                value_names[v] = stripped[new]
        return model
    graph = strip_jit_boundaries(graph)  # ONNX rules read constants as constants
    if external_data and path is None:
        raise NnxcError("external_data needs a path to write the data file beside")
    ctx = Context(opset)
    ctx.exact_needs_newer = _chosen == "default"  # rules may ask for a newer opset to be exact
    ctx.node_meta = node_metadata(graph)
    ctx.live = live_nodes(graph)
    b = Builder(ctx)
    inputs, weights = [], []
    for v in graph.inputs:
        name = b.env[v] = ctx.reserve(v.name or "input")
        inputs.append(_boundary_info(b, name, v.type))
        for axis, d in enumerate(v.type.shape):
            if is_plain_symbol(d):
                ctx.dim_sources.setdefault(d, (name, axis))
    for var in graph.variables:
        if var.meta.get("new"):
            continue
        name = b.env[var.value] = ctx.reserve(var.path)
        if weights_as_inputs:
            inputs.append(_boundary_info(b, name, var.value.type))
        else:
            if var.data is None:
                raise NnxcError(f"variable {var.path} has no value (a graph parsed from text); "
                                "export with weights_as_inputs=True")
            weights.append((name, _pair_data(var.data) if is_complex(var.value.type.dtype) else var.data))
            if is_complex(var.value.type.dtype):
                as_pair(b, name)
    b.emit(graph.nodes)
    if value_names is not None:
        value_names.update(b.env)
    if ctx.failures:
        if _chosen == "default" and ctx.needs_opset and not ctx.refused_outright \
                and ctx.needs_opset <= max_opset():
            raise _NeedsOpset(ctx.needs_opset, sorted({f[0] for f in ctx.failures}))
        raise UnsupportedOpError(ctx.failures, stage=f"ONNX export (opset {opset})")
    ctx.path = ""
    outs = list(zip(output_names(graph), graph.outputs))
    for var_path, v in graph.updates:
        new = graph.variable(var_path).meta.get("new")
        outs.append((var_path if new else f"{var_path}.new", v))
    outputs = _name_outputs(b, outs)
    if ctx.failures:  # a complex output no rule left as a pair
        raise UnsupportedOpError(ctx.failures, stage=f"ONNX export (opset {opset})")
    nodes, live = prune(ctx.pre.nodes + b.nodes, [o.name for o in outputs])
    weights = [(n, x) for n, x in weights if n in live]
    consts = [(n, x) for n, x in ctx.initializers if n in live]
    opsets = [helper.make_opsetid("", opset)]
    if ctx.functions:
        opsets.append(helper.make_opsetid("nnxc", 1))
    permuted: dict = {}
    nodes, weights, consts = optimize_layout(  # Transposes cancelled, Conv biases folded
        nodes, weights, consts, inputs, [o.name for o in outputs],
        permuted=permuted, opsets=opsets, functions=list(ctx.functions.values()))
    if value_names is not None:  # a value the model holds permuted says how to read it
        value_names.update([(v, Permuted(n, *permuted[n])) for v, n in value_names.items()
                            if n in permuted])
    onnx_graph = helper.make_graph(nodes, graph.name, inputs, outputs)
    for fn in ctx.functions.values():  # shared bodies: named after the function
        for node in fn.node:
            if not any(p.key == "namespace" for p in node.metadata_props):
                node.metadata_props.add(key="namespace", value=f"{fn.domain}.{fn.name}")
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="nnxc",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets[:1]),
                              functions=list(ctx.functions.values()))
    props = model_metadata(graph, opset, _chosen or requested)
    pairs = [v.name for v in [*inputs, *outputs] if v.doc_string.startswith(_PAIR_DOC)]
    if pairs:
        props["nnxc.complex_as_pairs"] = ",".join(pairs)
        model.doc_string = (f"Complex inputs and outputs ({', '.join(pairs)}) are real tensors with "
                            "a trailing axis of 2: [..., 0] the real part, [..., 1] the imaginary "
                            "part (complex64 as float32, complex128 as float64).")
    if cpu_kernels:
        wrapped = fit_kernels(model, weights + consts, opset)
        if wrapped:
            props["nnxc.low_precision"] = low_precision_note(wrapped)
    else:
        props["nnxc.low_precision"] = "kept in their own dtype (cpu_kernels=False)"
    helper.set_model_props(model, props)
    if check:  # before the weights go in: the checker would serialize them all
        _check(model, weights, consts)
    plan = build_initializers(model, weights, consts, path, external_data)
    if path is not None:
        write_model(model, os.fspath(path), plan)
    return model


_PAIR_DOC = "complex as real/imaginary pairs:"


def _boundary_info(b: Builder, name: str, t):
    """The ValueInfo of a graph input or output; a complex one is its ``[..., 2]`` pair
    (an input is recorded as a pair for the rules that read it)."""
    if not is_complex(t.dtype):
        return value_info(name, t)
    as_pair(b, name)
    info = value_info(name, boundary_type(t))
    dims = ",".join(map(str, t.shape))
    info.doc_string = (f"{_PAIR_DOC} {t.dtype}[{dims}] as {PART[t.dtype]}[{dims}{',' if dims else ''}2], "
                       "[..., 0] real part, [..., 1] imaginary part")
    return info


def _pair_data(x) -> np.ndarray:
    a = np.asarray(host_array(x))
    return np.stack([a.real, a.imag], -1)


def _name_outputs(b: Builder, outs: list) -> list:
    """Give the graph outputs their names: rename the producing node's output, else Identity."""
    produced = {}
    for node in b.nodes:
        for i, name in enumerate(node.output):
            produced[name] = (node, i)
    renames: dict[str, str] = {}
    infos = []
    for want, v in outs:
        if is_complex(v.type.dtype):
            try:
                name = pair(b, v, "" if v.data is not None else b.value(v))
            except Refused as e:
                b.ctx.failures.append(("output", "", None, f"output {want}: {e}"))
                continue
        else:
            name = b.value(v)
        final = b.ctx.reserve(want)
        if name in produced and name not in renames:
            node, i = produced[name]
            node.output[i] = final
            renames[name] = final
        else:
            node = helper.make_node("Identity", [renames.get(name, name)], [final],
                                    name=f"output/{final}")
            for key, value in b.ctx.metadata("", None):
                node.metadata_props.add(key=key, value=value)
            b.nodes.append(node)
        infos.append(_boundary_info(b, final, v.type))
    if renames:
        _rename_inputs(b.nodes, renames)
    return infos


def _rename_inputs(nodes, renames: dict) -> None:
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_inputs(attr.g.node, renames)
                for out in attr.g.output:
                    if out.name in renames:  # a subgraph returning an outer value by name
                        out.name = renames[out.name]


def _check(model, weights, consts) -> None:
    """``onnx.checker.check_model(full_check=True)`` on the model with its weights (and large
    constants) declared as graph inputs of the same type: the same graph, types and shapes,
    without serializing gigabytes of data. The initializers are built mechanically after."""
    big = [(n, host_array(x)) for n, x in weights]
    small = []
    for n, x in consts:
        a = host_array(x)
        (small if a.nbytes < INLINE_BELOW else big).append((n, a))
    n_inputs = len(model.graph.input)
    model.graph.input.extend(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                           a.shape) for n, a in big)
    build_initializers(model, [], small, None, False)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise NnxcError(f"the exported model fails the ONNX checker (an nnxc bug): {e}") from e
    finally:
        del model.graph.input[n_inputs:]
        del model.graph.initializer[:]


# -- onnxruntime's CPU kernels ------------------------------------------------------------

class OnnxKernelWarning(NnxcWarning):
    """The installed onnxruntime's CPU provider has no kernel for an op of an exported model."""


_LOW_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_KERNELS: dict[tuple, tuple[str, tuple]] = {}  # probe results, by onnxruntime version and signature


def low_precision_note(wrapped: dict) -> str:
    """``{"bf16": 12}`` -> the ``nnxc.low_precision`` text."""
    counts = ", ".join(f"{n} {t}" for t, n in sorted(wrapped.items()))
    types = "/".join(sorted(wrapped))
    return (f"{counts} node(s) computed in f32 and rounded back (onnxruntime's CPU provider has "
            f"no {types} kernel for them)")


def fit_kernels(model: onnx.ModelProto, initializers: list, opset: int) -> dict[str, int]:
    """Make each node run, and round like XLA, on onnxruntime's CPU provider.

    onnxruntime has no CPU kernel for most bf16 ops, and runs f16 ops it has no kernel for
    by casting whole chains of them to f32 (so an f16 intermediate never rounds or
    overflows, unlike XLA, which computes each f16 op in f32 and rounds its result). A
    node with f16/bf16 inputs and no native kernel becomes Cast -> f32 op -> Cast back,
    XLA's per-op upcast; a node onnxruntime still cannot run gets an ``OnnxKernelWarning``.
    ``initializers``: (name, array) of the values the model will hold, to type them.
    Returns how many nodes were computed in f32, by low-precision input type:
    ``{"bf16": 12}`` (empty when none).
    """
    types = _value_types(model, initializers)
    taken = set(types) | _node_names(model.graph)
    missing: dict[tuple, list] = {}
    wrapped: dict[str, int] = {}
    _fit_graph(model.graph, types, taken, opset, missing, wrapped)
    import onnxruntime as ort
    for (op, ins), nodes in missing.items():
        warnings.warn(
            f"onnxruntime {ort.__version__}'s CPU provider has no kernel for {op} on "
            f"{', '.join(_type_name(t) for t in ins if t)} (opset {opset}; {len(nodes)} node(s), "
            f"e.g. {nodes[0]!r}): the exported model will not run there", OnnxKernelWarning,
            stacklevel=3)
    return wrapped


def _type_name(t: int) -> str:
    from .builder import ONNX_DTYPE
    return next((k for k, v in ONNX_DTYPE.items() if v == t), TensorProto.DataType.Name(t))


def _value_types(model, initializers) -> dict[str, int]:
    """Element type of every value in the model and its subgraphs (ONNX type inference)."""
    n_inputs = len(model.graph.input)
    arrays = ((n, x if hasattr(x, "shape") and not str(x.dtype).startswith("key<") else host_array(x))
              for n, x in initializers)  # no copy of the weights: their dtype and shape suffice
    model.graph.input.extend(helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(np.dtype(a.dtype)), a.shape) for n, a in arrays)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    finally:
        del model.graph.input[n_inputs:]
    types: dict[str, int] = {}

    def collect(g):
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for node in g.node:
            for sub in _subgraphs(node):
                collect(sub)
    collect(inferred.graph)
    return types


def _subgraphs(node):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _node_names(g) -> set:
    names = set()
    for node in g.node:
        names.update([node.name, *node.output])
        for sub in _subgraphs(node):
            names |= _node_names(sub)
    return names


def _fit_graph(g, types: dict, taken: set, opset: int, missing: dict, wrapped: dict) -> None:
    nodes, wide = [], {}  # wide: low-float value -> its f32 Cast in this graph
    for node in g.node:
        subgraphs = list(_subgraphs(node))
        for sub in subgraphs:
            _fit_graph(sub, types, taken, opset, missing, wrapped)
        ins = tuple(types.get(n, 0) if n else None for n in node.input)
        outs = tuple(types.get(n, 0) for n in node.output)
        if subgraphs or node.domain not in ("", "ai.onnx") or node.op_type == "Cast" \
                or 0 in ins + outs:  # control flow and casts take every type; unknown types
            nodes.append(node)
            continue
        status, _ = _kernel(node, opset, ins)
        if node.op_type == "Transpose" and ins[0] in _LOW_FLOATS:
            # onnxruntime 1.32's CPU graph optimizer (level ALL) crashes loading an f16
            # Transpose that moves the leading axis and, through f16 elementwise ops, feeds
            # a Cast to f32 and a MatMul (fuzz seed 54737); in f32 it does not. Exact.
            status = "upcast"
        if status in ("upcast", "missing") and any(t in _LOW_FLOATS for t in ins):
            up = tuple(TensorProto.FLOAT if t in _LOW_FLOATS else t for t in ins)
            up_status, up_outs = _kernel(node, opset, up)
            if up_status == "native":
                nodes.extend(_upcast(node, ins, outs, up_outs, wide, taken))
                low = _type_name(max(t for t in ins if t in _LOW_FLOATS))
                wrapped[low] = wrapped.get(low, 0) + 1
                continue
        if status == "missing":
            missing.setdefault((node.op_type, ins), []).append(node.name)
        nodes.append(node)
    if len(nodes) != len(g.node):
        del g.node[:]
        g.node.extend(nodes)


def _upcast(node, ins, outs, up_outs, wide: dict, taken: set) -> list:
    """Cast -> f32 ``node`` -> Cast back: the f16/bf16 inputs of ``node`` as f32, and each
    output whose type changed back to its own type."""
    pre, post = [], []
    for i, (name, t) in enumerate(zip(node.input, ins)):
        if t in _LOW_FLOATS:
            if name not in wide:
                wide[name] = _fresh(taken, f"{name}.f32")
                pre.append(helper.make_node("Cast", [name], [wide[name]], to=TensorProto.FLOAT,
                                            name=_fresh(taken, f"{node.name}/in{i}.f32")))
            node.input[i] = wide[name]
    for i, (name, t, u) in enumerate(zip(node.output, outs, up_outs)):
        if t != u:
            node.output[i] = _fresh(taken, f"{name}.unrounded")
            post.append(helper.make_node("Cast", [node.output[i]], [name], to=t,
                                         name=_fresh(taken, f"{node.name}/out{i}")))
    for cast in pre + post:  # part of the node they widen
        cast.metadata_props.extend(node.metadata_props)
    return pre + [node] + post


def _kernel(node, opset: int, ins: tuple) -> tuple[str, tuple]:
    """How onnxruntime's CPU provider runs ``node.op_type`` on inputs of element types
    ``ins``: "native", "upcast" (only by casting to f32 around it), "missing", or
    "unknown" (the probe failed for another reason); and the output element types.
    Probed once per onnxruntime version and signature on a one-node model with the
    node's attributes (kernels are chosen by op, opset and types, not attributes)."""
    import onnxruntime as ort
    key = (ort.__version__, node.op_type, opset, ins)
    if key not in _KERNELS:
        _KERNELS[key] = _probe(node, opset, ins)
    return _KERNELS[key]


def _probe(node, opset: int, ins: tuple) -> tuple[str, tuple]:
    import onnxruntime as ort
    names = [f"x{i}" if t else "" for i, t in enumerate(ins)]
    outs = [f"y{i}" for i in range(len(node.output))]
    probe = helper.make_node(node.op_type, names, outs)
    probe.attribute.extend(node.attribute)
    inputs = [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, ins) if t]
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(helper.make_graph([probe], "probe", inputs, []), opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return "unknown", ()
    out_types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    if any(not out_types.get(n) for n in outs):
        return "unknown", ()
    out_types = tuple(out_types[n] for n in outs)
    model.graph.output.extend(helper.make_tensor_value_info(n, t, None) for n, t in zip(outs, out_types))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:  # the graph as onnxruntime will run it
        options.optimized_model_filepath = os.path.join(tmp, "probe.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several exception types
            text = str(e)  # no kernel for these types, or the op's schema does not take them
            if any(m in text for m in ("NOT_IMPLEMENTED", "Could not find an implementation", "Type Error")):
                return "missing", out_types
            return "unknown", out_types
        ran = onnx.load(options.optimized_model_filepath)
    if not any(n.op_type == node.op_type for n in ran.graph.node):
        return "expanded", out_types  # no kernel at this opset: its function body runs instead
    cast = any(n.op_type == "Cast" for n in ran.graph.node)  # inserted around a missing kernel
    return ("upcast" if cast else "native"), out_types
