"""``nnxc.export_onnx`` as an API: names, symbolic dims, initializers by module path, weights
as inputs, variable updates, opsets and their refusals, unsupported ops, determinism,
atomic files, external data; the safe ONNX loader (crafted models); ``nnxc.crosscheck``."""
from __future__ import annotations

import os
import re
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from flax import nnx
from jax import lax

import nnxc
from nnxc.backends.onnx import export_onnx, max_opset
from nnxc.runtime.onnx_io import UnsafeModelError, load_onnx, onnx_session, run_onnx
from test_onnx_ops import check, normal


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.linear(x)))


def block(train=False):
    model = Block(nnx.Rngs(0))
    model.train() if train else model.eval()
    return model


def test_names_dims_and_initializers():
    g = nnxc.trace(block(), "f32[B,4]")
    model = export_onnx(g)
    (x,) = model.graph.input
    assert x.name == "x"
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["B", 4]
    assert [o.name for o in model.graph.output] == ["output"]
    assert {t.name for t in model.graph.initializer} >= {"linear.kernel", "linear.bias", "bn.mean",
                                                         "bn.var", "bn.scale", "bn.bias"}
    assert "drop.rngs.key" not in {t.name for t in model.graph.initializer}  # unused in eval mode
    from nnxc.backends.onnx.native import default_opset
    assert model.opset_import[0].version == default_opset() <= max_opset()
    assert any(n.name.startswith("linear/") for n in model.graph.node)  # nodes carry module paths


def test_output_pytree_names():
    g = nnxc.trace(lambda x: {"logits": x * 2, "aux": (x, x + 1)}, "f32[3]")
    names = [o.name for o in export_onnx(g).graph.output]
    assert names == ["aux.0", "aux.1", "logits"]
    g = nnxc.trace(lambda x: (x, x), "f32[3]")
    assert [o.name for o in export_onnx(g).graph.output] == ["output.0", "output.1"]


def test_train_mode_updates_and_weights_as_inputs():
    g = nnxc.trace(block(train=True), "f32[B,4]")
    model = export_onnx(g, weights_as_inputs=True)
    inputs = [i.name for i in model.graph.input]
    assert inputs[0] == "x" and "linear.kernel" in inputs and "drop.rngs.key" in inputs
    assert not model.graph.initializer or all(t.name not in inputs for t in model.graph.initializer)
    assert [o.name for o in model.graph.output] == ["output", "bn.mean.new", "bn.var.new",
                                                    "drop.rngs.count.new"]
    x = normal(5, 4)
    state = {v.path: v.data for v in g.variables}
    feeds = [x] + [np.asarray(jax.random.key_data(state[n]) if n == "drop.rngs.key" else state[n])
                   for n in inputs[1:]]
    got = run_onnx(onnx_session(model), *feeds)
    want, new_state = nnxc.compile(g).apply(state, x)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)  # dropout masks are exact
    np.testing.assert_allclose(got[1], new_state["bn.mean"], rtol=1e-5, atol=1e-7)
    assert got[3] == new_state["drop.rngs.count"]


def test_opsets():
    g = nnxc.trace(lambda x: jnp.sort(jax.nn.softmax(x, -1).sum(0)) + x.shape[0], "f32[B,5]")
    for opset in (13, 15, 17, 18, 21, max_opset()):
        model = export_onnx(g, opset=opset)
        assert model.opset_import[0].version == opset
        sess = onnx_session(model)
        x = normal(3, 5)
        want = jnp.sort(jax.nn.softmax(x, -1).sum(0)) + 3
        np.testing.assert_allclose(run_onnx(sess, x)[0], want, rtol=1e-5, atol=1e-6)
    for bad in (12, max_opset() + 1, "18", True):
        with pytest.raises(nnxc.NnxcError, match=f"opsets 13..{max_opset()}"):
            export_onnx(g, opset=bad)


def test_newer_ops_fall_back_or_refuse_by_opset():
    check(lambda x: jnp.cumprod(x, 1), normal(2, 5), opset=21)  # CumProd is opset 26
    check(lambda x: lax.shift_right_logical(x, jnp.uint32(3)), np.arange(5, dtype=np.uint32), opset=13)
    check(lambda s: jax.random.uniform(jax.random.key(s), (3,)), np.int32(3), opset=18)  # no BitCast
    g = nnxc.trace(lambda x: lax.bitcast_convert_type(x, jnp.int32), "f32[3]")
    with pytest.raises(nnxc.UnsupportedOpError, match=r"bitcast_convert_type.*needs opset >= 26"):
        export_onnx(g, opset=21)
    g = nnxc.trace(block(train=True), "f32[B,4]")
    with pytest.raises(nnxc.UnsupportedOpError, match=r"random_bits in module 'drop'.*trace in eval mode"):
        export_onnx(g, opset=17)


class Odd(nnx.Module):  # an op nnxc refuses on ONNX, with its reason
    def __call__(self, x):
        return jnp.linalg.svd(x[:, None] * x[None, :], compute_uv=False)


