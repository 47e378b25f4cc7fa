"""Complex values at the ONNX boundary and inside the graph (nnxc/backends/onnx/fft.py,
control.py, export.py): a complex64 input, output, variable or variable update is a float32
tensor with a trailing axis of 2 (real part, imaginary part); complex128 the same in float64.

Each program is traced with a symbolic batch ``B``, exported (full ONNX checker), run in
onnxruntime at B = 1 and 3 and compared with ``jax.jit`` of the same function. Tolerance: the
README's (f32: 1e-5, f64: 1e-10, relative and of each output's scale, ``max|ref|``, the
complex magnitude for complex outputs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.complex64): 1e-5,
        np.dtype(np.float64): 1e-10, np.dtype(np.complex128): 1e-10}
SIZES = (1, 3)


def to_pair(a) -> np.ndarray:
    """How a complex array crosses the boundary: ``[..., 2]`` real and imaginary parts."""
    a = np.asarray(a)
    if not np.iscomplexobj(a):
        return a
    return np.stack([a.real, a.imag], -1).astype(np.float32 if a.dtype == np.complex64 else np.float64)


def from_pair(a, like) -> np.ndarray:
    return (a[..., 0] + 1j * a[..., 1]).astype(like.dtype) if np.iscomplexobj(like) else a


def _close(got, want, name, worst=None):
    want = np.asarray(want)
    got = from_pair(got, want)
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    rtol = RTOL[want.dtype]
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = np.abs(got - want)
    assert np.all(err <= rtol * scale + rtol * np.abs(want)), (name, float(err.max()), scale)
    if worst is not None:
        worst[name] = float(err.max()) / scale if scale else 0.0


def _random(rng, spec, b: int):
    dtype, dims = spec[:-1].split("[")
    shape = tuple(b if d == "B" else int(d) for d in dims.split(",") if d)
    if dtype.startswith("c"):
        a = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        return a.astype(np.complex64 if dtype == "c64" else np.complex128)
    return rng.standard_normal(shape).astype(np.float32 if dtype == "f32" else np.float64)


def check(fn, *specs, seed=0):
    """Trace ``fn`` on ``specs`` (B symbolic), export, compare onnxruntime with ``jax.jit``."""
    model = export_onnx(nnxc.trace(fn, *specs))
    session = onnx_session(model)
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    for b in SIZES if any("B" in s for s in specs) else SIZES[:1]:
        args = [_random(rng, s, b) for s in specs]
        want = jax.tree_util.tree_leaves(jax.jit(fn)(*args))
        got = session.run(None, {n: to_pair(a) for n, a in zip(names, args)})
        assert len(got) == len(want)
        for name, g, w in zip(outs, got, want):
            _close(g, w, f"{name} at B={b}")
    return model


# -- arithmetic, abs, exp, conj, real, imag, complex --------------------------------------------

@pytest.mark.filterwarnings("ignore:Casting complex values to real")
def test_complex_arithmetic_on_complex_inputs_and_outputs():
    def f(z, w, x):
        return {
            "add": z + w, "sub": z - w, "neg": -z, "mul": z * w, "div": z / w, "div_real": z / (x + 3),
            "real_div": x / w, "mul_real": z * x, "add_real": x + z, "square": jnp.square(z),
            "pow3": z ** 3, "pow_neg": w ** -2, "scalar": z * (2 - 3j) + 1j,
            "abs": jnp.abs(z), "exp": jnp.exp(z), "conj": jnp.conj(z), "real": jnp.real(z),
            "imag": jnp.imag(z), "complex": lax.complex(x, jnp.real(w)),
            "from_real": x.astype(jnp.complex64), "to_real": lax.convert_element_type(z, jnp.float32),
            "eq": z == z.conj(), "ne": z != w, "sum": z.sum(axis=-1), "where": jnp.where(x > 0, z, w),
        }
    check(f, "c64[B,6]", "c64[B,6]", "f32[B,6]")


def test_exp_and_abs_across_magnitudes():
    """exp as e^re (cos im, sin im); abs scaled by the larger part (no overflow of re^2)."""
    def f(z):
        big = z * jnp.float32(1e30)
        return {"exp": jnp.exp(z * 4), "abs_big": jnp.abs(big), "abs_small": jnp.abs(z * jnp.float32(1e-30)),
                "exp_abs": jnp.abs(jnp.exp(z))}
    check(f, "c64[B,16]", seed=1)


# -- matmul -----------------------------------------------------------------------------------

def test_complex_matmul():
    def f(a, c, x):
        return {"cc": a @ c, "c_real": a @ x, "real_c": x.T @ c,
                "batched": jnp.einsum("bij,bjk->bik", a[None].repeat(2, 0), c[None].repeat(2, 0)),
                "vec": a @ c[:, 0], "herm": a @ a.conj().T}
    check(f, "c64[B,8]", "c64[8,5]", "f32[8,B]")


# -- the boundary ------------------------------------------------------------------------------

def test_boundary_types_and_documentation():
    model = export_onnx(nnxc.trace(lambda z, x: (z * x, jnp.abs(z)), "c64[B,5]", "f32[B,5]"))
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert inputs["z"].type.tensor_type.elem_type == outputs["output.0"].type.tensor_type.elem_type == 1
    assert shape(inputs["z"]) == shape(outputs["output.0"]) == ["B", 5, 2]
    assert shape(outputs["output.1"]) == ["B", 5] and not outputs["output.1"].doc_string
    assert "c64[B,5] as f32[B,5,2]" in inputs["z"].doc_string and "imaginary" in inputs["z"].doc_string
    assert not inputs["x"].doc_string
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nnxc.complex_as_pairs"] == "z,output.0"
    assert "trailing axis of 2" in model.doc_string


def test_complex_input_straight_to_output_and_complex_constants():
    def f(z):
        return z, jnp.full((3,), 1 - 2j, jnp.complex64), jnp.zeros_like(z) + (0.5 + 0.25j)
    check(f, "c64[B,4]")


class Phase(nnx.Module):
    """A complex weight, and a complex running state updated by each call."""

    def __init__(self):
        k = np.exp(1j * np.linspace(0, 3, 6)).astype(np.complex64)
        self.w = nnx.Param(jnp.asarray(k))
        self.acc = nnx.BatchStat(jnp.zeros(6, jnp.complex64))

    def __call__(self, z):
        y = z * self.w
        self.acc[...] = self.acc[...] * 0.5 + y.sum(axis=0)
        return y


@pytest.mark.parametrize("weights_as_inputs", [False, True])
def test_complex_variables_and_updates(weights_as_inputs):
    model = Phase()
    g = nnxc.trace(model, "c64[B,6]")
    onnx_model = export_onnx(g, weights_as_inputs=weights_as_inputs)
    session = onnx_session(onnx_model)
    z = _random(np.random.default_rng(2), "c64[B,6]", 3)
    feeds = {"z": to_pair(z)}
    if weights_as_inputs:
        feeds.update({"w": to_pair(model.w[...]), "acc": to_pair(model.acc[...])})
    else:
        init = {t.name: t for t in onnx_model.graph.initializer}
        assert list(init["w"].dims) == [6, 2] and init["w"].data_type == 1
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    want = nnx.jit(lambda m, z: m(z))(model, z)
    _close(got["output"], want, "output")
    _close(got["acc.new"], model.acc[...], "acc.new")


# -- control flow ------------------------------------------------------------------------------

def test_complex_carries_slices_and_results_in_loops():
    def f(z, w):
        c, ys = lax.scan(lambda c, x: (c * x * 0.5, c + x), w, z)  # carry [6], slices and ys [B,6]
        r, rs = lax.scan(lambda c, x: (c + x, c * 1j), w, z, reverse=True)
        return {"carry": c, "ys": ys, "rev": r, "rev_ys": rs,
                "fori": lax.fori_loop(0, 3, lambda i, c: c * (1 + 0.5j) + w, z),
                "while": lax.while_loop(lambda c: jnp.abs(c).sum() < 1e3, lambda c: c * 1.5j, z),
                "real_out": lax.scan(lambda c, x: (c + jnp.abs(x), None), jnp.zeros(6), z)[0]}
    check(f, "c64[B,6]", "c64[6]")


def test_complex_branches():
    def f(z, p):
        i = (p[0] > 0).astype(jnp.int32) + (p[1] > 0).astype(jnp.int32)
        return {"cond": lax.cond(p[0] > 0, lambda z: z * 1j, jnp.conj, z),
                "switch": lax.switch(i, [lambda z: z, lambda z: -z * 2j, lambda z: z * z], z)}
    model = export_onnx(nnxc.trace(f, "c64[B,3]", "f32[2]"))
    session = onnx_session(model)
    z = _random(np.random.default_rng(3), "c64[B,3]", 2)
    for p in ([1, 1], [1, -1], [-1, -1]):
        p = np.asarray(p, np.float32)
        want = jax.jit(f)(z, p)
        got = session.run(None, {"z": to_pair(z), "p": p})
        for g, (k, w) in zip(got, sorted(want.items())):
            _close(g, w, f"{k} p={p}")


# -- complex128 --------------------------------------------------------------------------------

def test_complex128_as_f64_pairs():
    def f(z, w):
        return {"mul": z * w[0], "div": z / w[1], "exp": jnp.exp(z), "abs": jnp.abs(z), "mm": z @ w.T,
                "loop": lax.fori_loop(0, 2, lambda i, c: c @ w, z)}
    with jax.enable_x64(True):
        model = check(f, "c128[B,4]", "c128[4,4]")
    assert all(i.type.tensor_type.elem_type == 11 for i in model.graph.input)  # DOUBLE


# -- refusals ----------------------------------------------------------------------------------

def test_ops_without_a_complex_lowering_name_the_primitive():
    with pytest.raises(nnxc.UnsupportedOpError) as info:
        export_onnx(nnxc.trace(lambda z: jnp.sqrt(z), "c64[B,4]"))
    assert "sqrt on complex values" in str(info.value)
