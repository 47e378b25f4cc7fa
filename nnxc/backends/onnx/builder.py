"""The one builder every ONNX rule emits through: ``b.op("MatMul", x, w)`` -> output name.

A ``Context`` is shared by the main graph's builder and the builders of its subgraphs
(Loop / If bodies): it hands out unique names, collects initializers (deduplicating small
constants), model-local functions, and the "prelude" -- nodes at the start of the main
graph that compute symbolic dims (``B``, ``2*B``) from the shapes of the graph inputs, so
every subgraph can refer to them.
"""
from __future__ import annotations

import operator

import numpy as np
from onnx import TensorProto, helper

from ...ir.attrs import SymDim
from ...ir.graph import Elided, Value
from ...ir.types import DimError, DimOps, TensorType, parse_dim
from .table import Refused

ONNX_DTYPE = {
    "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
    "f64": TensorProto.DOUBLE, "i8": TensorProto.INT8, "i16": TensorProto.INT16,
    "i32": TensorProto.INT32, "i64": TensorProto.INT64, "u8": TensorProto.UINT8,
    "u16": TensorProto.UINT16, "u32": TensorProto.UINT32, "u64": TensorProto.UINT64,
    "bool": TensorProto.BOOL, "c64": TensorProto.COMPLEX64, "c128": TensorProto.COMPLEX128,
    "f8e4m3fn": TensorProto.FLOAT8E4M3FN, "f8e5m2": TensorProto.FLOAT8E5M2,
}
# dtypes onnxruntime's Where does not take, and the type to select them in (casts round-trip)
_WHERE_VIA = {"bool": "u8", "i16": "i32", "u16": "i32", "u64": "i64", "bf16": "f32"}
SMALL = 64  # constants up to this many elements are deduplicated by content


def onnx_dtype(dtype: str) -> int:
    """ONNX element type of an IR dtype; a threefry key is its uint32 pair."""
    if dtype == "key<fry>":
        return TensorProto.UINT32
    if dtype not in ONNX_DTYPE:
        raise Refused(f"dtype {dtype} has no ONNX equivalent here")
    return ONNX_DTYPE[dtype]


def onnx_dims(t: TensorType) -> list:
    return list(t.shape) + ([2] if t.dtype == "key<fry>" else [])


def value_info(name: str, t: TensorType):
    return helper.make_tensor_value_info(name, onnx_dtype(t.dtype), onnx_dims(t))


def as_dim(d) -> int | str:
    """A dim, axis or index as a Python int or a symbolic expression string. Attribute values
    carry symbolic dims as ``SymDim`` (a tuple, which numpy would read as a nested
    sequence) and integers as numpy scalars."""
    if isinstance(d, SymDim):
        d = d.expr
    if isinstance(d, str):
        return int(d) if d.lstrip("-").isdigit() else d
    if isinstance(d, (float, tuple, list)) or not hasattr(d, "__index__"):
        raise TypeError(f"expected an integer or a symbolic dim, got {d!r}")
    return operator.index(d)


def host_array(x) -> np.ndarray:
    """A constant or variable as a numpy array (PRNG keys as their uint32 data)."""
    if isinstance(x, Elided):
        raise Refused(f"a constant was elided in the IR text (hash {x.digest}); it has no data")
    if hasattr(x, "dtype") and str(x.dtype).startswith("key<"):
        import jax
        x = jax.random.key_data(x)
    return np.asarray(x)


