"""Opt-in lower precision for exported ONNX models, and how much accuracy it costs.

nnxc writes no quantizer of its own: the f32 model ``export_onnx`` emits is handed to
onnxruntime's tools, and what they return is measured against the model's own JAX output.

- ``int8 dynamic`` (transformers: MatMul without Conv): ``onnxruntime.quantization.
  quantize_dynamic``, signed int8 weights per output channel; activations are quantized to
  uint8 at run time (``DynamicQuantizeLinear -> MatMulInteger / ConvInteger``), Loop bodies
  included. Only MatMul and Conv are quantized: the tool maps an op named ``Attention`` to
  its own contrib op, which is not ai.onnx's ``Attention`` that nnxc emits at opset 23+,
  and quantizing embedding Gathers saves bytes, not time.
- ``int8 static`` (CNNs): ``quantize_static`` in QDQ format with MinMax calibration on the
  given inputs (or random draws): uint8 activations, int8 weights per output channel, on
  Conv, ConvTranspose, MatMul, Gemm and the ops between them that stay exact on quantized
  values (Relu, Clip, MaxPool, AveragePool), so onnxruntime fuses them into QLinear kernels
  (not inside Loop bodies: the tool does not enter them).
- Both first run ``quant_pre_process`` (see ``_pre_process``), whose constant folding makes
  the weights nnxc's export transposes or reshapes at run time quantizable.
- ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True``: weights and every float op in fp16, inputs and outputs f32 (the
  model's signature does not change; a Cast at each boundary). onnxruntime's CPU provider
  computes fp16 ops it has no fp16 kernel for (MatMul, Conv, Gemm on x86) in f32 chains.
- ``bf16`` is refused: onnxruntime's CPU provider has no bf16 kernel for MatMul, Gemm or
  Conv, so every op would run through Cast -> f32 -> Cast (slower than f32, and XLA's
  rounding only by emulation).

``accuracy`` compares the converted model in onnxruntime with the model's own JAX output
(the f32 reference) per output: max absolute error, that error relative to the output's
scale (max |ref|; an elementwise relative error means nothing at values near zero), and
top-1 agreement for outputs that look like classifier logits (float, last axis > 1). An
output passes when ``max |got - ref| <= TOLERANCE[kind] * max |ref|`` (integer outputs must
match exactly); ``rtol``/``atol`` replace that with ``|got - ref| <= atol + rtol * |ref|``
(``atol`` defaulting to ``rtol * max |ref|``), as ``nnxc.crosscheck`` reads them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile

import numpy as np

from ..errors import NnxcError, SpecError

QUANTIZE = ("int8",)
MODES = ("dynamic", "static")
PRECISIONS = ("fp16", "bf16")

# Allowed max |got - ref| / max |ref| per output. Measured on the bundled examples (8 random
# draws, README): fp16 errs by at most 1.7e-3 (fp16's epsilon is 9.8e-4), int8 dynamic by
# 3.2e-2 (the GPT; the others 1.6e-2), int8 static, calibrated on the same inputs, by 5.1e-2
# (the GPT; CNNs 2.2e-2). Each bound is about 3x (fp16 6x) the worst of them, room for deeper
# models; a wrong model errs by about 1 (its output's own scale), and fails every bound.
TOLERANCE = {"fp16": 1e-2, "int8 dynamic": 1e-1, "int8 static": 1.5e-1}

DYNAMIC_OPS = ("MatMul", "Conv")
STATIC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Relu", "Clip", "MaxPool", "AveragePool")
CONV_OPS = ("Conv", "ConvTranspose")
SAMPLES = 8  # random draws for calibration and the accuracy table


def kind_of(quantize: str | None, mode: str | None, precision: str | None) -> str:
    """``"int8 dynamic"``, ``"int8 static"`` or ``"fp16"``: the key of ``TOLERANCE``."""
    return f"{quantize} {mode}" if quantize else precision


_FLAGS = {"quantize": "--quantize", "mode": "--quantize-mode", "precision": "--precision",
          "weights_as_inputs": "--weights-as-inputs", "external_data": "--external-data"}


def check_options(quantize=None, mode=None, precision=None, *, weights_as_inputs: bool = False,
                  external_data=None, flags: bool = False) -> None:
    """Refuse (SpecError) a combination that cannot be honoured, before any work.

    ``flags``: name the CLI's options (``--quantize int8``) in messages rather than the
    keyword arguments (``quantize='int8'``)."""
    def opt(key, value=None):
        if flags:
            return _FLAGS[key] + ("" if value is None else f" {value}")
        return key + ("" if value is None else f"={value!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise SpecError(f"{opt('quantize', quantize)}: nnxc quantizes to {', '.join(QUANTIZE)} only")
    if mode is not None and mode not in MODES:
        raise SpecError(f"{opt('mode', mode)}: choose {' or '.join(MODES)}")
    if precision is not None and precision not in PRECISIONS:
        raise SpecError(f"{opt('precision', precision)}: choose from {', '.join(PRECISIONS)}")
    if mode is not None and quantize is None:
        raise SpecError(f"{opt('mode')} needs {opt('quantize', 'int8')}")
    if quantize is not None and precision is not None:
        raise SpecError(f"{opt('quantize')} and {opt('precision')} exclude each other: int8 "
                        "quantization leaves the ops it does not quantize in f32")
    if quantize is None and precision is None:
        raise SpecError(f"give {opt('quantize', 'int8')} or {opt('precision', 'fp16')}")
    if precision == "bf16":
        raise SpecError(bf16_refusal())
    what = opt("quantize") if quantize else opt("precision")
    if weights_as_inputs:
        raise SpecError(f"{what} converts the weights inside the model, and "
                        f"{opt('weights_as_inputs')} leaves none in it")
    if external_data:
        raise SpecError(f"{what} writes one self-contained model file (under 2 GB); "
                        f"{opt('external_data')} is not supported with it")


def bf16_refusal() -> str:
    """Why bf16 is refused, from the installed onnxruntime's CPU kernels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ..backends.onnx.export import _kernel
    from ..backends.onnx.native import default_opset
    opset, bf16 = default_opset(), TensorProto.BFLOAT16
    probes = {"MatMul": 2, "Gemm": 3, "Conv": 2}
    missing = [op for op, n in probes.items()
               if _kernel(helper.make_node(op, [f"x{i}" for i in range(n)], ["y"]), opset,
                          (bf16,) * n)[0] != "native"]
    if missing:
        ops = ", ".join(missing[:-1]) + (" or " if len(missing) > 1 else "") + missing[-1]
        why = (f"onnxruntime {ort.__version__}'s CPU provider has no bf16 kernel for {ops}, so "
               "every op would run as Cast -> f32 -> Cast (slower than f32)")
    else:
        why = "nnxc has no bf16 converter yet"
    return f"bf16 export is not supported: {why}; use fp16 or int8 instead"


