"""Per-module totals: parameters and bytes by Variable type, FLOPs, node counts, top ops."""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np

from .graph import Graph, Node
from .types import TensorType, to_dtype

_ELEMENTWISE = frozenset("""
add sub mul div rem max min neg abs sign exp exp2 log log1p expm1 tanh logistic sqrt rsqrt cbrt
pow integer_pow erf erfc erf_inv sin cos tan atan2 square floor ceil round select_n clamp
eq ne lt le gt ge and or not xor nextafter is_finite
""".split())
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod argmax argmin cumsum "
                        "cumprod cummax cummin cumlogsumexp reduce_and reduce_or".split())


def _size(t: TensorType, dims: dict) -> int:
    from .params import eval_dim
    n = 1
    for d in t.shape:
        n *= d if isinstance(d, int) else int(eval_dim(d, dict(dims)))
    return n


def _trips(length, dims: dict) -> int:
    """A scan's length: an int, or a symbolic one (a scan over ``T``) at the sizes ``dims``."""
    if isinstance(length, int):
        return length
    from .params import decode_param
    return int(decode_param(length, dict(dims)))


def _dim(t: TensorType, i: int, dims: dict) -> int:
    from .params import eval_dim
    d = t.shape[i]
    return d if isinstance(d, int) else int(eval_dim(d, dict(dims)))


def _dot_flops(node: Node, dims: dict) -> int:
    (lhs_contract, _), _ = node.attrs["dimension_numbers"]
    k = math.prod(_dim(node.inputs[0].type, i, dims) for i in lhs_contract)
    return 2 * k * _size(node.outputs[0].type, dims)


def node_flops(node: Node, dims: dict) -> int:
    """Floating-point operations of one node (multiply-add = 2), regions included."""
    op = node.op
    if op == "nnxc.attention":  # q @ k^T and p @ v: 2 * (B*T*N*H*S) each
        q, k = node.inputs[0].type, node.inputs[1].type
        return 4 * _size(q, dims) * _dim(k, 1, dims)
    if op == "nnxc.linear":
        return _dot_flops(node, dims) + _size(node.outputs[0].type, dims)
    if op == "dot_general":
        return _dot_flops(node, dims)
    if op == "conv_general_dilated":
        rhs = node.inputs[1].type
        spec = node.attrs["dimension_numbers"].get("rhs_spec")
        out_feature = spec[0] if spec else 0
        per_out = _size(rhs, dims) // _dim(rhs, out_feature, dims)
        return 2 * per_out * _size(node.outputs[0].type, dims)
    if op == "scan":
        return node.attrs["length"] * sum(node_flops(n, dims) for n in node.regions[0].nodes)
    if op in ("while", "cond"):
        return max((sum(node_flops(n, dims) for n in r.nodes) for r in node.regions), default=0)
    if op in _ELEMENTWISE or op.startswith("nnxc."):
        return _size(node.outputs[0].type, dims) if node.outputs else 0
    if op in _REDUCTIONS:
        return _size(node.inputs[0].type, dims)
    return 0


def _top(path: str, depth: int) -> str:
    if not path:
        return "<top>"
    parts = path.split(".")
    # keep list indices with their container: blocks.3 is one module
    out, i = [], 0
    while i < len(parts) and len(out) < depth:
        part = parts[i]
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            part = f"{part}.{parts[i + 1]}"
            i += 1
        out.append(part)
        i += 1
    return ".".join(out)


def module_table(graph: Graph, dims: dict | None = None, depth: int = 1) -> list[dict]:
    """Rows per module path (to ``depth`` levels): params/bytes by kind, FLOPs, nodes, top ops."""
    dims = dict(dims or {})
    for v in graph.inputs:  # symbolic dims not given default to 1
        for d in v.type.shape:
            if isinstance(d, str):
                for s in re.findall(r"[A-Za-z_]\w*", d):
                    dims.setdefault(s, 1)
    rows: dict[str, dict] = defaultdict(lambda: {"params": Counter(), "bytes": Counter(),
                                                 "flops": 0, "nodes": 0, "ops": Counter()})
    for var in graph.variables:
        if var.meta.get("new"):
            continue
        row = rows[_top(var.path.rsplit(".", 1)[0] if "." in var.path else "", depth)]
        n = _size(var.value.type, dims)
        row["params"][var.kind] += n
        itemsize = 8 if var.value.type.dtype.startswith("key") else np.dtype(to_dtype(var.value.type.dtype)).itemsize
        row["bytes"][var.kind] += n * itemsize
    def visit(nodes, times: int):
        for node in nodes:
            row = rows[_top(node.path, depth)]
            row["nodes"] += 1
            row["ops"][node.op] += 1
            if node.regions:  # charge region bodies to their own modules (a scanned stack)
                trips = _trips(node.attrs["length"], dims) if node.op == "scan" else 1
                for region in node.regions[:1] if node.op == "scan" else node.regions:
                    visit(region.nodes, times * trips)
            else:
                row["flops"] += times * node_flops(node, dims)

    visit(graph.nodes, 1)
    classes = graph.meta.get("module_types") or {}
    out = []
    for path in sorted(rows):
        r = rows[path]
        out.append({"module": path, "class": classes.get(path, ""),
                    "params": dict(r["params"]), "bytes": dict(r["bytes"]),
                    "flops": r["flops"], "nodes": r["nodes"],
                    "top_ops": [op for op, _ in r["ops"].most_common(3)]})
    return out


def is_rng_state(kind: str) -> bool:
    """Whether variables of ``kind`` are RNG state (``RngKey``, ``RngCount``, subclasses of
    ``nnx.RngState``, Linen's ``rngs``): state, but not parameters of the model."""
    if kind in ("RngKey", "RngCount", "RngState", "rngs"):
        return True
    from flax import nnx

    from .kinds import variable_class
    return issubclass(variable_class(kind), nnx.RngState)


def format_module_table(rows: list[dict]) -> str:
    """The table ``nnxc ir --summary`` prints. Parameters and their bytes leave out RNG state
    (keys and counters), which a line under the table totals."""
    head = f"{'module':<36} {'params':>10} {'bytes':>10} {'FLOPs':>12} {'nodes':>6}  top ops"
    lines = [head, "-" * len(head)]
    total = {"params": 0, "bytes": 0, "flops": 0, "nodes": 0}
    rng: dict[str, list] = {}
    for r in rows:
        p = sum(n for k, n in r["params"].items() if not is_rng_state(k))
        b = sum(n for k, n in r["bytes"].items() if not is_rng_state(k))
        for k in r["params"]:
            if is_rng_state(k):
                counts = rng.setdefault(k, [0, 0])
                counts[0] += r["params"][k]
                counts[1] += r["bytes"].get(k, 0)
        total["params"] += p
        total["bytes"] += b
        total["flops"] += r["flops"]
        total["nodes"] += r["nodes"]
        name = f"{r['module']} ({r['class']})" if r.get("class") else r["module"]
        lines.append(f"{name:<36} {p:>10,} {_bytes(b):>10} {r['flops']:>12,} {r['nodes']:>6}  "
                     + ", ".join(r["top_ops"]))
    lines.append("-" * len(head))
    lines.append(f"{'total':<36} {total['params']:>10,} {_bytes(total['bytes']):>10} "
                 f"{total['flops']:>12,} {total['nodes']:>6}")
    if rng:
        lines.append("not counted: RNG state " + ", ".join(
            f"{k} {n:,} ({_bytes(b)})" for k, (n, b) in sorted(rng.items())))
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
