"""``nnxc export --quantize int8 / --precision fp16`` and ``nnxc.quantize_onnx``: the ONNX
onnxruntime's tools return is really quantized (or fp16), loads and runs in onnxruntime, its
accuracy table holds the numbers one computes independently (onnxruntime's outputs against
the Flax model called directly), errors stay within the stated bounds, and a wrong export
fails the check."""
from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import nnxc
from nnxc.runtime import quantize as q
from nnxc.runtime.onnx_io import op_types

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)

from cnn import cnn  # noqa: E402
from gpt import gpt  # noqa: E402
from mlp import mlp  # noqa: E402

SAMPLES = 4


@pytest.fixture(scope="module")
def traced():
    """name -> (the Flax model, its traced graph); traced once for the module."""
    out = {}
    for name, make, spec in (("mlp", mlp, "f32[B,64]"), ("gpt", gpt, "i32[B,8]")):
        model = make()
        out[name] = (model, nnxc.trace(model, spec))
    return out


def weights(model, data_type) -> list[str]:
    """The weight matrices and kernels of ``data_type``: initializers with two or more axes
    longer than 1 (a BatchNorm scale reshaped to [1, 32] is none)."""
    return sorted(t.name for t in model.graph.initializer
                  if t.data_type == data_type and sum(d > 1 for d in t.dims) >= 2)


def f32_weights_read(model) -> list[str]:
    """MatMul, Gemm and Conv nodes that read an f32 weight matrix or kernel (all of them
    should read int8 weights, directly or through DequantizeLinear)."""
    f32 = set(weights(model, TensorProto.FLOAT))
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in f32 for i in n.input)]


def independent(model, path, inputs) -> dict:
    """max abs err, max|ref| and top-1 agreement of the ONNX file in onnxruntime against the
    Flax model called directly (not through nnxc), over the draws."""
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    err = scale = 0.0
    agree = rows = 0
    for flat in inputs:
        (x,) = flat
        ref = np.asarray(model(x), np.float64)
        got = np.asarray(session.run(None, {name: np.asarray(x)})[0], np.float64)
        assert got.shape == ref.shape
        err = max(err, float(np.max(np.abs(got - ref))))
        scale = max(scale, float(np.max(np.abs(ref))))
        agree += int(np.sum(ref.argmax(-1) == got.argmax(-1)))
        rows += ref.size // ref.shape[-1]
    return {"abs": err, "scale": scale, "rel": err / scale, "top1": agree, "top1_n": rows}


def assert_row(row: dict, want: dict, bound: float) -> None:
    assert row["abs"] == pytest.approx(want["abs"], rel=1e-4, abs=1e-7)
    assert row["scale"] == pytest.approx(want["scale"], rel=1e-6)
    assert row["rel"] == pytest.approx(want["rel"], rel=1e-4, abs=1e-7)
    assert (row["top1"], row["top1_n"]) == (want["top1"], want["top1_n"])
    assert 0 < want["rel"] <= bound and row["ok"]


# -- int8 dynamic: the example MLP and GPT -------------------------------------------------

@pytest.mark.parametrize("name, n_weights", [("mlp", 3), ("gpt", 13)])
def test_dynamic_int8(traced, tmp_path, name, n_weights):
    model, graph = traced[name]
    path = tmp_path / f"{name}.int8.onnx"
    result = nnxc.quantize_onnx(graph, path, quantize="int8", samples=SAMPLES, seed=1)
    assert result.kind == "int8 dynamic"  # no Conv: dynamic by default
    written = onnx.load(path)
    assert written.SerializeToString() == result.model.SerializeToString()
    ops = op_types(written.graph)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    # every projection's weight is int8, named by its variable path (folded from the
    # [d, heads, head_dim] kernels for attention); no MatMul reads an f32 weight (the
    # embedding tables, read by Gather, stay f32)
    int8 = weights(written, TensorProto.INT8)
    assert len(int8) == n_weights and f32_weights_read(written) == []
    assert all(n.endswith(".kernel_quantized") or n.endswith(".kernel.folded_quantized")
               for n in int8), int8
    if name == "gpt":
        assert "blocks.0.attn.query.kernel.folded_quantized" in int8
        assert weights(written, TensorProto.FLOAT) == [
            f"blocks.{i}.attn.{p}.bias.folded" for i in (0, 1) for p in ("key", "query", "value")
        ] + ["pos.embedding.folded", "tok.embedding"]
    props = {p.key: p.value for p in written.metadata_props}
    assert props["nnxc.precision"].startswith("int8 dynamic") and props["nnxc.graph"]
    onnx.checker.check_model(written, full_check=True)
    draws, described = q.sample_inputs(graph, samples=SAMPLES, seed=1)
    assert described.startswith(f"{SAMPLES} random draws (seed 1")
    (row,) = result.accuracy.rows
    assert_row(row, independent(model, path, draws), q.TOLERANCE["int8 dynamic"])
    text = str(result.accuracy)
    assert "int8 dynamic" in text and f"{row['abs']:.3g}" in text and "✓" in text