def default_mode(model) -> str:
    """``static`` for a model with a convolution (a CNN), else ``dynamic`` (transformers, MLPs)."""
    from .onnx_io import op_types
    return "static" if any(op in CONV_OPS for op in op_types(model.graph)) else "dynamic"


def weight_summary(model) -> str:
    """``13 i8 (40.1 KiB), 2 f32 (32.0 KiB)``: the model's weight matrices and kernels
    (initializers with two or more axes longer than 1) by element type, so what the tools
    left unconverted shows."""
    from onnx import TensorProto
    from ..backends.onnx.export import _type_name
    counts: dict = {}
    for t in model.graph.initializer:
        if sum(d > 1 for d in t.dims) >= 2:
            n, size = counts.get(t.data_type, (0, 0))
            counts[t.data_type] = (n + 1, size + int(np.prod(t.dims)) * _itemsize(t.data_type))
    order = [TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT16, TensorProto.FLOAT]
    keys = sorted(counts, key=lambda k: order.index(k) if k in order else len(order))
    return ", ".join(f"{counts[k][0]} {_type_name(k)} ({counts[k][1] / 1024:.1f} KiB)" for k in keys) \
        or "none"


def _itemsize(data_type: int) -> int:
    import onnx
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0


def describe(quantize: str | None, mode: str | None, precision: str | None) -> str:
    if quantize:
        return (f"int8 {mode} (per-channel int8 weights, "
                + ("uint8 activations quantized at run time)" if mode == "dynamic"
                   else "calibrated uint8 activations, QDQ)"))
    return "fp16 (weights and compute; f32 inputs and outputs)"


