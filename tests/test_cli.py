"""The nnxc command: outputs, exit codes, one-line errors with no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import nnxc
from nnxc.cli import main

MODEL = textwrap.dedent("""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.bn(self.fc(x)))

    def net():
        return Net(nnx.Rngs(0))

    def broken():
        raise RuntimeError("no weights here")
""")


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL)
    return str(path)


def test_ir_writes_parseable_text(model_file, tmp_path, capsys):
    out = tmp_path / "net.ir"
    assert main(["ir", f"{model_file}:net", "-i", "x:f32[B,4]", "--eval", "-o", str(out), "-q"]) == 0
    text = out.read_text()
    assert text.startswith("graph @Net(%x: f32[B,4]) {")
    assert "var %fc.kernel: f32[4,3] Param" in text and "@bn" in text
    assert str(nnxc.ir.parse(text)) == text
    assert main(["ir", f"{model_file}:net", "-i", "x:f32[2,4]", "--eval", "--no-locs", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "graph @Net(%x: f32[2,4])" in printed and "loc(" not in printed


def test_check_compares_with_the_model_and_warns_in_training_mode(model_file, capsys):
    assert main(["check", f"{model_file}:net", "-i", "x:f32[B,4]", "--sizes", "1,4"]) == 0
    captured = capsys.readouterr()
    assert "training mode" in captured.err and "bn.mean" in captured.err
    rows = [line.split() for line in captured.out.splitlines()
            if line.startswith("output ") and "backend" not in line]
    assert [(r[1], r[2]) for r in rows] == [("1", "xla"), ("1", "onnx"), ("4", "xla"), ("4", "onnx")]
    assert all(r[-1] == "✓" for r in rows)
    assert all(float(r[3]) == 0.0 for r in rows if r[2] == "xla")  # XLA is bit-exact


@pytest.mark.parametrize("argv, message", [
    (["ir", "{f}:nope", "-i", "x:f32[B,4]"], "has no factory 'nope' (found: Net, broken, net)"),
    (["ir", "missing.py:net", "-i", "x:f32[B,4]"], "model file not found: missing.py"),
    (["ir", "{f}", "-i", "x:f32[B,4]"], "bad model spec"),
    (["ir", "{f}:net", "-i", "x:f32[B,4"], "bad input spec"),
    (["ir", "{f}:net", "-i", "y:f32[B,4]"], "input 'y' does not match the model's argument 'x'"),
    (["ir", "{f}:net", "-k", "oops"], "bad keyword 'oops'"),
    (["check", "{f}:net", "-i", "x:f32[B,4]", "--sizes", "0"], "sizes must be >= 1"),
])
def test_misuse_exits_2_with_one_line(model_file, argv, message, capsys):
    argv = [a.replace("{f}", model_file) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("nnxc: error")]) == 1


def test_a_failing_factory_is_reported_with_its_line(model_file, capsys):
    assert main(["ir", f"{model_file}:broken", "-i", "x:f32[B,4]"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: no weights here at " in err and "net.py:16" in err


def test_console_script_runs_without_traceback(model_file):
    exe = os.path.join(os.path.dirname(sys.executable), "nnxc")
    r = subprocess.run([exe, "ir", f"{model_file}:net", "-i", "x:f32[B,4", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "bad input spec" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_export_with_passes_dump_and_check(model_file, tmp_path, capsys):
    import onnx
    onnx_path, ir_path = tmp_path / "net.onnx", tmp_path / "net.ir"
    argv = ["export", f"{model_file}:net", "-i", "x:f32[B,4]", "--eval", "-O", "inference",
            "--dump-ir", str(ir_path), "-o", str(onnx_path), "--check", "--sizes", "1,2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for stage in ("trace", "optimize", "dump IR", "lower", "check"):
        assert f"  {stage}" in captured.err and "✗" not in captured.err
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
    assert "var %bn.mean: f32[3] BatchStat" in ir_path.read_text()  # as traced
    text = (tmp_path / "net.inference.ir").read_text()  # after the passes
    assert "BatchStat" not in text and "rsqrt" not in text  # frozen, BatchNorm folded into fc
    assert [line.split(" = ")[1].split("(")[0] for line in text.splitlines() if "%" in line.split(" = ")[0] and " = " in line and "const" not in line] == ["dot_general", "max"]
    rows = [line.split() for line in captured.out.splitlines() if line.startswith("output ")]
    assert {r[2] for r in rows[1:]} == {"xla", "onnx"} and all(r[-1] == "✓" for r in rows[1:])


def test_freeze_and_prune_filters_from_the_command_line(model_file, capsys):
    assert main(["ir", f"{model_file}:net", "-i", "x:f32[B,4]", "-q", "--freeze", "BatchStat",
                 "--prune", "BatchStat", "-O", "none"]) == 0
    text = capsys.readouterr().out
    assert "BatchStat" not in text and "var %fc.kernel" in text and "update" not in text
    assert main(["ir", f"{model_file}:net", "-i", "x:f32[B,4]", "-q", "--freeze", ","]) == 2
    assert "bad filter" in capsys.readouterr().err


def test_compile_dump_and_run(model_file, tmp_path, capsys):
    import json

    import numpy as np
    art, dump = tmp_path / "net.nnxc", tmp_path / "dump"
    assert main(["compile", f"{model_file}:net", "-i", "x:f32[B,4]", "--eval", "-o", str(art),
                 "--platform", "cpu,cuda,tpu", "--dump-dir", str(dump), "-O", "default", "-q"]) == 0
    table = capsys.readouterr().out
    assert "fc" in table and "total" in table
    for name in ("ir.before.ir", "ir.after.ir", "stablehlo.mlir", "hlo.txt", "report.json"):
        assert (dump / name).stat().st_size > 0
    report = json.loads((dump / "report.json").read_text())
    assert report["cost_analysis"]["flops"] > 0 and report["memory_analysis"]["argument_size_in_bytes"] > 0
    assert nnxc.load(str(art)).manifest["platforms"] == ["cpu", "cuda", "tpu"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["run", str(art), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(out), "--repeat", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "(3, 3)" in printed and "latency" in printed
    with np.load(out, allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved[saved.files[0]], np.asarray(nnxc.load(str(art))(x)))
    assert main(["run", str(art), "--random", "--dims", "B=5", "--repeat", "0", "-q"]) == 0
    assert "(5, 3)" in capsys.readouterr().out
    assert main(["run", str(art), "-i", f"y={tmp_path / 'x.npy'}", "-q"]) == 2
    assert "missing x; unknown y" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.nnxc"), "--random"]) == 2


def test_passes_lists_every_pass_and_preset(capsys):
    from nnxc.passes import PASSES, PRESETS
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in PASSES) and all(f"  {name} " in out for name in PRESETS)


def test_numpy_on_a_traced_parameter_is_reported_with_its_line_and_a_fix(tmp_path, capsys):
    """A model that calls np.asarray on a parameter inside __call__ (a DINOv3-style ViT does):
    the error names the file and line, JAX's first line, and what to write instead."""
    src = tmp_path / "npmodel.py"
    src.write_text(textwrap.dedent("""\
        import numpy as np
        import jax.numpy as jnp
        from flax import nnx

        class M(nnx.Module):
            def __init__(self):
                self.w = nnx.Param(jnp.ones((4, 4)))

            def __call__(self, x):
                return x @ np.asarray(self.w[...])

        def m():
            return M()
        """))
    assert main(["ir", f"{src}:m", "-i", "x:f32[2,4]"]) == 1
    err = capsys.readouterr().err
    assert f"TracerArrayConversionError at {src}:10: " in err
    assert "use jnp.asarray" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 4