class Context:
    """State shared by all builders of one export."""

    def __init__(self, opset: int):
        self.opset = opset
        self.taken: set[str] = set()
        self.count = 0
        self.nodes_made = 0
        self.initializers: list[tuple[str, object]] = []  # (name, array) in creation order
        self.small: dict[tuple, str] = {}
        self.big: dict[int, str] = {}  # id(IR const Value) -> initializer name
        self.functions: dict[str, object] = {}  # model-local FunctionProtos by name
        self.dim_sources: dict[str, tuple[str, int]] = {}  # symbol -> (input name, axis)
        self.dims: dict = {}
        self.path = ""  # module path of the IR node being lowered (names ONNX nodes)
        self.loc: str | None = None  # its source location
        # (module path, loc) -> metadata_props pairs for the nodes lowered from it (set by
        # export_onnx: ``namespace``, ``nnxc.class``, ``nnxc.loc``); None: no metadata
        self.node_meta = None
        self._meta_cache: dict = {}
        self.failures: list[tuple] = []  # (op, module path, source loc, reason)
        self.needs_opset: int | None = None  # the newest opset a refusal asked for
        self.refused_outright = False  # a refusal no opset would lift
        self.exact_needs_newer = False  # the default opset: a rule that is exact only at a newer
        # opset asks for it (need(...)) instead of lowering approximately
        self.live = None  # ids of the IR nodes whose results are used (None: emit every node)
        self.pre = Builder(self)  # the prelude: symbolic dims, at the start of the main graph

    def reserve(self, name: str) -> str:
        """Claim ``name`` (suffixing it if taken) for an input, variable or output."""
        base, i = name, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def metadata(self, path: str, loc: str | None) -> tuple:
        """The ``metadata_props`` pairs of a node lowered from module ``path`` at ``loc``."""
        if self.node_meta is None:
            return ()
        key = (path, loc)
        pairs = self._meta_cache.get(key)
        if pairs is None:
            pairs = self._meta_cache[key] = tuple(self.node_meta(path, loc))
        return pairs

    def fresh(self, hint: str = "v") -> str:
        while True:
            name = f"{hint}{self.count}"
            self.count += 1
            if name not in self.taken:
                self.taken.add(name)
                return name