# -- int8 static: the example CNN, calibrated on the user's data (CLI) ----------------------

def accuracy_rows(stdout: str) -> dict:
    """The accuracy table's rows printed by the CLI: output -> [abs, rel, scale]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accuracy of"))
    rows = {}
    for line in lines[start + 5:]:
        parts = line.split()
        rows[parts[0]] = [float(v) for v in parts[1:4]]
    return rows


def test_static_int8_cnn_on_given_data(tmp_path):
    x = np.random.default_rng(3).standard_normal((12, 16, 16, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "cnn.int8.onnx"
    r = cli_inprocess.run("export", f"{EXAMPLES}/cnn.py:cnn", "-i", f"x={tmp_path / 'x.npy'}",
                          "-o", out, "--quantize", "int8", "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "int8 static" in r.stderr  # a Conv: static by default
    assert "on the given inputs (also its calibration inputs)" in r.stdout
    model = onnx.load(out)
    ops = op_types(model.graph)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # QDQ: both Conv kernels (folded from HWIO by quant_pre_process) and the head are int8,
    # per output channel
    named = {"conv1.kernel.folded_quantized", "conv2.kernel.folded_quantized",
             "head.kernel_quantized"}
    assert named <= set(weights(model, TensorProto.INT8))
    assert f32_weights_read(model) == []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in named:
            scale = next(t for t in model.graph.initializer if t.name == node.input[1])
            assert len(scale.dims) == 1 and scale.dims[0] > 1  # a scale per channel
    want = independent(cnn(), out, [[x]])
    abs_err, rel, scale = accuracy_rows(r.stdout)["output"]
    assert abs_err == pytest.approx(want["abs"], rel=2e-3)  # printed with 3 digits
    assert rel == pytest.approx(want["rel"], rel=2e-3)
    assert scale == pytest.approx(want["scale"], rel=2e-3)
    assert f"({want['top1']}/{want['top1_n']})" in r.stdout
    assert 0 < want["rel"] <= q.TOLERANCE["int8 static"]


# -- fp16 -------------------------------------------------------------------------------------

def test_fp16_gpt(traced, tmp_path):
    model, graph = traced["gpt"]
    path = tmp_path / "gpt.fp16.onnx"
    result = nnxc.quantize_onnx(graph, path, precision="fp16", samples=SAMPLES)
    written = onnx.load(path)
    # weights in fp16, the signature unchanged: i32 tokens in, f32 logits out
    assert weights(written, TensorProto.FLOAT) == [] and len(weights(written, TensorProto.FLOAT16)) >= 13
    assert [i.type.tensor_type.elem_type for i in written.graph.input] == [TensorProto.INT32]
    assert [o.type.tensor_type.elem_type for o in written.graph.output] == [TensorProto.FLOAT]
    onnx.checker.check_model(written, full_check=True)  # nodes in order, types consistent
    draws, _ = q.sample_inputs(graph, samples=SAMPLES)
    (row,) = result.accuracy.rows
    want = independent(model, path, draws)
    assert_row(row, want, q.TOLERANCE["fp16"])
    assert want["rel"] > 1e-5  # really computed in lower precision


def test_fp16_cli_prints_the_table(tmp_path):
    out = tmp_path / "mlp.fp16.onnx"
    r = cli_inprocess.run("export", f"{EXAMPLES}/mlp.py:mlp", "-i", "x:f32[B,64]", "-o", out,
                          "--precision", "fp16", "--samples", "2", "--seed", "5", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "accuracy of fp16" in r.stdout and "2 random draws (seed 5" in r.stdout
    assert "max abs err <= 0.01 x max|ref| (fp16)" in r.stdout
    ((abs_err, rel, scale),) = accuracy_rows(r.stdout).values()
    assert 0 < rel <= 1e-2
    assert weights(onnx.load(out), TensorProto.FLOAT16)


# -- a wrong export fails the check --------------------------------------------------------------

WRONG = textwrap.dedent("""
    import sys
    sys.path.insert(0, {examples!r})
    from mlp import mlp
    from nnxc.backends.onnx.table import ONNX_RULES

    _right = ONNX_RULES["tanh"]

    def wrong_mlp():  # gelu's tanh exported with its sign flipped
        ONNX_RULES["tanh"] = lambda b, node, xs: b.op("Neg", _right(b, node, xs))
        return mlp()