# -- conversion with onnxruntime's tools ---------------------------------------------------

@contextlib.contextmanager
def _quiet_tools():
    """onnxruntime's quantization tools log through the root logger ("Please consider
    pre-processing", shapes they cannot infer) and its sessions through onnxruntime's
    logger: keep both to errors while they run."""
    import logging

    import onnxruntime as ort
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        logging.disable(before)


def convert_onnx(model, *, quantize: str | None = None, mode: str | None = None,
                 precision: str | None = None, calibration: list | None = None):
    """An f32 ``onnx.ModelProto`` -> ``(converted model, mode)`` (see the module docstring).

    ``mode``: ``dynamic`` or ``static`` for ``quantize="int8"`` (default: ``default_mode``).
    ``calibration``: for static int8, a list of feeds ``{input name: array}``."""
    import onnx
    check_options(quantize, mode, precision)
    if quantize:
        mode = mode or default_mode(model)
        if mode == "static" and not calibration:
            raise NnxcError("static int8 quantization needs calibration inputs")
    tool = ("quantize_dynamic" if mode == "dynamic" else "quantize_static") if quantize \
        else "convert_float_to_float16"
    try:
        with _quiet_tools():
            out = _run_tool(model, quantize, mode, calibration)
    except NnxcError:
        raise
    except Exception as e:  # noqa: BLE001 - the tools raise many kinds of errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NnxcError(f"onnxruntime's {tool} failed on this model: {type(e).__name__}: {first}") from e
    _sort_nodes(out.graph)  # the float16 converter appends its boundary Casts at the end
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise NnxcError(f"the model onnxruntime's {tool} returned fails the ONNX checker: {first}") from e
    props = {p.key: p.value for p in model.metadata_props}
    props.update({p.key: p.value for p in out.metadata_props})
    props["nnxc.precision"] = describe(quantize, mode, precision)
    props["nnxc.precision_tool"] = f"onnxruntime {_ort_version()} {tool}"
    del out.metadata_props[:]
    onnx.helper.set_model_props(out, props)
    if not out.producer_name:
        out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out, mode


def _sort_nodes(graph) -> None:
    """Put ``graph``'s nodes in topological order (a node after the producers of what it and
    its subgraphs read), keeping the given order where it already is one."""
    nodes = list(graph.node)
    producer = {name: i for i, n in enumerate(nodes) for name in n.output if name}
    deps = [sorted({producer[x] for x in set(n.input) | _read_in_subgraphs(n) if x in producer} - {i})
            for i, n in enumerate(nodes)]
    state, order = [0] * len(nodes), []
    for start in range(len(nodes)):
        if state[start]:
            continue
        state[start] = 1
        stack = [(start, iter(deps[start]))]
        while stack:
            i, pending = stack[-1]
            nxt = next((k for k in pending if not state[k]), None)
            if nxt is None:
                state[i] = 2
                order.append(i)
                stack.pop()
            else:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _read_in_subgraphs(node) -> set:
    from .onnx_io import subgraphs
    names = set()
    for sub in subgraphs(node):
        names |= {o.name for o in sub.output}
        for n in sub.node:
            names |= set(n.input) | _read_in_subgraphs(n)
    return names


def load_session(model, what: str):
    """An onnxruntime session of the converted model (NnxcError when onnxruntime refuses it)."""
    from .onnx_io import onnx_session
    try:
        return onnx_session(model)
    except NnxcError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime refuses a model with several types
        raise NnxcError(f"onnxruntime cannot load the {what} model: "
                        f"{(str(e).strip().splitlines() or [''])[0]}") from e


def _ort_version() -> str:
    import onnxruntime as ort
    return ort.__version__


