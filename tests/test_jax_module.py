"""nnxc/_jax.py is the one module that reads JAX internals; each use is exercised here, so a
JAX upgrade that moves one fails a test that names it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nnxc import _jax as jx
from nnxc.ir.params import decode_param, encode_param


def test_primitives_are_found_by_name_public_ones_first():
    from jax.extend.core import primitives as public
    for name in ("add", "dot_general", "scan", "cond", "while", "fft", "lu", "custom_linear_solve",
                 "random_bits", "threefry2x32", "cumsum", "argmax", "reduce_precision", "dim_as_value"):
        assert isinstance(jx.primitive(name), jx.Primitive), name
    assert jx.primitive("add") is public.add_p
    assert all(jx._import(m) is not None for m in jx._PRIM_MODULES)  # the list is current


def test_param_types_round_trip():
    for v in (jax.lax.GatherScatterMode.CLIP, jax.lax.Precision.HIGHEST, jax.lax.FftType.RFFT,
              jax.lax.RoundingMethod.TO_NEAREST_EVEN):
        assert decode_param(encode_param(v)) == v
    dn = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    assert decode_param(encode_param(dn)) == dn
    impl = jx.prng_impl("threefry2x32")
    assert impl.name == "threefry2x32"
    assert jx.is_dim_expr(jax.export.symbolic_shape("B+1")[0]) and not jx.is_dim_expr(3)


def test_bind_restores_params_the_ir_leaves_out():
    prim = jx.primitive("dot_general")
    x = np.ones((2, 3), np.float32)
    (out,) = jx.bind(prim, [x, x.T], {"dimension_numbers": (((1,), (0,)), ((), ()))})
    np.testing.assert_array_equal(np.asarray(out), x @ x.T)
    (aval,) = jx.abstract_eval(prim, [jx.shaped_array((2, 3), np.float32)] * 2,
                               {"dimension_numbers": (((1,), (1,)), ((), ()))})
    assert tuple(aval.shape) == (2, 2)


def test_provenance_and_scopes():
    def f(x):
        with jx.named_scope("blocks.0.attn"):
            return jnp.sin(x)  # this line
    eqn = jax.make_jaxpr(f)(1.0).jaxpr.eqns[0]
    assert jx.scope_path(eqn.source_info) == "blocks.0.attn"
    assert jx.user_frame(eqn.source_info).startswith("tests/test_jax_module.py:")


def test_symbolic_dims_as_values():
    (b,) = jax.export.symbolic_shape("B")
    assert jx.core.max_dim(b, 1) is not None
    out = jax.make_jaxpr(lambda x: jx.dimension_as_value(x.shape[0]))(
        jax.ShapeDtypeStruct((b,), np.float32))
    assert out.jaxpr.outvars
