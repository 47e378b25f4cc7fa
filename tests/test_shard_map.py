"""jax.shard_map: inlined on a 1-device mesh, its collectives rewritten to what they compute on
one device (XLA bit for bit against jax.jit of the user's own function, ONNX in onnxruntime);
over more devices a ``shard_map`` node whose body is a region (IR text and verifier here, XLA
on 4 fake CPU devices in a subprocess, ONNX refused)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import AxisType, PartitionSpec as P

import nnxc
from nnxc.backends.onnx import export_onnx
from nnxc.errors import NnxcError, UnsupportedOpError, VerifyError
from nnxc.frontend.shard_map import COLLECTIVES
from nnxc.runtime.onnx_io import onnx_session

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
AUTO = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def bits(x) -> tuple:
    a = np.asarray(x)
    return a.shape, a.dtype, a.tobytes()


def batch(n: int, cols: int = 4, seed: int = 0) -> np.ndarray:
    """Random rows with -0.0 and a NaN in them (what an identity must keep bit for bit)."""
    x = np.random.default_rng(seed + n).standard_normal((n, cols)).astype(np.float32)
    x[0, 0], x[-1, 1] = -0.0, np.nan
    return x


def run_both(graph, fn, calls):
    """XLA: the compiled graph equals jax.jit(fn) bit for bit; ONNX: onnxruntime within 1e-5."""
    exe = nnxc.compile(graph)
    session = onnx_session(export_onnx(graph))
    names = [i.name for i in session.get_inputs()]
    for args in calls:
        want = jax.tree_util.tree_leaves(jax.jit(fn)(*args))
        got = jax.tree_util.tree_leaves(exe(*args))
        assert [bits(g) for g in got] == [bits(w) for w in want]
        onnx = session.run(None, dict(zip(names, [np.asarray(a) for a in args])))
        for o, w in zip(onnx, want):
            assert o.shape == np.shape(w)
            np.testing.assert_allclose(o, np.asarray(w), rtol=1e-5, atol=1e-6)


def no_collectives(graph) -> bool:
    return not ({n.op for n in graph.walk()} & (COLLECTIVES | {"shard_map"}))


def test_one_device_collectives_are_what_they_compute_on_one_device():
    """Each collective over size-1 axes, with check_vma (psum_invariant, pvary) and without."""
    def body(x, w):
        h = jnp.tanh(x @ w)
        return {"psum": lax.psum(h, "data"), "pmean": lax.pmean(h, "data"),
                "pmax": lax.pmax(x, "data"), "pmin": lax.pmin(x, "data"),
                "gather": lax.all_gather(h, "data", axis=1) + lax.axis_index("data"),
                "gather_tiled": lax.all_gather(x, "data", axis=1, tiled=True),
                "gather_invariant": lax.all_gather(h, "data", to="invarying"),
                "scatter": lax.psum_scatter(x, "data", scatter_dimension=1, tiled=True),
                "all_to_all": lax.all_to_all(x, "data", 1, 0, tiled=True),
                "ppermute": lax.ppermute(x, "data", [(0, 0)]), "ppermute_none": lax.ppermute(x, "data", []),
                "pcast": lax.pcast(w.sum(0), "data", to="varying") * x[:, :1]}

    def f(x, w):
        return jax.shard_map(body, mesh=AUTO, in_specs=(P("data"), P()), out_specs={
            "psum": P(), "pmean": P(), "pmax": P(), "pmin": P(), "gather_invariant": P(),
            **{k: P("data") for k in ("gather", "gather_tiled", "scatter", "all_to_all", "ppermute",
                                      "ppermute_none", "pcast")}})(x, w)

    w = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    g = nnxc.trace(f, "f32[B,4]", w)
    assert no_collectives(g)
    assert str(nnxc.ir.parse(str(g))) == str(g)
    run_both(g, f, [(batch(1), w), (batch(3), w)])


def test_one_device_without_check_vma_and_over_two_axes():
    """psum over both axes, the untiled forms that add or drop an axis of size 1, zeros from a
    ppermute that sends nothing to device 0."""
    def body(x):
        return (lax.psum(x, ("data", "model")), lax.psum_scatter(x[None], "data"),
                lax.all_to_all(x[None], "data", 0, 2), lax.axis_index(("data", "model")) + x,
                lax.psum_scatter(x.astype(jnp.int32), "model", scatter_dimension=0, tiled=True))

    def f(x):
        return jax.shard_map(body, mesh=AUTO, in_specs=P("data"), out_specs=P("data"), check_vma=False)(x)

    g = nnxc.trace(f, "f32[B,3]")
    assert no_collectives(g)
    x1, x3 = np.nan_to_num(batch(1, 3)), np.nan_to_num(batch(3, 3))
    run_both(g, f, [(x1,), (x3,)])
    scattered = nnxc.compile(g)(x3)[1]
    assert np.signbit(np.asarray(jax.jit(f)(x3)[1])[0, 0]) == np.signbit(np.asarray(scattered)[0, 0]) == False  # noqa: E712 - XLA's reduce-scatter makes -0.0 +0.0


class ShardedMLP(nnx.Module):
    """A data-parallel block written for a mesh: rows split over data, the loss-style mean and
    the gathered activations computed with collectives."""

    def __init__(self, mesh, rngs):
        self.mesh = mesh
        self.up = nnx.Linear(4, 8, rngs=rngs)
        self.down = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        def block(h, kernel):
            local = jnp.mean(h @ kernel, axis=0)
            return (h @ kernel + lax.psum(local, "data") + lax.axis_index("data"),
                    lax.all_gather(h, "data", tiled=True))
        h = nnx.gelu(self.up(x))
        y, gathered = jax.shard_map(block, mesh=self.mesh, in_specs=(P(), P()), out_specs=(P(), P()),
                                    check_vma=False)(h, self.down.kernel[...])
        return y + self.down.bias[...], gathered


def test_nnx_model_on_the_default_one_device_mesh():
    """jax.make_mesh's default (Explicit axes), a symbolic batch at sizes 1 and 3."""
    model = ShardedMLP(jax.make_mesh((1,), ("data",)), nnx.Rngs(0))
    g = nnxc.trace(model, "f32[B,4]")
    assert no_collectives(g)
    ref = nnx.jit(lambda m, x: m(x))
    exe, session = nnxc.compile(g), onnx_session(export_onnx(g))
    for n in (1, 3):
        x = np.nan_to_num(batch(n))
        want = ref(model, x)
        assert [bits(a) for a in exe(x)] == [bits(a) for a in want]
        for o, w in zip(session.run(None, {session.get_inputs()[0].name: x}), want):
            np.testing.assert_allclose(o, np.asarray(w), rtol=1e-5, atol=1e-6)


