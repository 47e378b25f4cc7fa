"""FFT and complex values on ONNX (nnxc/backends/onnx/fft.py): real -> real programs that go
through complex values inside are traced, exported (full ONNX checker), run in onnxruntime
and compared with ``jax.jit`` of the same function, at two sizes of the batch dim ``B``.

Inside the graph a complex value is a real tensor with a trailing real/imaginary axis of 2.
Tolerance (f32): ``rtol=1e-4`` and ``atol=1e-5 * max|reference|`` per output (FFTs of
different libraries round differently; measured: ~1e-6 of each output's scale).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.runtime.onnx_io import onnx_session

RTOL, ATOL = 1e-4, 1e-5
SIZES = (1, 3)


def _close(got, want, name):
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * scale, err_msg=name)


def _dims(spec: str, b: int) -> tuple:
    return tuple(b if d == "B" else int(d) for d in spec[spec.index("[") + 1:-1].split(",") if d)


def check(fn, *specs, opset=None, seed=0):
    """Trace ``fn`` on ``specs`` (f32, B symbolic), export, and compare onnxruntime with
    ``jax.jit(fn)`` at each size of B in SIZES."""
    model = export_onnx(nnxc.trace(fn, *specs), opset=opset)
    session = onnx_session(model)
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    for b in SIZES if any("B" in s for s in specs) else SIZES[:1]:
        args = [rng.standard_normal(_dims(s, b)).astype(np.float32) for s in specs]
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jax.jit(fn)(*args))]
        got = session.run(None, dict(zip(names, args)))
        assert len(got) == len(want)
        for name, g, w in zip(outs, got, want):
            _close(g, w, f"{name} at B={b}")
    return model


# -- the programs the issue names ---------------------------------------------------------

def test_filter_in_the_frequency_domain():
    check(lambda x, w: jnp.fft.irfft(jnp.fft.rfft(x) * w), "f32[B,16]", "f32[9]")


def test_magnitude_spectrum():
    check(lambda x: jnp.abs(jnp.fft.rfft(x)), "f32[B,16]")


def test_fft_ifft_round_trip():
    check(lambda x: jnp.real(jnp.fft.ifft(jnp.fft.fft(x))), "f32[B,12]")


def test_spectrogram():
    def spectrogram(x):  # frames of 16 with hop 4, a Hann window, power spectrum
        idx = np.arange(16)[None, :] + 4 * np.arange(13)[:, None]
        frames = x[:, idx] * jnp.hanning(16)
        return jnp.abs(jnp.fft.rfft(frames)) ** 2
    check(spectrogram, "f32[B,64]")


def test_fft_convolution():
    def conv(x, k):  # linear convolution through a zero-padded FFT
        n = x.shape[-1] + k.shape[-1] - 1
        return jnp.fft.irfft(jnp.fft.rfft(x, n) * jnp.fft.rfft(k, n), n)
    model = check(conv, "f32[B,20]", "f32[7]")
    x = np.random.default_rng(1).standard_normal((2, 20)).astype(np.float32)
    k = np.random.default_rng(2).standard_normal(7).astype(np.float32)
    got = onnx_session(model).run(None, {"x": x, "k": k})[0]
    direct = np.stack([np.convolve(r, k) for r in x])  # in f64: the f32 FFT's rounding shows
    np.testing.assert_allclose(got, direct, rtol=RTOL, atol=ATOL * np.abs(direct).max())


# -- every FftType over 1, 2 and 3 axes -----------------------------------------------------------

@pytest.mark.parametrize("axes", [(-1,), (-2, -1), (-3, -2, -1)])
def test_every_fft_type(axes):
    shape = "f32[B,4,6,8]"

    def f(x):
        c = jnp.fft.fftn(x, axes=axes)
        r = jnp.fft.rfftn(x, axes=axes)
        s = [x.shape[a] for a in axes]
        return {"fft_re": jnp.real(c), "fft_im": jnp.imag(c),
                "ifft": jnp.imag(jnp.fft.ifftn(c * (1 + 0.5j), axes=axes)),
                "rfft_re": jnp.real(r), "rfft_im": jnp.imag(r),
                "irfft": jnp.fft.irfftn(r * (0.5 - 1j), s=s, axes=axes)}
    check(f, shape)


def test_odd_lengths_and_unbatched():
    check(lambda x: {"r": jnp.fft.irfft(jnp.fft.rfft(x) * 2j, 7), "a": jnp.abs(jnp.fft.fft(x))}, "f32[7]")
    check(lambda x: jnp.fft.irfft(jnp.fft.rfft(x, axis=0) + 1j, 9, axis=0), "f32[9,B]")


def test_irfft_ignores_the_imaginary_dc_and_nyquist_terms():
    check(lambda x, y: jnp.fft.irfft(lax.complex(x, y), 8), "f32[B,5]", "f32[B,5]")


@pytest.mark.parametrize("opset", [17, 19, 20])
def test_dft_opsets(opset):
    """DFT takes its axis as an attribute before opset 20 and as an input from 20."""
    check(lambda x: jnp.fft.irfft2(jnp.fft.rfft2(x) / (2 - 1j)), "f32[B,4,6]", opset=opset)


# -- complex arithmetic and data movement on real/imaginary pairs ---------------------------------

@pytest.mark.filterwarnings("ignore:Casting complex values to real")
def test_complex_arithmetic():
    def f(x, y):
        a, c = jnp.fft.fft(x), jnp.fft.fft(y)
        z = lax.complex(x, y)
        return {
            "add": jnp.real(a + c), "sub": jnp.imag(a - c), "neg": jnp.imag(-a),
            "mul": jnp.imag(a * c), "div": jnp.real(a / (c + 1)), "div_im": jnp.imag(z / (c + 1)),
            "abs": jnp.abs(a), "conj": jnp.imag(jnp.conj(a)), "exp": jnp.imag(jnp.exp(z * 0.1)),
            "square": jnp.real(jnp.square(a)), "pow3": jnp.imag(a ** 3), "pow_neg": jnp.real(z ** -2),
            "eq": a == a, "ne": a != c, "scalar": jnp.real(a * (2 - 3j) + 1j),
            "real_back": jnp.real(z.astype(jnp.complex64)) - x,
            "to_real": lax.convert_element_type(a, jnp.float32),  # the real part, as JAX does
            "to_int": lax.convert_element_type(a * 10, jnp.int32),
        }
    check(f, "f32[B,8]", "f32[B,8]")


def test_complex_data_movement():
    def f(x, i):
        c = jnp.fft.fft(x)  # [B, 4, 8]
        parts = {
            "transpose": c.transpose(0, 2, 1), "reshape": c.reshape(-1, 32), "slice": c[:, 1:3, ::2],
            "rev": c[:, ::-1], "concat": jnp.concatenate([c, c * 1j], axis=1),
            "pad": jnp.pad(c, ((0, 0), (1, 2), (0, 0)), constant_values=1 + 2j),
            "where": jnp.where(x > 0, c, 1j), "sum": c.sum(axis=-1), "cumsum": jnp.cumsum(c, axis=-1),
            "broadcast": c[:, None] * c[:, :, None, :1], "gather": c[:, jnp.array([3, 0, 0])],
            "dyn": lax.dynamic_slice_in_dim(c, i[0].astype(jnp.int32), 2, axis=2),
            "dus": lax.dynamic_update_slice_in_dim(c, c[:, :, :2] * 2j, i[1].astype(jnp.int32), axis=2),
            "matmul": c @ jnp.swapaxes(c, -1, -2), "matmul_real": c @ x.swapaxes(-1, -2),
            "scatter": c.at[:, 1].add(1j), "stack": jnp.stack([c, -c], axis=-1)[..., 1],
        }
        # both parts in one output: the tolerance is relative to the complex value's scale
        return {k: jnp.stack([jnp.real(v), jnp.imag(v)], axis=-1) for k, v in parts.items()}
    model = check(f, "f32[B,4,8]", "f32[2]")
    assert any(n.op_type == "DFT" for n in model.graph.node)


def test_complex_values_into_cond_and_scan():
    def f(x, p):
        c = jnp.fft.rfft(x)
        picked = lax.cond(p[0] > 0, lambda c: jnp.abs(c), lambda c: jnp.real(c) * 2, c)
        summed, _ = lax.scan(lambda acc, _: (acc * 0.5 + jnp.imag(c * 1j), None), jnp.real(c), None, length=3)
        return picked, summed
    check(f, "f32[B,8]", "f32[1]")


# -- refusals --------------------------------------------------------------------------------

def _refusal(fn, *specs, opset=None) -> str:
    with pytest.raises(nnxc.UnsupportedOpError) as info:
        export_onnx(nnxc.trace(fn, *specs), opset=opset)
    return str(info.value)


def test_fft_needs_opset_17():
    assert "opset >= 17" in _refusal(lambda x: jnp.abs(jnp.fft.rfft(x)), "f32[B,8]", opset=16)


def test_ops_without_a_complex_lowering_are_refused():
    text = _refusal(lambda x: jnp.abs(jnp.sqrt(jnp.fft.rfft(x))), "f32[B,8]")
    assert "sqrt on complex values" in text


def test_complex_graph_inputs_and_outputs_cross_as_pairs():
    """c64[4,8] in and out as f32[4,8,2] (tests/test_onnx_complex.py covers the boundary)."""
    z = np.random.default_rng(4).standard_normal((4, 8, 2)).astype(np.float32)
    f = lambda z: jnp.fft.ifft(jnp.fft.fft(z) * 2j)  # noqa: E731
    model = export_onnx(nnxc.trace(f, jax.ShapeDtypeStruct((4, 8), jnp.complex64)))
    (got,) = onnx_session(model).run(None, {"z": z})
    want = np.asarray(jax.jit(f)(z[..., 0] + 1j * z[..., 1]))
    _close(got, np.stack([want.real, want.imag], -1), "ifft(fft(z) * 2j)")


def test_complex_loop_carries():
    def f(x):
        return jnp.abs(lax.fori_loop(0, 3, lambda i, c: c * 1j + 1, jnp.fft.rfft(x)))
    check(f, "f32[B,8]")


def test_f64_keeps_double_precision():
    """c128 in f64 pairs; inverses go through forward DFTs (onnxruntime's inverse DFT loses
    precision on f64 at lengths that are not powers of 2): agreement to ~1e-15 of scale."""
    def f(x):
        c = jnp.fft.fft(x)
        return {"ifft": jnp.real(jnp.fft.ifft(c * (1 - 2j))), "irfft": jnp.fft.irfft(jnp.fft.rfft(x) / (3 + 1j), 12),
                "abs": jnp.abs(jnp.fft.rfft2(x))}
    x = np.random.default_rng(3).standard_normal((2, 6, 12))
    with jax.enable_x64(True):
        graph = nnxc.trace(f, x)
        got = onnx_session(export_onnx(graph)).run(None, {"x": x})
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(jax.jit(f)(x))]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13 * np.abs(w).max())
