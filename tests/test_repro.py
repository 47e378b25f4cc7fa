"""``--repro DIR`` (``nnxc check``, ``nnxc export --check``) and ``crosscheck(..., repro=DIR)``:
on a mismatch a self-contained folder is written whose ``repro.py`` reproduces it in a fresh
process with only those files and nnxc; a clean check writes nothing."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnxc
from nnxc.backends.onnx.table import ONNX_RULES

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
FILES = {"model.ir", "weights.npz", "inputs.npz", "model.onnx", "reference.npz", "check.json",
         "versions.json", "report.txt", "repro.py"}

MODELS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {examples!r})
    import jax.numpy as jnp
    from flax import nnx
    from gpt import gpt as _gpt
    from nnxc.backends.onnx.table import ONNX_RULES

    _right = ONNX_RULES["tanh"]

    def _wrong_tanh(b, node, xs):  # 0.1% off
        out = _right(b, node, xs)
        if node.path in ("blocks.1", "act"):
            out = b.op("Mul", out, b.scalar(1.001, "f32"))
        return out

    def bad_gpt():
        ONNX_RULES["tanh"] = _wrong_tanh
        return _gpt()

    def gpt():
        return _gpt()

    class Tanh(nnx.Module):
        def __call__(self, x):
            return jnp.tanh(x)

    class Net(nnx.Module):  # a BatchNorm in training mode: variable updates too
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.act = Tanh()

        def __call__(self, x):
            return self.act(self.bn(self.fc(x)))

    def net():
        return Net(nnx.Rngs(0))

    def bad_net():
        ONNX_RULES["tanh"] = _wrong_tanh
        return net()
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("repro_models") / "repro_models.py"
    path.write_text(MODELS.format(examples=EXAMPLES))
    return str(path)


def run(*argv, cwd=None):
    """A fresh process: what a user does with the written ``repro.py``."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=600, cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    return r


nnxc_cmd = cli_inprocess.run  # the CLI in this process (the bad factories' rules are put back)


ROW = re.compile(r"^(\S+(?: \(update\))?)\s+(\d+)\s+(xla|onnx)\s+(\S+)\s+\S+\s+([✓✗])")


def table(stdout: str) -> dict:
    """``(output, size, backend) -> (max abs err text, mark)`` from a printed cross-check table."""
    rows = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[(m[1], int(m[2]), m[3])] = (m[4], m[5])
    return rows