def test_the_experimental_shard_map_spelling():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.shard_map import shard_map

    def f(x):
        return shard_map(lambda v: lax.psum(v * 2, "data"), mesh=AUTO, in_specs=P("data"), out_specs=P())(x)
    g = nnxc.trace(f, "f32[B,2]")
    assert no_collectives(g)
    x = batch(3, 2)
    assert bits(nnxc.compile(g)(x)) == bits(jax.jit(f)(x))


def test_pbroadcast_from_device_0_is_the_value():
    """JAX has no CPU lowering for pbroadcast, so the reference is its definition: every device
    gets device 0's value, on one device the value itself."""
    def f(x):
        return jax.shard_map(lambda v: lax.pbroadcast(v, ("data",), 0), mesh=AUTO, in_specs=P("data"),
                             out_specs=P("data"))(x)
    g = nnxc.trace(f, "f32[B,2]")
    assert no_collectives(g) and not g.nodes
    x = batch(3, 2)
    assert bits(nnxc.compile(g)(x)) == bits(x)


def test_collectives_without_a_one_device_form_are_refused_with_their_line():
    def f(x):
        def body(v):
            return lax.psum_scatter(v, "data", tiled=True)  # complex: refused
        return jax.shard_map(body, mesh=AUTO, in_specs=P("data"), out_specs=P("data"))(x)
    with pytest.raises(UnsupportedOpError) as info:
        nnxc.trace(f, "c64[2,2]")
    text = str(info.value)
    assert "reduce_scatter" in text and "1-device mesh axes (data)" in text
    assert "tests/test_shard_map.py:" in text and "complex" in text


