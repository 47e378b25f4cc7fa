"""Op registry: the shape/dtype rule of every op.

Core ops are JAX primitives: their rule is JAX's own abstract evaluation (the default).
``SHAPE_RULES`` holds the rest: region ops, and the ``nnxc.*`` ops that passes add. A rule
takes the node, its input types and a symbol environment and returns the output types.
"""
from __future__ import annotations

from typing import Callable

from .._registry import registrar
from .. import _jax as jc
from .graph import Node
from .types import DimOps, TensorType, dim_text, parse_dim, to_dtype

ShapeRule = Callable[[Node, list, dict], list]
SHAPE_RULES: dict[str, ShapeRule] = {}


class ShapeError(ValueError):
    pass


shape_rule = registrar(SHAPE_RULES)


class JaxDimOps(DimOps):
    """Evaluate dims to JAX dims: ints where the symbols are ints, else symbolic dims.

    A symbol missing from ``env`` becomes a new JAX symbolic dim, in the scope kept under
    ``env["__scope__"]`` (the convention ``nnxc.ir.params.eval_dim`` follows too), and is
    remembered in ``env``.
    """

    def symbol(self, name: str, env):
        if name not in env:
            import jax
            scope = env.setdefault("__scope__", jax.export.SymbolicScope())
            env[name] = jax.export.symbolic_shape(name, scope=scope)[0]
        return env[name]

    def max(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return max(a, b)
        return jc.core.max_dim(a, b)

    def min(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return min(a, b)
        return jc.core.min_dim(a, b)


JAX_DIM_OPS = JaxDimOps()


def jax_dim(d, env: dict):
    """An IR dim (int or expression) as a JAX dim, symbols from ``env`` (see JaxDimOps)."""
    if isinstance(d, int):
        return d
    return parse_dim(d).evaluate(env, JAX_DIM_OPS)


def aval(t: TensorType, env: dict):
    shape = tuple(jax_dim(d, env) for d in t.shape)
    return jc.shaped_array(shape, to_dtype(t.dtype))


def from_aval(a) -> TensorType:
    return TensorType.of(a)


def infer(node: Node, in_types: list, env: dict) -> list:
    """Output types of ``node`` for the given input types (raises ShapeError)."""
    rule = SHAPE_RULES.get(node.op)
    if rule is not None:
        return rule(node, in_types, env)
    prim = jc.primitive(node.op)
    if prim is None:
        raise ShapeError(f"unknown op {node.op!r} (no JAX primitive and no shape rule)")
    from .params import decode_param
    params = {k: decode_param(v, env) for k, v in node.attrs.items()}
    try:
        outs = jc.abstract_eval(prim, [aval(t, env) for t in in_types], params)
    except Exception as e:  # noqa: BLE001 - JAX raises many types for bad shapes
        raise ShapeError(f"{type(e).__name__}: {e}") from None
    return [from_aval(a) for a in outs]


def _drop_lead(t: TensorType) -> TensorType:
    return TensorType(t.shape[1:], t.dtype)


def _add_lead(t: TensorType, n) -> TensorType:
    return TensorType((dim_text(n),) + tuple(t.shape), t.dtype)


def _expect(what: str, got: list, want: list):
    if list(got) != list(want):
        raise ShapeError(f"{what}: got ({', '.join(map(str, got))}), "
                         f"expected ({', '.join(map(str, want))})")


@shape_rule("scan")
def _scan(node: Node, ins: list, env: dict) -> list:
    a = node.attrs
    nc, ncarry, length = a["num_consts"], a["num_carry"], a["length"]
    (body,) = node.regions
    want_args = ins[:nc + ncarry] + [_drop_lead(t) for t in ins[nc + ncarry:]]
    _expect("scan body arguments", [v.type for v in body.args], want_args)
    res = [v.type for v in body.results]
    _expect("scan body carry results", res[:ncarry], ins[nc:nc + ncarry])
    return res[:ncarry] + [_add_lead(t, length) for t in res[ncarry:]]


@shape_rule("while")
def _while(node: Node, ins: list, env: dict) -> list:
    cn, bn = node.attrs["cond_nconsts"], node.attrs["body_nconsts"]
    cond, body = node.regions
    carry = ins[cn + bn:]
    _expect("while cond arguments", [v.type for v in cond.args], ins[:cn] + carry)
    _expect("while cond result", [v.type for v in cond.results], [TensorType((), "bool")])
    _expect("while body arguments", [v.type for v in body.args], ins[cn:cn + bn] + carry)
    _expect("while body results", [v.type for v in body.results], carry)
    return carry


@shape_rule("cond")
def _cond(node: Node, ins: list, env: dict) -> list:
    if ins[0].rank != 0 or ins[0].dtype not in ("i32", "i64", "u32", "bool"):
        raise ShapeError(f"cond index must be an integer scalar, got {ins[0]}")
    outs = None
    for i, branch in enumerate(node.regions):
        _expect(f"cond branch {i} arguments", [v.type for v in branch.args], ins[1:])
        res = [v.type for v in branch.results]
        if outs is not None:
            _expect(f"cond branch {i} results", res, outs)
        outs = res
    return outs or []


def _reducer(node: Node, ins: list) -> tuple[list, list]:
    """(operands, their dtypes) of reduce / reduce_window, after checking the inputs (operands of
    one shape, then a scalar initial value each) and the reducer region: ``(accumulators...,
    elements...) -> accumulators...``, all scalars of the operands' dtypes."""
    n = len(ins) // 2
    if not n or len(ins) != 2 * n:
        raise ShapeError(f"{node.op} takes operands and as many initial values, got {len(ins)} inputs")
    ops, inits = ins[:n], ins[n:]
    if any(t.shape != ops[0].shape for t in ops):
        raise ShapeError(f"{node.op} operands differ in shape: " + ", ".join(map(str, ops)))
    scalars = [TensorType((), t.dtype) for t in ops]
    _expect(f"{node.op} initial values", inits, scalars)
    if len(node.regions) != 1:
        raise ShapeError(f"{node.op} takes one region (its reducer), got {len(node.regions)}")
    (body,) = node.regions
    _expect(f"{node.op} reducer arguments", [v.type for v in body.args], scalars + scalars)
    _expect(f"{node.op} reducer results", [v.type for v in body.results], scalars)
    return ops, [t.dtype for t in ops]


@shape_rule("reduce")
def _reduce(node: Node, ins: list, env: dict) -> list:
    ops, dtypes = _reducer(node, ins)
    dims = tuple(node.attrs["dimensions"])
    rank = ops[0].rank
    if len(set(dims)) != len(dims) or not all(0 <= d < rank for d in dims):
        raise ShapeError(f"reduce dimensions {dims} for operands of rank {rank}")
    shape = tuple(d for i, d in enumerate(ops[0].shape) if i not in dims)
    return [TensorType(shape, t) for t in dtypes]


_WINDOW = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")


@shape_rule("reduce_window")
def _reduce_window(node: Node, ins: list, env: dict) -> list:
    # the windowed shape is what JAX's rule gives reduce_window_max (same params, no reducer)
    ops, dtypes = _reducer(node, ins)
    from .params import decode_param
    params = {k: decode_param(node.attrs[k], env) for k in _WINDOW}
    probe = TensorType(ops[0].shape, "f32")
    try:
        (out,) = jc.abstract_eval(jc.primitive("reduce_window_max"), [aval(probe, env)], params)
    except Exception as e:  # noqa: BLE001 - JAX raises many types for bad windows
        raise ShapeError(f"{type(e).__name__}: {e}") from None
    shape = from_aval(out).shape
    return [TensorType(shape, t) for t in dtypes]


@shape_rule("scatter", "scatter-add", "scatter-sub", "scatter-mul", "scatter-min", "scatter-max")
def _scatter(node: Node, ins: list, env: dict) -> list:
    # JAX's rule wants the combiner jaxpr, which the IR leaves out: the result is the operand's type
    operand, _, updates = ins
    if updates.dtype != operand.dtype:
        raise ShapeError(f"updates dtype {updates.dtype} differs from operand {operand.dtype}")
    return [operand]


@shape_rule("jit_boundary")
def _jit_boundary(node: Node, ins: list, env: dict) -> list:
    # a constant passed into or returned from a nested jax.jit (frontend/jaxpr.py): the
    # same value, which only XLA, after inlining the call, sees as that constant
    return list(ins)


@shape_rule("sharding_constraint", "device_put")
def _placement(node: Node, ins: list, env: dict) -> list:
    # where the value lives, not what it is: the operands' types (JAX's rule wants the mesh
    # the op was traced under, which the IR does not keep)
    return list(ins)