""")


@pytest.mark.parametrize("flags", [["--quantize", "int8"], ["--precision", "fp16"]])
def test_wrong_export_fails_the_check(tmp_path, flags):
    models = tmp_path / "wrong_models.py"
    models.write_text(WRONG.format(examples=EXAMPLES))
    out = tmp_path / "wrong.onnx"
    r = cli_inprocess.run("export", f"{models}:wrong_mlp", "-i", "x:f32[B,64]", "-o", out,
                          *flags, "--check", "--samples", "2", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    ((abs_err, rel, scale),) = accuracy_rows(r.stdout).values()
    assert rel > 0.2
    assert "✗" in r.stdout.split("accuracy of")[1]
    # XLA is right: only the converted ONNX model is off
    assert "✗" not in r.stdout.split("accuracy of")[0]


def test_accuracy_fails_a_wrong_model(traced):
    """The same accuracy function on the right model and on one with its output negated."""
    _, graph = traced["mlp"]
    result = nnxc.quantize_onnx(graph, quantize="int8", samples=2)
    assert result.accuracy.ok
    wrong = onnx.ModelProto()
    wrong.CopyFrom(result.model)
    out = wrong.graph.output[0].name
    for node in wrong.graph.node:
        node.output[:] = [o + ".right" if o == out else o for o in node.output]
    wrong.graph.node.append(onnx.helper.make_node("Neg", [out + ".right"], [out]))
    draws, _ = q.sample_inputs(graph, samples=2)
    report = q.accuracy(graph, wrong, draws, kind="int8 dynamic")
    (row,) = report.rows
    assert not report.ok and not row["ok"] and row["rel"] > 1.5
    assert row["top1"] < row["top1_n"]


# -- misuse: one line, exit 2, nothing written ----------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--quantize-mode", "static"], "--quantize-mode needs --quantize int8"),
    (["--quantize", "int8", "--precision", "fp16"], "--quantize and --precision exclude each other"),
    (["--quantize", "int8", "--weights-as-inputs"], "--weights-as-inputs leaves none in it"),
    (["--precision", "fp16", "--external-data"], "--external-data is not supported"),
    (["--precision", "bf16"], "CPU provider has no bf16 kernel for MatMul"),
    (["--samples", "4"], "--samples needs --quantize or --precision"),
    (["--quantize", "int4"], "invalid choice: 'int4'"),
    (["--quantize", "int8", "--samples", "0"], "expected a positive integer"),
])
def test_misuse(tmp_path, flags, message):
    out = tmp_path / "m.onnx"
    r = cli_inprocess.run("export", f"{EXAMPLES}/mlp.py:mlp", "-i", "x:f32[B,64]", "-o", out, *flags)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.startswith("nnxc")
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert os.listdir(tmp_path) == []


def test_api_misuse(traced):
    _, graph = traced["mlp"]
    with pytest.raises(nnxc.SpecError, match="give quantize='int8' or precision='fp16'"):
        nnxc.quantize_onnx(graph)
    with pytest.raises(nnxc.SpecError, match="mode needs quantize='int8'"):
        nnxc.quantize_onnx(graph, mode="static")
    with pytest.raises(nnxc.SpecError, match="bf16 export is not supported"):
        nnxc.quantize_onnx(graph, precision="bf16")
