"""Weights from files: Orbax checkpoints (checkpoint=DIR, --checkpoint) and safetensors
(weights=FILE, --weights) restored into a model before tracing, the errors when they do not
fit, and the refusal of checkpoints that would unpickle."""
from __future__ import annotations

import os
import pickle
import sys
import warnings

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn
from flax import nnx
from safetensors.numpy import save_file

import nnxc
from nnxc.errors import NnxcWarning

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
from mlp import MLP, mlp  # noqa: E402

X = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)


def _save(path, tree) -> str:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(path), tree)
    ckpt.wait_until_finished()
    return str(path)


def _trained() -> MLP:
    """An MLP whose every variable differs from a fresh mlp(0): other init, moved statistics."""
    model = mlp(3)
    model.bn1.mean[...] = model.bn1.mean[...] + 0.25
    model.bn2.var[...] = model.bn2.var[...] * 2.0
    model.head.bias[...] = model.head.bias[...] + 1.0
    return model


def _own(model, x):
    return nnx.jit(lambda m, v: m(v))(model, x)


def _host(a):
    return np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _trained()
    path = _save(tmp_path_factory.mktemp("ckpt") / "mlp", nnx.state(model))
    return model, path


# -- Orbax -----------------------------------------------------------------------------

def test_checkpoint_restores_the_saved_model_bit_for_bit(saved):
    model, path = saved
    fresh = mlp(0)
    before = np.asarray(fresh.linear1.kernel[...])
    assert not np.allclose(_own(fresh, X), _own(model, X))  # the two models differ
    g = nnxc.trace(fresh, "f32[B,64]", checkpoint=path)
    np.testing.assert_array_equal(np.asarray(nnxc.compile(g)(X)), np.asarray(_own(model, X)))
    want = nnxc.trace(model, "f32[B,64]").state()
    for k, v in g.state().items():
        np.testing.assert_array_equal(_host(v), _host(want[k]), err_msg=k)
    np.testing.assert_array_equal(np.asarray(fresh.linear1.kernel[...]), before)  # left alone
    # the graph's reference is the restored model too: the crosscheck is exact
    report = nnxc.crosscheck(g, backends=("jax", "xla"))
    assert report.ok


def test_pure_dict_checkpoints_restore_too(tmp_path):
    model = _trained()
    path = _save(tmp_path / "pure", nnx.to_pure_dict(nnx.state(model)))
    g = nnxc.trace(mlp(0), "f32[B,64]", checkpoint=path)
    np.testing.assert_array_equal(np.asarray(nnxc.compile(g)(X)), np.asarray(_own(model, X)))


def test_a_checkpoint_of_another_shape_names_the_variable_and_both_shapes(tmp_path):
    path = _save(tmp_path / "wide", nnx.state(MLP(din=48, rngs=nnx.Rngs(0))))
    with pytest.raises(nnxc.NnxcError) as e:
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=path)
    msg = str(e.value)
    assert "does not fit MLP" in msg
    assert "linear1.kernel: the model has f32[64,32], the checkpoint f32[48,32]" in msg
    assert "bn1" not in msg  # only what differs


def test_missing_and_extra_paths_are_listed(tmp_path):
    path = _save(tmp_path / "params", nnx.state(mlp(0), nnx.Param))
    with pytest.raises(nnxc.NnxcError, match=r"missing from the checkpoint: bn1\.mean, bn1\.var, bn2\.mean, "
                                             r"bn2\.var, dropout\.rngs\.count, dropout\.rngs\.key"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=path)
    tree = nnx.to_pure_dict(nnx.state(mlp(0)))
    tree["extra"] = {"w": np.zeros(3, np.float32)}
    path = _save(tmp_path / "extra", tree)
    with pytest.raises(nnxc.NnxcError, match=r"in the checkpoint but not in the model: extra\.w"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=path)