def _run_tool(model, quantize, mode, calibration):
    import onnx

    from .onnx_io import op_types
    if not quantize:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        blocked = fp16_block_list(model)
        inside = sorted(_op_types_in_subgraphs(model.graph) & set(blocked))
        if inside:  # the converter would put their Casts in the main graph, out of scope
            raise NnxcError(f"onnxruntime's float16 converter keeps {', '.join(inside)} in f32 and "
                            "cannot do so inside a Loop/Scan/If body, where this model has it")
        return convert_float_to_float16(_copy(model), keep_io_types=True, op_block_list=blocked)
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory(prefix="nnxc-quantize-") as tmp:
        src = _pre_process(model, tmp)
        out = os.path.join(tmp, "quantized.onnx")
        if mode == "dynamic":
            ops = [op for op in DYNAMIC_OPS if op in op_types(src.graph)]
            quantize_dynamic(src, out, op_types_to_quantize=ops or list(DYNAMIC_OPS),
                             per_channel=True, weight_type=QuantType.QInt8,
                             extra_options={"EnableSubgraph": True})  # Loop bodies too
        else:
            _quantize_static(src, out, calibration)
        result = onnx.load(out)
    _restore_node_metadata(model, result)
    return result


def _quantize_static(model, out: str, calibration: list) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    options = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
                   per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    try:
        quantize_static(_copy(model), out, _Feeds(calibration), **options)
    except ValueError as e:
        # onnxruntime's guard against int32 bias overflow (it raises a weight's scale where
        # input scale x weight scale is too small for the bias) fails on a per-channel weight
        # whose bias is 2-D, as Gemm's is after quant_pre_process: quantize without it
        if "truth value of an array" not in str(e):
            raise
        quantize_static(_copy(model), out, _Feeds(calibration), **options,
                        extra_options={"QDQDisableWeightAdjustForInt32Bias": True})


def _pre_process(model, tmp: str):
    """onnxruntime's ``quant_pre_process`` (its basic graph optimizations, ONNX shape
    inference; symbolic shape inference, which needs sympy, skipped): constant folding turns
    weights that nnxc's export reshapes or transposes at run time (Conv kernels from HWIO,
    attention projections from [d, heads, head_dim]) into initializers the quantizers can
    quantize. The weights it folds are named ``<variable path>.folded``, as nnxc's own
    folding names them. If it fails, the model is quantized as exported (with a warning)."""
    import warnings

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..errors import NnxcWarning
    src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "pre_processed.onnx")
    onnx.save(model, src)
    try:
        quant_pre_process(src, dst, skip_symbolic_shape=True)
        pre = onnx.load(dst)
    except Exception as e:  # noqa: BLE001 - an optimization; the quantizers run without it
        warnings.warn(f"onnxruntime's quant_pre_process failed ({type(e).__name__}: "
                      f"{(str(e).strip().splitlines() or [''])[0]}); quantizing the model as "
                      "exported, whose run-time reshaped weights stay f32", NnxcWarning, stacklevel=4)
        return model
    _name_folded(model, pre)
    return pre


def _name_folded(model, pre) -> None:
    """Rename the initializers constant folding made in ``pre`` (named after the value they
    replace, ``v167``) to ``<path>.folded``, ``<path>`` being the largest initializer of
    ``model`` they were computed from (the weight; the others are shapes)."""
    import onnx
    before = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output if o}
    taken = _all_names(pre.graph)
    renames = {}
    for t in pre.graph.initializer:
        if t.name in before or t.name not in producer:
            continue
        seen, stack, best = set(), [t.name], None
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in before:
                if best is None or before[name] > before[best]:
                    best = name
            elif name in producer:
                stack.extend(x for x in producer[name].input if x)
        if best is None:
            continue
        new, i = f"{best}.folded", 1
        while new in taken:
            new, i = f"{best}.folded.{i}", i + 1
        taken.add(new)
        renames[t.name] = new
    if not renames:
        return
    for t in pre.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for v in list(pre.graph.value_info) + list(pre.graph.input) + list(pre.graph.output):
        v.name = renames.get(v.name, v.name)
    _rename_reads(pre.graph, renames, onnx)


def _rename_reads(g, renames: dict, onnx) -> None:
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else \
                list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
            for sub in subs:  # bodies read outer values by name
                _rename_reads(sub, renames, onnx)
                for o in sub.output:
                    o.name = renames.get(o.name, o.name)


def _all_names(g) -> set:
    names = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
    for node in g.node:
        names |= set(node.output) | set(node.input)
    return names