def test_check_repro_folder_reproduces_the_mismatch_and_a_clean_check_writes_none(models, tmp_path):
    folder = tmp_path / "repro"
    r = nnxc_cmd("check", f"{models}:bad_gpt", "-i", "tokens:i32[B,8]", "--sizes", "1,3",
            "--repro", str(folder), "-q")
    assert r.returncode == 1, r.stderr
    assert f"repro: wrote {folder} (python {folder}/repro.py reproduces the mismatch)" in r.stdout
    assert FILES <= set(os.listdir(folder))
    check = json.loads((folder / "check.json").read_text())
    assert check["size"] == 1 and check["reference"] == "jax" and check["exact_promised"] is True
    assert {(f["output"], f["size"], f["backend"]) for f in check["failures"]} == {
        ("output", 1, "onnx"), ("output", 3, "onnx")}
    versions = json.loads((folder / "versions.json").read_text())
    assert set(versions) == {"python", "numpy", "jax", "jaxlib", "flax", "onnx", "onnxruntime", "nnxc"}
    assert versions["nnxc"] == nnxc.__version__ and versions["numpy"] == np.__version__
    # the saved files are the real ones: the graph, its inputs, and the model's own outputs on them
    graph = nnxc.ir.parse((folder / "model.ir").read_text())
    assert [v.name for v in graph.inputs] == ["tokens"] and "elided<" not in (folder / "model.ir").read_text()
    tokens = np.load(folder / "inputs.npz")["tokens"]
    assert tokens.shape == (1, 8) and tokens.dtype == np.int32
    sys.path.insert(0, EXAMPLES)
    from gpt import gpt
    want = np.asarray(gpt()(tokens))
    np.testing.assert_allclose(np.load(folder / "reference.npz")["output"], want, rtol=1e-5, atol=1e-5)

    before = table(r.stdout)
    rep = run(sys.executable, str(folder / "repro.py"), cwd=str(tmp_path))  # a fresh process
    assert rep.returncode == 1, rep.stdout + rep.stderr
    after = table(rep.stdout)
    assert after == {k: v for k, v in before.items() if k[1] == 1}  # the same rows, the same errors
    assert after[("output", 1, "onnx")][1] == "✗" and after[("output", 1, "xla")] == ("0", "✓")
    assert "mismatch: onnx output" in rep.stdout

    clean = tmp_path / "clean"
    r = nnxc_cmd("check", f"{models}:gpt", "-i", "tokens:i32[B,8]", "--sizes", "1", "--repro", str(clean), "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not clean.exists() and "repro:" not in r.stdout


def test_export_check_repro_with_updates_and_a_fixed_model_passes(models, tmp_path):
    folder = tmp_path / "r"
    r = nnxc_cmd("export", f"{models}:bad_net", "-i", "x:f32[B,4]", "-o", str(tmp_path / "net.onnx"),
            "--check", "--sizes", "2", "--repro", str(folder), "-q")
    assert r.returncode == 1, r.stderr
    assert FILES <= set(os.listdir(folder))
    check = json.loads((folder / "check.json").read_text())
    assert check["updates"] == ["bn.mean", "bn.var"]
    ref = np.load(folder / "reference.npz")
    assert set(ref.files) == {"output", "bn.mean (update)", "bn.var (update)"}
    assert ref["bn.mean (update)"].shape == (3,) and np.any(ref["bn.mean (update)"] != 0)
    rep = run(sys.executable, str(folder / "repro.py"))
    assert rep.returncode == 1
    rows = table(rep.stdout)
    assert set(rows) == {("output", 2, "xla"), ("output", 2, "onnx"), ("bn.mean (update)", 2, "onnx"),
                         ("bn.var (update)", 2, "onnx")}
    assert rows == table(r.stdout)  # the same rows with the same errors as the check
    assert rows[("output", 2, "onnx")][1] == "✗" and rows[("bn.mean (update)", 2, "onnx")][1] == "✓"

    # the same folder with a correct ONNX model (same weights: same seed) passes, with notes of
    # version drift on stderr when versions.json says otherwise
    good = nnxc_cmd("export", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(folder / "model.onnx"), "-q")
    assert good.returncode == 0, good.stderr
    versions = json.loads((folder / "versions.json").read_text())
    (folder / "versions.json").write_text(json.dumps({**versions, "jax": "0.0.1"}))
    rep = run(sys.executable, str(folder / "repro.py"))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "no mismatch: every output is within tolerance" in rep.stdout
    assert all(mark == "✓" for _, mark in table(rep.stdout).values())
    assert f"note: jax: the repro was written with 0.0.1, this is {versions['jax']}" in rep.stderr


def test_crosscheck_repro_api(tmp_path, monkeypatch):
    from flax import nnx
    import jax.numpy as jnp

    class Small(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(3, 5, rngs=rngs)

        def __call__(self, x):
            return jnp.tanh(self.fc(x))

    g = nnxc.trace(Small(nnx.Rngs(0)), "f32[B,3]")
    report = nnxc.crosscheck(g, sizes=(2,), repro=tmp_path / "none")
    assert report.ok and report.repro is None and not (tmp_path / "none").exists()

    right = ONNX_RULES["tanh"]
    monkeypatch.setitem(ONNX_RULES, "tanh", lambda b, node, xs: b.op("Neg", right(b, node, xs)))
    report = nnxc.crosscheck(g, sizes=(2,), repro=tmp_path / "bad", per_module=True)
    assert not report.ok and report.repro == str(tmp_path / "bad")
    assert FILES <= set(os.listdir(tmp_path / "bad"))
    check = json.loads((tmp_path / "bad" / "check.json").read_text())
    assert check["per_module"]["first_bad"] == {"onnx": ""}  # the tanh runs at the top level
    assert "first module beyond tolerance: (top level)" in (tmp_path / "bad" / "report.txt").read_text()
    x = np.load(tmp_path / "bad" / "inputs.npz")["x"]
    out = np.load(tmp_path / "bad" / "reference.npz")["output"]
    exe = nnxc.compile(g)
    np.testing.assert_array_equal(out, np.asarray(exe(x)))  # the reference: the model's own, bit for bit
    monkeypatch.setitem(ONNX_RULES, "tanh", right)
    rep = run(sys.executable, str(tmp_path / "bad" / "repro.py"))
    assert rep.returncode == 1 and table(rep.stdout)[("output", 2, "onnx")][1] == "✗"