class _Boom:
    """Unpickling this creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["checkpoint", "_aux_pickle", "d/extra", "msgpack"])
def test_checkpoints_holding_pickles_are_refused(saved, tmp_path, where):
    import shutil
    _, src = saved
    path = tmp_path / "ckpt"
    shutil.copytree(src, path)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"params": _Boom(str(marker))})
    if where == "msgpack":  # an aggregated msgpack file with a pickled record inside
        (path / "checkpoint").write_bytes(msgpack.packb({"params": {"w": payload}}, use_bin_type=True))
    else:
        os.makedirs(os.path.dirname(path / where), exist_ok=True)
        (path / where).write_bytes(payload)
    with pytest.raises(nnxc.NnxcError, match="pickle"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=str(path))
    assert not marker.exists()
    assert pickle.loads(payload) and marker.exists()  # the payload really runs code


def test_protocol_0_pickles_and_links_are_refused(saved, tmp_path):
    import shutil
    _, src = saved
    path = tmp_path / "ckpt"
    shutil.copytree(src, path)
    (path / "aux").write_bytes(pickle.dumps([1, 2, 3], protocol=0))
    with pytest.raises(nnxc.NnxcError, match="aux is a pickle"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=str(path))
    os.remove(path / "aux")
    os.symlink("/etc/hostname", path / "outside")
    with pytest.raises(nnxc.NnxcError, match="outside is a link"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint=str(path))
    os.remove(path / "outside")
    nnxc.trace(mlp(0), "f32[B,64]", checkpoint=str(path))  # the clean copy restores


def test_is_pickle_knows_pickles_from_checkpoint_files(saved):
    import io

    from nnxc.frontend.checkpoint import is_pickle
    _, path = saved
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert is_pickle(io.BytesIO(pickle.dumps({"a": [1, 2.5]}, protocol=proto)))
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert not is_pickle(f), name
    assert not is_pickle(io.BytesIO(b'{"json": [1, 2]}'))


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Dense(3)(nn.relu(x))


def test_linen_variables_restore(tmp_path):
    module = _LinenNet()
    saved = module.init(jax.random.key(1), jnp.ones((2, 4)))
    saved = jax.tree_util.tree_map(lambda a: a + 0.5, saved)  # batch stats too
    path = _save(tmp_path / "linen", saved)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    want = np.asarray(jax.jit(module.apply)(saved, x))
    fresh = module.init(jax.random.key(0), jnp.ones((2, 4)))
    assert not np.allclose(jax.jit(module.apply)(fresh, x), want)
    for g in (nnxc.trace(module, "f32[B,4]", variables=fresh, checkpoint=path),
              nnxc.trace(module, "f32[B,4]", checkpoint=path),  # lazily initialized, then restored
              nnxc.trace(module.bind(fresh), "f32[B,4]", checkpoint=path)):
        np.testing.assert_array_equal(np.asarray(nnxc.compile(g)(x)), want)
    wrong = _save(tmp_path / "wrong", jax.tree_util.tree_map(lambda a: a[..., :1], saved))
    with pytest.raises(nnxc.NnxcError, match=r"Dense_0\.kernel: the model has f32\[4,8\], the checkpoint f32\[4,1\]"):
        nnxc.trace(module, "f32[B,4]", variables=fresh, checkpoint=wrong)


def _train_step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def test_a_training_step_restores_its_model(saved):
    model, path = saved
    fresh = mlp(0)
    opt = nnx.Optimizer(fresh, optax.adam(1e-3), wrt=nnx.Param)
    g = nnxc.trace(_train_step, fresh, opt, "f32[B,64]", "i32[B]", checkpoint=path)
    state = g.state()
    np.testing.assert_array_equal(np.asarray(state["model.linear1.kernel"]), np.asarray(model.linear1.kernel[...]))
    np.testing.assert_array_equal(np.asarray(state["model.bn1.mean"]), np.asarray(model.bn1.mean[...]))
    ref = _trained()  # the saved model, as a copy: the step changes it
    ref_opt = nnx.Optimizer(ref, optax.adam(1e-3), wrt=nnx.Param)
    y = np.arange(4, dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(nnxc.compile(g)(X, y)),
                                  np.asarray(nnx.jit(_train_step)(ref, ref_opt, X, y)))


def test_nothing_to_restore_into_is_an_error(saved):
    with pytest.raises(nnxc.NnxcError, match="no variables to restore"):
        nnxc.trace(lambda x: x * 2, "f32[3]", checkpoint=saved[1])
    with pytest.raises(nnxc.NnxcError, match="checkpoint folder not found"):
        nnxc.trace(mlp(0), "f32[B,64]", checkpoint="/nonexistent/ckpt")


# -- safetensors ----------------------------------------------------------------------------

def _weights(model) -> dict:
    return {k: _host(v) for k, v in nnxc.trace(model, "f32[B,64]").state().items()}


def test_safetensors_weights_restore_bit_for_bit(tmp_path):
    model = _trained()
    path = str(tmp_path / "w.safetensors")
    save_file(_weights(model), path)  # RNG keys as their key data
    with warnings.catch_warnings():
        warnings.simplefilter("error", NnxcWarning)  # every variable given: no warning
        g = nnxc.trace(mlp(0), "f32[B,64]", weights=path)
    np.testing.assert_array_equal(np.asarray(nnxc.compile(g)(X)), np.asarray(_own(model, X)))


def test_safetensors_missing_keys_warn_unknown_keys_and_bad_dtypes_fail(tmp_path):
    weights = _weights(_trained())
    params = {k: v for k, v in weights.items() if "mean" not in k and "rngs" not in k}
    path = str(tmp_path / "params.safetensors")
    save_file(params, path)
    with pytest.warns(NnxcWarning, match=r"no value for 2 variable\(s\), which keep the model's own "
                                         r"values: bn1\.mean, bn2\.mean$"):
        g = nnxc.trace(mlp(0), "f32[B,64]", weights=path)
    np.testing.assert_array_equal(np.asarray(g.state()["linear2.kernel"]), params["linear2.kernel"])
    save_file({**params, "linear1.kernal": params["linear1.kernel"]}, path)
    with pytest.raises(nnxc.NnxcError, match=r"not variables of the model: linear1\.kernal "
                                             r"\(did you mean linear1\.kernel\?\)"):
        nnxc.trace(mlp(0), "f32[B,64]", weights=path)
    save_file({**params, "linear1.kernel": params["linear1.kernel"].astype(np.float16)}, path)
    with pytest.raises(nnxc.NnxcError, match=r"linear1\.kernel: the model has f32\[64,32\], the file f16\[64,32\]"):
        nnxc.trace(mlp(0), "f32[B,64]", weights=path)
    save_file({**params, "head.kernel": params["head.kernel"].T.copy()}, path)
    with pytest.raises(nnxc.NnxcError, match=r"head\.kernel: the model has f32\[32,10\], the file f32\[10,32\]"):
        nnxc.trace(mlp(0), "f32[B,64]", weights=path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(nnxc.NnxcError, match="not a readable safetensors file"):
        nnxc.trace(mlp(0), "f32[B,64]", weights=str(tmp_path / "junk.safetensors"))


# -- the command line -------------------------------------------------------------------------

def _nnxc(*argv):
    return cli_inprocess.run(*argv, cwd=ROOT)


def test_cli_check_and_compile_with_a_checkpoint(saved, tmp_path):
    model, path = saved
    r = _nnxc("check", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "--checkpoint", path,
              "--no-onnx")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()
            if line.startswith("output ") and "backend" not in line]
    assert rows and all(row[2] == "xla" and float(row[3]) == 0.0 and row[-1] == "✓" for row in rows)
    assert f"weights from {path}" in r.stderr
    out = tmp_path / "mlp.nnxc"
    r = _nnxc("compile", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "--checkpoint", path,
              "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    art = nnxc.load(str(out))
    np.testing.assert_array_equal(np.asarray(art(X)), np.asarray(_own(model, X)))


def test_cli_weights_and_errors(saved, tmp_path):
    model, _ = saved
    weights = str(tmp_path / "w.safetensors")
    save_file(_weights(model), weights)
    onnx_path = tmp_path / "mlp.onnx"
    r = _nnxc("export", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--eval", "--weights", weights,
              "-o", str(onnx_path), "-q")
    assert r.returncode == 0, r.stderr
    from nnxc.runtime.onnx_io import load_onnx
    import onnx.numpy_helper
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in load_onnx(str(onnx_path)).graph.initializer}
    np.testing.assert_array_equal(inits["linear1.kernel"], np.asarray(model.linear1.kernel[...]))
    wide = _save(tmp_path / "wide", nnx.state(MLP(din=48, rngs=nnx.Rngs(0))))
    r = _nnxc("ir", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--checkpoint", wide)
    assert r.returncode == 1 and r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.startswith("nnxc: error")]
    assert len(lines) == 1 and "linear1.kernel: the model has f32[64,32], the checkpoint f32[48,32]" in lines[0]
    r = _nnxc("ir", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--checkpoint", str(tmp_path / "nope"))
    assert r.returncode == 2 and "checkpoint folder not found" in r.stderr
    r = _nnxc("ir", "examples/mlp.py:mlp", "-i", "x:f32[B,64]", "--checkpoint", wide, "--weights", weights)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