def _restore_node_metadata(model, result) -> None:
    """Nodes the tools kept (by name) get back their ``metadata_props`` (module path, class,
    source line), which onnxruntime's optimizer drops."""
    meta = {n.name: n.metadata_props for n in model.graph.node if n.name and n.metadata_props}
    for node in result.graph.node:
        if not node.metadata_props and node.name in meta:
            node.metadata_props.extend(meta[node.name])


def fp16_block_list(model) -> list[str]:
    """The ops of the float16 converter's default block list that must stay f32 at the
    model's opset: those whose ONNX schema takes no fp16 (Range; the ai.onnx.ml ops). The
    others (Min, Max, TopK, CumSum, ...) take fp16, and onnxruntime itself runs the ones its
    CPU provider has no fp16 kernel for in f32; blocking them would put Casts in the graph
    (and, inside a Loop body, out of scope: the converter adds them to the main graph)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    blocked = []
    for op in DEFAULT_OP_BLOCK_LIST:
        try:
            schema = onnx.defs.get_schema(op, opset, "")
        except onnx.defs.SchemaError:  # ai.onnx.ml, or not at this opset
            blocked.append(op)
            continue
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        for i in schema.inputs:
            types = allowed.get(i.type_str, {i.type_str})
            if "tensor(float)" in types and "tensor(float16)" not in types:
                blocked.append(op)
                break
    return blocked


def _op_types_in_subgraphs(g) -> set:
    from .onnx_io import op_types, subgraphs
    return set().union(*(op_types(sub) for node in g.node for sub in subgraphs(node)))


def _copy(model):
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _feeds_reader():
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        """The calibration feeds, one ``{input name: array}`` per call of ``get_next``."""

        def __init__(self, feeds: list):
            self.feeds = list(feeds)
            self.at = 0

        def get_next(self):
            if self.at >= len(self.feeds):
                return None
            self.at += 1
            return self.feeds[self.at - 1]

        def __len__(self):
            return len(self.feeds)

        def set_range(self, start_index: int, end_index: int):  # CalibStridedMinMax
            self.feeds, self.at = self.feeds[start_index:end_index], 0

    return Feeds


def _Feeds(feeds):  # noqa: N802 - a class made on first use (onnxruntime.quantization is slow to import)
    return _feeds_reader()(feeds)


# -- inputs ----------------------------------------------------------------------------------

def sample_inputs(graph, data=None, samples: int = SAMPLES, seed: int = 0, sizes=(1, 3)):
    """``(list of flat input lists, description)``: the given ``data`` (flat arrays, in graph
    input order) as one batch, else ``samples`` random draws from the input specs (seeds
    ``seed``, ``seed + 1``, ...; symbolic dims cycling through ``sizes``)."""
    from .check import symbols
    from .crosscheck import random_inputs
    if data is not None:
        return [list(data)], "the given inputs"
    if samples < 1:
        raise SpecError(f"samples={samples}: need at least one random draw")
    sizes = list(sizes) if symbols(graph) else [1]
    draws = [random_inputs(graph, sizes[i % len(sizes)], seed + i) for i in range(samples)]
    dims = f", symbolic dims at {', '.join(map(str, sizes))}" if symbols(graph) else ""
    return draws, f"{samples} random draw{'s' if samples != 1 else ''} (seed {seed}{dims})"


def feeds(model, inputs: list) -> list[dict]:
    """Flat input lists -> onnxruntime feeds ``{input name: array}`` for ``model``."""
    from .crosscheck import host
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    return [dict(zip(names, (host(x) for x in flat))) for flat in inputs]


# -- the accuracy table ----------------------------------------------------------------------

@dataclasses.dataclass
class AccuracyReport:
    """Per output of the converted model against the model's own f32 JAX output: rows of
    ``{output, abs, rel, scale, top1, top1_n, ok, note}`` (``rel`` = ``abs / scale``,
    ``scale`` = max |ref|, ``top1`` the agreeing rows of ``top1_n``, or None)."""

    what: str
    inputs: str
    tolerance: str
    rows: list = dataclasses.field(default_factory=list)
    calibrated: bool = False  # static int8: calibrated on these same inputs

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)

    def failures(self) -> list:
        return [r for r in self.rows if not r["ok"]]

    def __str__(self) -> str:
        lines = [f"accuracy of {self.what}",
                 f"against the f32 model (its own JAX output) on {self.inputs}"
                 + (" (also its calibration inputs)" if self.calibrated else ""),
                 f"pass: {self.tolerance}; rel = max abs err / max|ref|"]
        width = max([24] + [len(r["output"]) for r in self.rows])
        head = (f"{'output':<{width}} {'max abs err':>12} {'max rel err':>12} {'max|ref|':>10} "
                f"{'top-1 agree':>20}  ok")
        lines += [head, "-" * len(head)]
        for r in self.rows:
            top1 = "" if r["top1"] is None else \
                f"{100 * r['top1'] / r['top1_n']:.1f}% ({r['top1']}/{r['top1_n']})"
            rel = "" if r["rel"] is None else f"{r['rel']:.3g}"
            scale = "" if r["scale"] is None else f"{r['scale']:.4g}"
            lines.append(f"{r['output']:<{width}} {r['abs']:>12.3g} {rel:>12} {scale:>10} "
                         f"{top1:>20}  {'✓' if r['ok'] else '✗'} {r['note']}".rstrip())
        return "\n".join(lines)


def tolerance_text(kind: str, rtol=None, atol=None) -> str:
    if rtol is None and atol is None:
        return f"max abs err <= {TOLERANCE[kind]:g} x max|ref| ({kind}); integer outputs exact"
    r = 0.0 if rtol is None else rtol
    a = f"{atol:g}" if atol is not None else f"{r:g} x max|ref|"
    return f"|err| <= {a} + {r:g} x |ref| (given --rtol/--atol); integer outputs exact"


def accuracy(graph, model, inputs: list, *, kind: str, what: str | None = None,
             described: str = "the given inputs", rtol=None, atol=None,
             calibrated: bool = False, session=None) -> AccuracyReport:
    """Run ``model`` (the converted ONNX; or its ``session``) in onnxruntime and the graph's
    reference (the model's own jitted function; XLA for a graph without one) on each flat
    input list of ``inputs``; compare per output (see the module docstring)."""
    import jax

    from ..backends.onnx.export import output_names
    from .check import call_args
    from .crosscheck import host
    if session is None:
        session = load_session(model, what or kind)
    reference = graph.meta.get("reference")
    if reference is None:
        from ..backends.xla.compile import compile as xla_compile
        exe = xla_compile(graph)

        def reference(*a, **k):
            return exe.apply(exe.state, *a, **k)[0]
    names = output_names(graph)
    acc = [_Acc(n) for n in names]
    for flat, feed in zip(inputs, feeds(model, inputs)):
        pos, kwa = call_args(graph, flat)
        ref = [host(x) for x in jax.tree_util.tree_leaves(reference(*pos, **kwa))]
        got = session.run(None, feed)[:len(names)]
        for a, r, g in zip(acc, ref, got):
            a.add(r, g, rtol)
    report = AccuracyReport(what or kind, described, tolerance_text(kind, rtol, atol),
                            calibrated=calibrated)
    report.rows = [a.row(TOLERANCE[kind], rtol, atol) for a in acc]
    return report


class _Acc:
    """One output's errors accumulated over the input draws."""

    def __init__(self, name: str):
        self.name = name
        self.abs = 0.0
        self.excess = -np.inf  # max(|d| - rtol |ref|): the atol an elementwise rule needs
        self.scale = 0.0
        self.top1 = self.top1_n = 0
        self.logits = True
        self.integer = False
        self.note = ""

    def add(self, ref, got, rtol) -> None:
        ref, got = np.asarray(ref), np.asarray(got)
        if np.iscomplexobj(ref):  # ONNX carries complex values as [..., 2] real pairs
            ref = np.stack([ref.real, ref.imag], -1)
            self.logits = False
        if ref.shape != got.shape:
            self.note, self.abs = f"shape {got.shape} != {ref.shape}", float("inf")
            return
        if ref.dtype.kind not in "fc":
            self.integer, self.logits = True, False
            self.abs += float(np.sum(ref != got))
            return
        r, g = ref.astype(np.float64), got.astype(np.float64)
        d = np.where((np.isnan(r) & np.isnan(g)) | (r == g), 0.0, np.abs(r - g))
        d = np.where(np.isnan(d), np.inf, d)
        if d.size:
            self.abs = max(self.abs, float(d.max()))
            self.excess = max(self.excess, float(np.max(d - (rtol or 0.0) * np.abs(r))))
            finite = np.abs(r[np.isfinite(r)])
            self.scale = max(self.scale, float(finite.max()) if finite.size else 0.0)
        if self.logits and ref.ndim >= 1 and ref.shape[-1] > 1 and ref.size:
            self.top1 += int(np.sum(np.argmax(r, -1) == np.argmax(g, -1)))
            self.top1_n += ref.size // ref.shape[-1]
        elif ref.ndim == 0 or ref.shape[-1] <= 1:
            self.logits = False

    def row(self, tol: float, rtol, atol) -> dict:
        if self.integer or self.note:
            ok = self.abs == 0 and not self.note
            return {"output": self.name, "abs": self.abs, "rel": None, "scale": None, "top1": None,
                    "top1_n": 0, "ok": ok, "note": self.note or ("" if ok else "values differ")}
        scale = self.scale if self.scale else 1.0
        if rtol is None and atol is None:
            ok = self.abs <= tol * scale
        else:
            ok = self.excess <= (atol if atol is not None else (rtol or 0.0) * scale)
        top1 = self.top1 if self.logits and self.top1_n else None
        return {"output": self.name, "abs": self.abs, "rel": self.abs / scale, "scale": self.scale,
                "top1": top1, "top1_n": self.top1_n, "ok": bool(ok), "note": self.note}


# -- the Python API --------------------------------------------------------------------------

@dataclasses.dataclass
class LowPrecisionExport:
    """What ``nnxc.quantize_onnx`` returns: the converted model, its kind and mode, and the
    accuracy table (``print(result.accuracy)``; ``result.accuracy.ok``)."""

    model: object  # onnx.ModelProto
    kind: str  # "int8 dynamic", "int8 static" or "fp16"
    accuracy: AccuracyReport
    path: str | None = None


def quantize_onnx(graph, path=None, *, quantize: str | None = None, mode: str | None = None,
                  precision: str | None = None, inputs=None, samples: int = SAMPLES,
                  seed: int = 0, sizes=(1, 3), opset: int | None = None, rtol=None,
                  atol=None) -> LowPrecisionExport:
    """Export ``graph`` to ONNX in lower precision; write it to ``path`` (atomically) if given.

    ``quantize="int8"`` (``mode`` ``"dynamic"`` or ``"static"``; default static for a model
    with a convolution, else dynamic) or ``precision="fp16"``, exactly one of them (see
    ``nnxc.runtime.quantize``). ``inputs``: flat input arrays in graph input order (the
    calibration data of static int8 and the data of the accuracy table), else ``samples``
    random draws with ``seed`` (symbolic dims at ``sizes``). ``rtol``/``atol``: replace the
    stated tolerance of ``accuracy.ok``. ``opset``: as ``export_onnx`` takes it.
    """
    from .._files import atomic_write
    from ..backends.onnx.export import export_onnx
    check_options(quantize, mode, precision)
    if inputs is not None:
        import jax
        inputs = list(jax.tree_util.tree_leaves(inputs))
    draws, described = sample_inputs(graph, inputs, samples, seed, sizes)
    f32 = export_onnx(graph, None, opset=opset)
    guard_size(f32)
    mode = (mode or default_mode(f32)) if quantize else None
    model, mode = convert_onnx(f32, quantize=quantize, mode=mode, precision=precision,
                               calibration=feeds(f32, draws) if mode == "static" else None)
    kind, what = kind_of(quantize, mode, precision), describe(quantize, mode, precision)
    session = load_session(model, what)  # before anything is written
    if path is not None:
        atomic_write(path, model.SerializeToString())
    report = accuracy(graph, model, draws, kind=kind, what=what, described=described, rtol=rtol,
                      atol=atol, calibrated=mode == "static", session=session)
    return LowPrecisionExport(model, kind, report, None if path is None else os.fspath(path))


def guard_size(model) -> None:
    """The tools serialize the model in one protobuf: refuse one over 2 GB up front."""
    from ..backends.onnx.save import PROTO_LIMIT
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    if total > PROTO_LIMIT:
        raise NnxcError(f"the weights take {total / 2**30:.2f} GiB: quantization and fp16 "
                        "conversion support models under protobuf's 2 GB limit")