class WithOdd(nnx.Module):
    def __init__(self):
        self.odd = Odd()

    def __call__(self, x):
        m = x[:, None] * x[None, :] + 1.0
        return self.odd(x) + jnp.linalg.svd(m, compute_uv=False) + jnp.linalg.svd(m * 2, compute_uv=False)


def test_unsupported_ops_are_listed_at_once():
    g = nnxc.trace(WithOdd(), "f32[3]")
    with pytest.raises(nnxc.UnsupportedOpError) as e:
        export_onnx(g, opset=21)
    msg = str(e.value)
    assert "3 unsupported op(s) during ONNX export (opset 21)" in msg
    assert "svd in module 'odd' at tests/test_onnx_export.py:" in msg
    assert msg.count("- svd") == 3 and "no ONNX lowering" in msg


def test_deterministic_and_atomic(tmp_path, monkeypatch):
    def make():
        return nnxc.trace(block(train=True), "f32[B,4]")
    path = tmp_path / "m.onnx"
    a = export_onnx(make(), path).SerializeToString()
    first = path.read_bytes()
    assert export_onnx(make()).SerializeToString() == a
    export_onnx(make(), path)
    assert path.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    with pytest.raises(nnxc.UnsupportedOpError):  # a failed export leaves the old file alone
        export_onnx(nnxc.trace(WithOdd(), "f32[3]"), path)

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        export_onnx(make(), path, external_data=True)
    assert path.read_bytes() == first and sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_external_data_round_trip(tmp_path):
    g = nnxc.trace(block(), "f32[B,4]")
    path = tmp_path / "m.onnx"
    export_onnx(g, path, external_data=True)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0] == "m.onnx" and re.fullmatch(r"m\.onnx\.[0-9a-f]{16}\.data", files[1])
    x = normal(2, 4)
    want = nnxc.compile(g)(x)
    np.testing.assert_allclose(run_onnx(onnx_session(path), x)[0], want, rtol=1e-5, atol=1e-6)
    model = load_onnx(path)
    np.testing.assert_allclose(run_onnx(onnx_session(model), x)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(nnxc.NnxcError, match="plain file name"):
        export_onnx(g, path, external_data="../elsewhere.bin")


# -- the loader refuses external data outside the model's folder ----------------------------

def _crafted(tmp_path, location=None, offset=None):
    """An exported model whose external data entries are rewritten."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    export_onnx(nnxc.trace(block(), "f32[B,4]"), path, external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and location is not None:
                e.value = location
            if e.key == "offset" and offset is not None:
                e.value = str(offset)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked folder", "offset", "missing"])
def test_loader_refuses_data_outside_the_model_folder(tmp_path, how):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    if how == "absolute":
        path = _crafted(tmp_path, str(secret))
    elif how == "dotdot":
        path = _crafted(tmp_path, "../secret.bin")
    elif how == "symlink":
        path = _crafted(tmp_path, "link.bin")
        os.symlink(secret, path.parent / "link.bin")
    elif how == "symlinked folder":
        path = _crafted(tmp_path, "sub/secret.bin")
        os.symlink(tmp_path, path.parent / "sub")
    elif how == "offset":
        path = _crafted(tmp_path, offset=10**9)
    else:
        path = _crafted(tmp_path, "nope.bin")
    with pytest.raises(UnsafeModelError):
        load_onnx(path)
    with pytest.raises(UnsafeModelError):
        onnx_session(path)


# -- crosscheck ----------------------------------------------------------------------------

def test_crosscheck_table():
    report = nnxc.crosscheck(nnxc.trace(block(train=True), "f32[B,4]"))
    assert report.ok, str(report)
    sizes = {r["size"] for r in report.rows}
    assert sizes == {1, 3}
    assert {r["backend"] for r in report.rows} == {"xla", "onnx"}
    assert any(r["output"] == "drop.rngs.count (update)" for r in report.rows)
    text = str(report)
    assert "reference: jax" in text and "max abs err" in text
    given = nnxc.crosscheck(lambda x: jnp.sin(x) * 2, normal(4), backends=("jax", "onnx"))
    assert given.ok and [r["size"] for r in given.rows] == ["given"]


# -- more than 2 GB of weights -----------------------------------------------------------

class Big(nnx.Module):
    def __init__(self, n):
        self.w = nnx.Param(jnp.arange(n, dtype=jnp.float32))

    def __call__(self, x):
        return x * self.w[-4:] + self.w[:4]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_over_2gb_uses_external_data(tmp_path):
    n = 600_000_000  # 2.4 GB of float32
    g = nnxc.trace(Big(n), "f32[4]")
    path = tmp_path / "big.onnx"
    peak, done = [_rss()], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(_rss())
            time.sleep(0.01)
    thread = threading.Thread(target=sample)
    before = _rss()
    thread.start()
    try:
        export_onnx(g, path)
    finally:
        done.set()
        thread.join()
    assert max(peak) - before < 0.5 * 4 * n  # the weights are streamed, never copied whole
    data = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".data")]
    assert len(data) == 1 and os.path.getsize(os.path.join(os.path.dirname(path), data[0])) >= 4 * n and os.path.getsize(path) < 2**20
    x = normal(4)
    got = run_onnx(onnx_session(path), x)[0]
    np.testing.assert_array_equal(got, g.meta["reference"](x))
