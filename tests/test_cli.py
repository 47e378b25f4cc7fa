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
    assert main(["check", f"{model_file}:net", "-i", "x:f32[B,4]", "--sizes", "1,4", "--no-onnx"]) == 0
    captured = capsys.readouterr()
    assert "training mode" in captured.err and "bn.mean" in captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("out ")]
    assert len(rows) == 2 and all(line.rstrip().endswith("✓") for line in rows)
    assert " 0 " in rows[0]  # bit-exact: max abs err 0


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