class Builder:
    """Emits ONNX nodes into one graph (the main graph or a subgraph body)."""

    def __init__(self, ctx: Context, parent: "Builder | None" = None):
        self.ctx = ctx
        self.parent = parent
        self.nodes: list = []
        self.env: dict[Value, str] = {}  # IR value -> ONNX name

    @property
    def opset(self) -> int:
        return self.ctx.opset

    def sub(self) -> "Builder":
        return Builder(self.ctx, self)

    # -- values ------------------------------------------------------------------
    def lookup(self, v: Value) -> str | None:
        b = self
        while b is not None:
            name = b.env.get(v)
            if name is not None:
                return name
            b = b.parent
        return None

    def value(self, v: Value) -> str:
        name = self.lookup(v)
        if name is not None:
            return name
        if v.data is None:
            raise KeyError(f"IR value {v} has no ONNX name (used before it is defined)")
        if v.type.rank:  # a graph-level constant: one initializer however often it is used
            name = self.ctx.big.get(id(v))
            if name is None:
                if v.name:  # a frozen or folded variable keeps its path as its name
                    name = self.ctx.reserve(v.name)
                    self.ctx.initializers.append((name, np.asarray(host_array(v.data))))
                else:
                    name = self.const(host_array(v.data))
                self.ctx.big[id(v)] = name
            return name
        return self.const(host_array(v.data))

    def const(self, x, dtype=None) -> str:
        """An initializer holding ``x``; small ones are shared by content."""
        a = np.asarray(x, dtype=dtype)
        key = None
        if a.size <= SMALL:
            key = (a.dtype.str, a.shape, a.tobytes())
            name = self.ctx.small.get(key)
            if name is not None:
                return name
        name = self.ctx.fresh("c")
        self.ctx.initializers.append((name, a))
        if key is not None:
            self.ctx.small[key] = name
        return name

    def i64(self, *values) -> str:
        """A 1-D int64 constant (axes, shapes, starts); symbolic dims make it a shape tensor."""
        dims = [as_dim(v) for v in values]
        if any(isinstance(d, str) for d in dims):
            return self.shape(dims)
        return self.const(np.asarray(dims, dtype=np.int64).reshape(-1))

    def scalar(self, value, dtype: str) -> str:
        from ...ir.types import to_dtype
        return self.const(np.asarray(value, dtype=to_dtype(dtype)))

    # -- nodes -------------------------------------------------------------------
    def op(self, op_type: str, *inputs, outs: int = 1, domain: str = "", **attrs):
        ins = []
        for x in inputs:
            if x is None:
                ins.append("")
            elif isinstance(x, str):
                ins.append(x)
            else:
                ins.append(self.const(x))
        names = [self.ctx.fresh() for _ in range(outs)]
        ctx = self.ctx
        ctx.nodes_made += 1
        node_name = f"{ctx.path}/{op_type}_{ctx.nodes_made}" if ctx.path else f"{op_type}_{ctx.nodes_made}"
        node = helper.make_node(op_type, ins, names, name=node_name, domain=domain or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        # the prelude (symbolic dims) belongs to the graph, not to the node that needed it
        pairs = ctx.metadata("", None) if self is ctx.pre else ctx.metadata(ctx.path, ctx.loc)
        for key, value in pairs:
            node.metadata_props.add(key=key, value=value)
        self.nodes.append(node)
        return names[0] if outs == 1 else names

    def emit(self, nodes) -> None:
        """Lower IR nodes in order; refusals are collected in ``ctx.failures``, not raised."""
        from .table import ONNX_RULES
        ctx = self.ctx
        outer = ctx.path, ctx.loc  # a region body: the node holding it continues after
        for node in nodes:
            if ctx.live is not None and id(node) not in ctx.live:
                continue  # dead code: nothing reads it (onnxruntime fails on some dead Loops)
            ctx.path, ctx.loc = node.path, node.loc
            fn = ONNX_RULES.get(node.op)
            outs = None
            if fn is None:
                ctx.failures.append((node.op, node.path, node.loc,
                                     f"no ONNX rule (exporting at opset {ctx.opset})"))
            else:
                try:
                    outs = fn(self, node, [self.value(v) for v in node.inputs])
                except Refused as e:
                    ctx.failures.append((node.op, node.path, node.loc, str(e)))
                    if e.opset is not None:
                        ctx.needs_opset = max(ctx.needs_opset or 0, e.opset)
                    else:
                        ctx.refused_outright = True
                except Exception as e:  # noqa: BLE001 - a rule's bug: name the node, never a raw error
                    ctx.failures.append((node.op, node.path, node.loc,
                                         f"internal error in its ONNX rule ({type(e).__name__}: {e}); "
                                         "please report it"))
            if outs is None:
                outs = [ctx.fresh("missing") for _ in node.outputs]
            elif isinstance(outs, str):
                outs = [outs]
            for v, name in zip(node.outputs, outs):
                self.env[v] = name
        ctx.path, ctx.loc = outer

    # -- shapes ------------------------------------------------------------------
    def dim(self, d) -> str:
        """A [1]-shaped int64 tensor holding dim ``d`` (an int or a symbolic expression)."""
        d = as_dim(d)
        if isinstance(d, int):
            return self.i64(d)
        cache = self.ctx.dims
        if d not in cache:
            try:
                expr = parse_dim(d)
            except DimError as e:
                raise Refused(f"cannot evaluate the symbolic dim {d!r}: {e}") from None
            cache[d] = expr.evaluate({}, _OnnxDimOps(self.ctx))
        return cache[d]

    def shape(self, dims) -> str:
        """A 1-D int64 shape tensor for ``dims`` (ints and symbolic expressions)."""
        dims = tuple(as_dim(d) for d in dims)
        if all(isinstance(d, int) for d in dims):
            return self.i64(*dims)
        cache = self.ctx.dims
        if dims not in cache:
            parts, run = [], []
            for d in dims:
                if isinstance(d, int):
                    run.append(d)
                    continue
                if run:
                    parts.append(self.ctx.pre.i64(*run))
                    run = []
                parts.append(self.dim(d))
            if run:
                parts.append(self.ctx.pre.i64(*run))
            cache[dims] = parts[0] if len(parts) == 1 else self.ctx.pre.op("Concat", *parts, axis=0)
        return cache[dims]

    def dim_scalar(self, d, dtype: str = "i64") -> str:
        """Dim ``d`` as a 0-d tensor of ``dtype``."""
        d = as_dim(d)
        if isinstance(d, int):
            return self.scalar(d, dtype)
        x = self.op("Squeeze", self.dim(d), self.i64(0))
        return self.cast(x, "i64", dtype)

    # -- small helpers used by many rules -----------------------------------------
    def cast(self, x: str, src: str, dst: str) -> str:
        if src == dst:
            return x
        return self.op("Cast", x, to=onnx_dtype(dst))

    def reshape(self, x: str, dims) -> str:
        """``x`` reshaped; a symbolic dim may be 0 at run time (``B-1`` at B=1), and Reshape
        reads a 0 as "keep the input's dim" unless ``allowzero`` is set."""
        dims = tuple(as_dim(d) for d in dims)
        maybe_zero = 0 in dims or any(not isinstance(d, int) for d in dims)
        return self.op("Reshape", x, self.shape(dims),
                       allowzero=1 if maybe_zero and self.opset >= 14 else None)

    def transpose(self, x: str, perm) -> str:
        perm = list(perm)
        if perm == sorted(perm):
            return x
        return self.op("Transpose", x, perm=perm)

    def unsqueeze(self, x: str, axes) -> str:
        axes = list(axes)
        return self.op("Unsqueeze", x, self.i64(*axes)) if axes else x

    def squeeze(self, x: str, axes) -> str:
        axes = list(axes)
        return self.op("Squeeze", x, self.i64(*axes)) if axes else x

    def expand(self, x: str, dims) -> str:
        return self.op("Expand", x, self.shape(dims))

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        if not list(axes):
            return x
        ins = [self.i64(*starts), self.i64(*ends), self.i64(*axes)]
        if steps is not None and any(s != 1 for s in steps):
            ins.append(self.i64(*steps))
        return self.op("Slice", x, *ins)

    def where(self, cond: str, a: str, b: str, dtype: str | None = None,
              signed_zeros: bool = False) -> str:
        """``Where``; values of a ``dtype`` onnxruntime cannot select go through a wider type.

        onnxruntime's Where returns +0.0 where it picks -0.0 from ``a`` (it merges the two
        selections with ``x != 0 ? x : y``); ``signed_zeros=True`` (floats) restores the sign
        where JAX would see it: user-visible selections, and rules whose point is the sign.
        """
        wide = _WHERE_VIA.get(dtype)
        if wide is None:
            out = self.op("Where", cond, a, b)
        else:
            out = self.cast(self.op("Where", cond, self.cast(a, dtype, wide), self.cast(b, dtype, wide)),
                            wide, dtype)
        if not (signed_zeros and dtype and dtype.startswith(("f", "bf"))):
            return out
        zero = self.scalar(0, dtype)
        lost = self.op("And", cond, self.op("And", self.op("Equal", a, zero),
                                            self.op("Less", self.op("Reciprocal", a), zero)))
        return self.op("Mul", out, self.where(lost, self.scalar(-1, dtype), self.scalar(1, dtype), dtype))


class _OnnxDimOps(DimOps):
    """Evaluate a dim expression (``nnxc.ir.types.parse_dim``) into prelude int64 nodes:
    symbols are the sizes of the input axes they name (``Shape``), arithmetic is ONNX ops."""

    def __init__(self, ctx: Context):
        self.ctx, self.b = ctx, ctx.pre

    def symbol(self, name: str, env):
        key = ("sym", name)
        if key not in self.ctx.dims:
            src = self.ctx.dim_sources.get(name)
            if src is None:
                raise Refused(f"symbolic dim {name!r} is not the size of any input axis")
            x, axis = src
            b = self.b
            if b.opset >= 15:
                self.ctx.dims[key] = b.op("Shape", x, start=axis, end=axis + 1)
            else:
                self.ctx.dims[key] = b.op("Gather", b.op("Shape", x), b.i64(axis))
        return self.ctx.dims[key]

    def const(self, k: int):
        return self.b.i64(k)

    def add(self, a, b):
        return self.b.op("Add", a, b)

    def mul(self, a, b):
        return self.b.op("Mul", a, b)

    def floordiv(self, a, b):  # (a - a mod b) / b is floor division for either sign
        return self.b.op("Div", self.b.op("Sub", a, self.b.op("Mod", a, b)), b)

    def mod(self, a, b):  # integer Mod takes the divisor's sign, as Python's % does
        return self.b.op("Mod", a, b)

    def max(self, a, b):
        return self.b.op("Max", a, b)

    def min(self, a, b):
        return self.b.op("Min", a, b)


def live_nodes(graph) -> set:
    """ids of the IR nodes whose results reach the graph's outputs or state updates, region
    bodies included (IR ops have no side effects: the others are dead code)."""
    used = {id(v) for v in graph.outputs} | {id(v) for _, v in graph.updates}
    live: set = set()

    def visit(nodes):
        for node in reversed(nodes):
            if not any(id(v) in used for v in node.outputs):
                continue
            live.add(id(node))
            used.update(id(v) for v in node.inputs)
            for region in node.regions:  # a live loop or branch needs all its results
                used.update(id(v) for v in region.results)
                visit(region.nodes)

    visit(graph.nodes)
    return live