# -- a shard_map over several devices: IR text, verifier, refusals (no devices needed) --------

TWO_DEVICES = """graph @split(%x: f32[8,4]) {
  %0: f32[8,4], %1: f32[2,8,4] = shard_map(%x) {mesh=Mesh(axis_names=("data","model"), axis_sizes=(2,1)), manual_axes=("data","model"), check_vma=False, in_specs=(("data",None),), out_specs=((("data","model"),),(None,"data"))} loc("model.py:3") {
  ^(%2: f32[4,4]):
    %3: f32[4,4] = psum(%2) {axes=("data",), axis_index_groups=None} loc("model.py:4")
    %4: i32[] = axis_index() {axis_name="data"} loc("model.py:5")
    %5: f32[2,4,4] = all_gather(%3) {all_gather_dimension=0, axis_name=("data",), axis_index_groups=None, axis_size=2, tiled=False}
    %6: f32[2,8] = all_to_all(%3) {split_axis=0, concat_axis=1, axis_name="data", axis_index_groups=None, tiled=True}
    %7: f32[2,4] = reduce_scatter(%6) {axis_name=("data",), scatter_dimension=1, axis_index_groups=None, axis_size=2, tiled=True}
    %8: f32[4,4] = ppermute(%3) {axis_name=("data",), perm=((0,1),(1,0))}
    yield %8, %5
  }
  return (%0, %1)
}
"""


def test_a_multi_device_shard_map_prints_parses_and_verifies():
    g = nnxc.ir.parse(TWO_DEVICES)
    nnxc.ir.verify(g)
    assert str(g) == TWO_DEVICES
    assert str(nnxc.ir.from_json(nnxc.ir.to_json(g))) == TWO_DEVICES
    (node,) = g.nodes
    assert node.attrs["in_specs"] == (("data", None),) and node.attrs["mesh"].get("axis_sizes") == (2, 1)
    bad = TWO_DEVICES.replace("^(%2: f32[4,4])", "^(%2: f32[8,4])")
    with pytest.raises(VerifyError, match="split by"):
        nnxc.ir.verify(nnxc.ir.parse(bad))


def test_a_multi_device_shard_map_is_refused_by_onnx_and_needs_its_devices_on_xla():
    g = nnxc.ir.parse(TWO_DEVICES)
    with pytest.raises(UnsupportedOpError) as info:
        export_onnx(g)
    assert ("shard_map at top level at model.py:3: shard_map over the mesh axis 'data' of 2 devices: "
            "ONNX graphs run on one device; trace with a 1-device mesh to inline it") in str(info.value)
    if jax.device_count() < 2:
        with pytest.raises(NnxcError, match="needs 2 devices, 1 available"):
            nnxc.compile(g)


def test_multi_device_shard_map_runs_bit_exact_on_4_devices():
    """tests/scripts/shard_map_mesh.py: tensor parallel (psum, all_gather to invarying,
    axis_index), a ring (ppermute, psum_scatter, all_to_all, pmax, pmin), a mesh with a size-1
    axis; compiled with and without mesh=, after parsing and after the default passes."""
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "shard_map_mesh.py")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for name in ("tensor_parallel", "collectives", "size_one_model_axis"):
        case = out[name]
        assert case["ops"] == ["shard_map"], name
        assert all(case[k] for k in ("roundtrip", "exact", "exact_on_mesh", "exact_after_parse",
                                     "exact_optimized")), (name, case)
        assert "ONNX graphs run on one device" in case["onnx_refused"], name
    assert {"psum_invariant", "all_gather_invariant", "axis_index", "pvary"} <= set(out["tensor_parallel"]["body_ops"])
    assert {"ppermute", "reduce_scatter", "all_to_all", "pmax", "pmin"} <= set(out["collectives"]["body_ops"])
    assert "psum_invariant" in out["size_one_model_axis"]["body_ops"]  # over model (size 1), kept
