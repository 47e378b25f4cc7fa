"""The CLI's contract, end to end through ``nnxc.cli.main`` (in this process, streams captured;
a subprocess where JAX must start with other XLA_FLAGS): misuse
exits 2 with one line and never a traceback; filters name what is wrong; outputs go into
folders that do not exist yet; --input data, --seed, --method, --mutable, positional input
names, the factory inside --mesh, float64 .npy data, the deferred compile stage, RNG state
in --summary and nnx.capture models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnxc

import cli_inprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
NNXC = os.path.join(os.path.dirname(sys.executable), "nnxc")

MODELS = textwrap.dedent("""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    from flax import nnx


    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(4, 3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.bn(self.fc(x)))

        def encode(self, x, scale):
            return self.fc(x) * scale


    def net():
        model = Net(nnx.Rngs(0))
        model.eval()
        return model


    def seq():
        return nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
                              nnx.Linear(8, 2, rngs=nnx.Rngs(1)))


    class LinenBN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


    def linen_bn():
        module = LinenBN()
        return module, module.init(jax.random.key(0), jnp.ones((2, 4)), train=False)


    class Sharded(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
            self.fc = nnx.Linear(4, 8, kernel_init=init, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)


    def sharded():
        return Sharded(nnx.Rngs(0))
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text(MODELS)
    return str(path)


def nnxc_cmd(*argv, env=None, cwd=None):
    """Run the CLI in this process; in a subprocess when ``env`` must be set before JAX starts."""
    if env is None:
        return cli_inprocess.run(*argv, cwd=cwd)
    r = subprocess.run([NNXC, *argv], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, **env), cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def error_lines(stderr: str) -> list[str]:
    """stderr without stage lines (``  trace  ✓ ...``) and warnings: the error report."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("  ") and not line.startswith("nnxc: warning")]


def _load_model(models: str, name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location("contract_models", models)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)()


# -- misuse: exit 2, one line -------------------------------------------------------------

MLP = os.path.join(EXAMPLES, "mlp.py") + ":mlp"


@pytest.mark.parametrize("argv, message", [
    (["export", MLP, "-i", "x:f32[B,64]", "-o", "{tmp}/m.onnx", "--opset", "9"],
     "nnxc export: error: argument --opset: opset '9' is not supported: nnxc exports ai.onnx opsets 13.."),
    (["compile", MLP, "-i", "x:f32[B,64]", "-o", "{tmp}/m.nnxc", "--platform", "gpu"],
     "argument --platform: unknown platform(s) gpu: choose from cpu, cuda, rocm, tpu"),
    (["compile", MLP, "-i", "x:f32[B,64]", "-o", "{tmp}/m.nnxc", "--mesh", "data:2"],
     "argument --mesh: bad mesh 'data:2': expected axis=size pairs like data=2,model=4"),
    (["compile", MLP, "-i", "x:f32[B,64]", "-o", "{tmp}/m.nnxc", "--mesh", "data=64"],
     "mesh 'data=64' needs 64 devices, 1 available"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--depth", "two"], "argument --depth: expected a non-negative integer"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["check", MLP, "-i", "x:f32[B,64]", "--seed", "x"],
     "nnxc check: error: argument --seed: expected a non-negative integer, got 'x' (see nnxc check --help)"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--freeze", "Parm"],
     "bad filter 'Parm': unknown Variable type 'Parm': known types are BatchStat,"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--freeze", "!"], "bad filter '!': filter part '!' negates nothing"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--prune", "tag:"], "bad filter 'tag:': filter part 'tag:' names no tag"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--method", "encode"], "MLP has no method 'encode'"),
    (["ir", MLP, "-i", "x:f32[B,64]", "--mutable", "batch_stats"], "--mutable names Linen collections"),
    (["check", MLP, "-i", "x={tmp}/missing.npy"], "input file not found: {tmp}/missing.npy"),
    (["compile", MLP, "-i", "x:f32[B,64]", "-o", "{tmp}/m.nnxc", "--dump-dir", "{tmp}/d", "--dims", "C=2"],
     "--dims C: the model's inputs have the symbolic dims B"),
])
def test_misuse_exits_2_with_one_line(argv, message, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = nnxc_cmd(*argv, *([] if argv == ["frobnicate"] else ["-q"]))
    lines = error_lines(r.stderr)
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert r.stdout == ""
    assert not any(p.name.endswith((".onnx", ".nnxc")) for p in tmp_path.iterdir())  # nothing written


def test_unknown_type_lists_the_types_that_exist(models):
    r = nnxc_cmd("ir", f"{models}:net", "-i", "x:f32[B,4]", "--freeze", "BatchStat,Parm", "-q")
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    known = line.split("known types are ")[1].split(" (")[0].split(", ")
    assert {"Param", "BatchStat", "RngKey", "RngCount", "Intermediate"} <= set(known) and "Parm" not in known


def test_a_filter_that_selects_nothing_warns_and_changes_nothing(models):
    plain = nnxc_cmd("ir", f"{models}:net", "-i", "x:f32[B,4]", "-O", "none", "-q", "--no-locs")
    r = nnxc_cmd("ir", f"{models}:net", "-i", "x:f32[B,4]", "-O", "none", "-q", "--no-locs",
                 "--freeze", "BatchStat,nothere", "--prune", "*.dropout.*")
    assert plain.returncode == 0 and r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("nnxc: warning:")]
    assert len(warnings) == 2, r.stderr
    assert warnings[0] == ("nnxc: warning: filter 'nothere' selects no variable of Net (its types: "
                           "BatchStat, Param; its variables: bn.bias, bn.mean, bn.scale, bn.var, fc.bias, "
                           "fc.kernel)")
    assert "filter '*.dropout.*' selects no variable of Net" in warnings[1]
    # BatchStat was frozen, the rest is what the traced graph has
    frozen = [line for line in plain.stdout.splitlines() if "BatchStat" not in line or not line.startswith("  var")]
    got = [line for line in r.stdout.splitlines() if line.startswith("  var")]
    assert got == [line for line in frozen if line.startswith("  var")]
    assert "BatchStat" not in r.stdout


# -- outputs into missing folders ----------------------------------------------------------

def test_outputs_go_into_folders_that_do_not_exist_yet(models, tmp_path):
    import onnx
    new = tmp_path / "a" / "b"
    r = nnxc_cmd("ir", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(new / "ir" / "net.ir"), "-q")
    assert r.returncode == 0, r.stderr
    text = (new / "ir" / "net.ir").read_text()
    assert text.startswith("graph @Net(%x: f32[B,4])") and str(nnxc.ir.parse(text)) == text
    r = nnxc_cmd("export", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(new / "onnx" / "net.onnx"),
                 "--dump-ir", str(new / "dump" / "net.ir"), "-q")
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load(str(new / "onnx" / "net.onnx")), full_check=True)
    assert (new / "dump" / "net.ir").read_text().startswith("graph @Net")
    art = new / "art" / "net.nnxc"
    r = nnxc_cmd("compile", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(art),
                 "--dump-dir", str(new / "dumps" / "net"), "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads((new / "dumps" / "net" / "report.json").read_text())["cost_analysis"]["flops"] > 0
    r = nnxc_cmd("run", str(art), "--random", "--dims", "B=2", "--repeat", "0", "-q",
                 "-o", str(new / "out" / "y.npz"))
    assert r.returncode == 0, r.stderr
    with np.load(new / "out" / "y.npz") as saved:
        assert saved[saved.files[0]].shape == (2, 3)
    r = nnxc_cmd("ir", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(tmp_path), "-q")  # a folder
    assert r.returncode == 1 and error_lines(r.stderr) == [f"nnxc: error: Is a directory: {tmp_path}"]


# -- compile on a mesh ---------------------------------------------------------------------

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def test_a_static_batch_must_divide_over_the_data_axis(tmp_path):
    r = nnxc_cmd("compile", MLP, "-i", "x:f32[3,64]", "-o", str(tmp_path / "m.nnxc"), "--mesh", "data=2",
                 "-q", env=TWO_DEVICES)
    assert r.returncode == 2
    assert error_lines(r.stderr) == ["nnxc: error: input x f32[3,64]: its leading dim 3 does not divide over "
                                     "the mesh's data axis (2 devices); give a batch that is a multiple of 2 "
                                     "(or a symbolic one, -i x:f32[B,...])"]


def test_mesh_dump_with_a_symbolic_batch_needs_sizes_that_divide(tmp_path):
    argv = ["compile", MLP, "-i", "x:f32[B,64]", "-o", str(tmp_path / "m.nnxc"), "--mesh", "data=2",
            "--dump-dir", str(tmp_path / "dump"), "-q"]
    r = nnxc_cmd(*argv, env=TWO_DEVICES)
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert "input x f32[B,64] has leading dim 1 (default sizes B=1), which the mesh's data axis " \
           "(2 devices) does not divide; pass --dims with a multiple of 2, e.g. --dims B=2" in line
    r = nnxc_cmd(*argv, "--dims", "B=4", env=TWO_DEVICES)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "dump" / "report.json").read_text())
    assert report["dims"] == {"B": 4}
    # the HLO is per device: B=4 split over 2 devices is 2 rows each
    assert "f32[2,64]" in (tmp_path / "dump" / "hlo.txt").read_text()
    assert "tensor<4x64xf32>" in (tmp_path / "dump" / "stablehlo.mlir").read_text()


def test_the_factory_runs_inside_the_mesh(models, tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    art = tmp_path / "sharded.nnxc"
    r = nnxc_cmd("compile", f"{models}:sharded", "-i", "x:f32[B,4]", "-o", str(art), "--mesh", "data=1,model=2",
                 "--dump-dir", str(tmp_path / "dump"), "-q", env=TWO_DEVICES)
    assert r.returncode == 0, r.stderr
    assert 'var %fc.kernel: f32[4,8] Param {out_sharding=(None,"model")}' in \
        (tmp_path / "dump" / "ir.before.ir").read_text()
    r = nnxc_cmd("run", str(art), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npz"),
                 "--repeat", "0", "-q", env=TWO_DEVICES)
    assert r.returncode == 0, r.stderr
    import jax
    with jax.set_mesh(jax.make_mesh((1,), ("model",))):  # the same weights on one device
        want = np.asarray(_load_model(models, "sharded")(x))
    with np.load(tmp_path / "y.npz") as saved:  # the artifact runs sharded: each device
        # multiplies by a 4-column block, which XLA:CPU's dot rounds differently from the 8-column
        # product (bit-exactness against jax.jit on the same mesh: tests/test_distributed.py)
        np.testing.assert_allclose(saved[saved.files[0]], want, rtol=2e-6, atol=1e-7)
    r = nnxc_cmd("compile", f"{models}:sharded", "-i", "x:f32[B,4]", "-o", str(art), "-q")
    assert r.returncode == 1
    (line,) = error_lines(r.stderr)
    assert "An auto mesh context or metadata is required" in line
    assert line.endswith("(nnxc compile --mesh AXES calls the factory inside a mesh)")


# -- the compile stage line -----------------------------------------------------------------

def test_compile_stage_says_when_compilation_is_deferred(models, tmp_path):
    r = nnxc_cmd("compile", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(tmp_path / "a.nnxc"))
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("  compile")]
    assert line.split()[1] == "–"
    assert line.endswith("XLA: deferred until concrete sizes exist (B symbolic); the artifact compiles "
                         "for each shape it is called with")
    r = nnxc_cmd("compile", f"{models}:net", "-i", "x:f32[2,4]", "-o", str(tmp_path / "b.nnxc"))
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("  compile")]
    assert line.split()[1] == "✓" and line.endswith("XLA") and "deferred" not in line


# -- inputs: data files, seeds, names ---------------------------------------------------------

def _rows(report_text: str) -> list[list[str]]:
    return [line.split() for line in report_text.splitlines()
            if line.startswith("output") and " backend " not in line]


def test_check_runs_on_given_inputs(tmp_path):
    from nnxc.cli.models import load_factory
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", features=x)
    r = nnxc_cmd("check", MLP, "-i", "x:f32[B,64]", "-i", f"x={tmp_path / 'batch.npz'}:features", "-q")
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert [(row[1], row[2]) for row in rows] == [("given", "xla"), ("given", "onnx")]
    g = nnxc.trace(load_factory(MLP)(), "f32[B,64]")
    want = _rows(str(nnxc.crosscheck(g, x)))
    assert rows[0] == want[0]  # XLA: bit-exact, 0
    assert float(rows[1][3]) == pytest.approx(float(want[1][3]), rel=0.5, abs=1e-9)
    # data alone: its shape is the spec; a .npy without a spec
    np.save(tmp_path / "x.npy", x)
    r = nnxc_cmd("check", MLP, "-i", f"x={tmp_path / 'x.npy'}", "--no-onnx")
    assert r.returncode == 0, r.stderr
    assert "on the given inputs" in r.stderr and _rows(r.stdout)[0][1:3] == ["given", "xla"]
    r = nnxc_cmd("check", MLP, "-i", "x:f32[2,64]", "-i", f"x={tmp_path / 'x.npy'}", "-q")
    assert r.returncode == 2
    assert error_lines(r.stderr) == [f"nnxc: error: input x ({tmp_path / 'x.npy'}): shape (5, 64) does not "
                                     "fit f32[2,64]"]
    r = nnxc_cmd("check", MLP, "-i", "x:f32[B,64]", "-i", "y:f32[B,64]", "-i", f"x={tmp_path / 'x.npy'}", "-q")
    assert r.returncode == 2
    assert error_lines(r.stderr) == ["nnxc: error: inputs: give data for every input or none (no data for y)"]


def test_check_seed_draws_other_random_inputs():
    from nnxc.cli.models import load_factory
    g = nnxc.trace(load_factory(MLP)(), "f32[B,64]")
    seeded = nnxc_cmd("check", MLP, "-i", "x:f32[B,64]", "--seed", "5", "--sizes", "3")
    default = nnxc_cmd("check", MLP, "-i", "x:f32[B,64]", "--sizes", "3", "-q")
    assert seeded.returncode == 0 and default.returncode == 0, seeded.stderr
    assert "on random inputs (seed 5)" in seeded.stderr
    got5, got0 = _rows(seeded.stdout), _rows(default.stdout)
    want5 = _rows(str(nnxc.crosscheck(g, sizes=[3], seed=5)))
    want0 = _rows(str(nnxc.crosscheck(g, sizes=[3], seed=0)))
    assert want5 != want0  # the ONNX error differs with the inputs
    assert [r[:3] for r in got5] == [r[:3] for r in want5]
    for got, want in ((got5, want5), (got0, want0)):
        assert [float(r[3]) for r in got] == pytest.approx([float(r[3]) for r in want], rel=1e-3, abs=1e-12)


def test_run_takes_numpy_default_dtypes_when_exact(models, tmp_path):
    art = tmp_path / "net.nnxc"
    assert nnxc_cmd("compile", f"{models}:net", "-i", "x:f32[B,4]", "-o", str(art), "-q").returncode == 0
    x32 = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "exact.npy", x32.astype(np.float64))
    r = nnxc_cmd("run", str(art), "-i", f"x={tmp_path / 'exact.npy'}", "-o", str(tmp_path / "y.npz"),
                 "--repeat", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"nnxc: warning: input x ({tmp_path / 'exact.npy'}): float64 data "
                                     "converted to float32 (every value is exactly representable)"]
    with np.load(tmp_path / "y.npz") as saved:
        np.testing.assert_array_equal(saved[saved.files[0]], np.asarray(nnxc.load(str(art))(x32)))
    inexact = x32.astype(np.float64)
    inexact[1, 2] += 1e-12
    np.save(tmp_path / "inexact.npy", inexact)
    r = nnxc_cmd("run", str(art), "-i", f"x={tmp_path / 'inexact.npy'}", "-q")
    assert r.returncode == 2
    (line,) = error_lines(r.stderr)
    assert line == (f"nnxc: error: input x ({tmp_path / 'inexact.npy'}): float64 value {inexact[1, 2].item()!r} "
                    "at index (1, 2) is not exactly representable as float32; convert the array "
                    "yourself (np.asarray(x, np.float32))")
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    r = nnxc_cmd("run", str(art), "-i", f"x={tmp_path / 'ints.npy'}", "-q")
    assert r.returncode == 2 and error_lines(r.stderr) == [
        f"nnxc: error: input x ({tmp_path / 'ints.npy'}): int64 data for a float32 input; save the array "
        "as float32"]
    np.save(tmp_path / "wide.npy", np.ones((3, 5), np.float32))
    r = nnxc_cmd("run", str(art), "-i", f"x={tmp_path / 'wide.npy'}", "-q")
    assert r.returncode == 2 and error_lines(r.stderr) == [
        f"nnxc: error: input x ({tmp_path / 'wide.npy'}): shape (3, 5) does not fit f32[B,4]"]


def test_positional_inputs_name_generic_arguments(models, tmp_path):
    import onnx
    r = nnxc_cmd("export", f"{models}:seq", "-i", "features:f32[B,4]", "-o", str(tmp_path / "s.onnx"),
                 "--dump-ir", str(tmp_path / "s.ir"), "-q")
    assert r.returncode == 0, r.stderr
    assert [i.name for i in onnx.load(str(tmp_path / "s.onnx")).graph.input] == ["features"]
    assert (tmp_path / "s.ir").read_text().startswith("graph @Sequential(%features: f32[B,4]) {")
    # a model whose argument has a real name keeps it: another name is a mistake
    r = nnxc_cmd("ir", f"{models}:net", "-i", "features:f32[B,4]", "-q")
    assert r.returncode == 2
    assert error_lines(r.stderr) == ["nnxc: error: input 'features' does not match the model's argument "
                                     "'x' (inputs are positional: x)"]


# -- --method, --mutable ----------------------------------------------------------------------

def test_method_traces_that_method(models, tmp_path):
    art = tmp_path / "enc.nnxc"
    r = nnxc_cmd("compile", f"{models}:net", "--method", "encode", "-i", "x:f32[B,4]", "-i", "scale:f32[]",
                 "-o", str(art), "-q")
    assert r.returncode == 0, r.stderr
    exe = nnxc.load(str(art))
    assert [s["name"] for s in exe.manifest["inputs"]] == ["x", "scale"]
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    want = _load_model(models, "net").encode(x, np.float32(2.5))
    np.testing.assert_array_equal(np.asarray(exe(x, np.float32(2.5))), np.asarray(want))


def test_mutable_lets_a_linen_model_update_collections(models):
    r = nnxc_cmd("ir", f"{models}:linen_bn", "-i", "x:f32[B,4]", "-q", "--no-locs")
    assert r.returncode == 1  # train mode updates batch_stats, which is not mutable
    (line,) = error_lines(r.stderr)
    assert "batch_stats" in line and "mutable" in line
    r = nnxc_cmd("check", f"{models}:linen_bn", "-i", "x:f32[B,4]", "--mutable", "batch_stats", "-q")
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout) + [line.split() for line in r.stdout.splitlines() if line.startswith("BatchNorm_0")]
    assert {row[0] for row in rows} >= {"output", "BatchNorm_0.mean", "BatchNorm_0.var"}
    assert all(row[-1] == "✓" for row in rows)
    r = nnxc_cmd("ir", f"{models}:linen_bn", "-i", "x:f32[B,4]", "--mutable", "batch_stats", "-q", "--no-locs")
    assert "update %BatchNorm_0.mean = " in r.stdout and "update %BatchNorm_0.var = " in r.stdout
    assert "training mode" in r.stderr


# -- --summary, nnx.capture ------------------------------------------------------------------

def test_summary_does_not_count_rng_state_as_parameters():
    r = nnxc_cmd("ir", MLP, "-i", "x:f32[B,64]", "--summary", "-q")
    assert r.returncode == 0, r.stderr
    from nnxc.cli.models import load_factory
    g = nnxc.trace(load_factory(MLP)(), "f32[B,64]")
    kinds = {v.kind for v in g.variables}
    assert {"RngKey", "RngCount"} <= kinds
    params = sum(int(np.prod(v.value.type.shape)) for v in g.variables if v.kind in ("Param", "BatchStat"))
    total = next(line for line in r.stdout.splitlines() if line.startswith("total")).split()
    assert int(total[1].replace(",", "")) == params == 3722
    assert r.stdout.splitlines()[-1] == "not counted: RNG state RngCount 1 (4 B), RngKey 1 (8 B)"


def test_capture_models_trace_directly(tmp_path):
    from flax import nnx
    sow = os.path.join(EXAMPLES, "sow.py")
    r = nnxc_cmd("ir", f"{sow}:captured", "-i", "x:f32[B,16]", "-q", "--no-locs")
    assert r.returncode == 0, r.stderr
    assert "Deprecat" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "graph @SowMLP(%x: f32[B,16]) {"
    assert [line.split(":")[0].strip() for line in lines if line.startswith("  var")] == \
        ["var %l1.bias", "var %l1.kernel", "var %l2.bias", "var %l2.kernel"]
    assert "update" not in r.stdout and lines[-2].startswith("  return (%")
    art = tmp_path / "sow.nnxc"
    assert nnxc_cmd("compile", f"{sow}:captured", "-i", "x:f32[B,16]", "-o", str(art), "-q").returncode == 0
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    sys.path.insert(0, EXAMPLES)
    try:
        import sow as example
    finally:
        sys.path.remove(EXAMPLES)
    y, inter = nnx.capture(example.sow_model(), nnx.Intermediate)(x)
    got_y, got_inter = nnxc.load(str(art))(x)
    np.testing.assert_array_equal(np.asarray(got_y), np.asarray(y))
    import jax  # the artifact returns the intermediates as plain containers (no pickle)
    (got_hidden,), (hidden,) = jax.tree_util.tree_leaves(got_inter), jax.tree_util.tree_leaves(inter)
    assert hidden.shape == (3, 32)
    np.testing.assert_array_equal(np.asarray(got_hidden), np.asarray(hidden))
    r = nnxc_cmd("check", f"{sow}:captured", "-i", "x:f32[B,16]", "-q")
    assert r.returncode == 0, r.stderr
    assert {row[0] for row in _rows(r.stdout)} == {"output.0", "output.1.hidden.value.0"}


def test_data_conversion_keeps_nan_and_inf_and_refuses_overflow():
    import warnings

    from nnxc.cli.models import fit_dtype
    from nnxc.errors import NnxcWarning, SpecError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fit_dtype("x", np.array([np.nan, -np.inf, 0.5, -0.0]), np.float32)
        ints = fit_dtype("t", np.array([[1, -2], [3, 2**31 - 1]]), np.int32)
    assert got.dtype == np.float32 and np.array_equal(got, [np.nan, -np.inf, 0.5, -0.0], equal_nan=True)
    assert np.signbit(got[3]) and ints.dtype == np.int32 and ints[1, 1] == 2**31 - 1
    assert [w.category for w in caught] == [NnxcWarning, NnxcWarning]  # no numpy RuntimeWarning
    with pytest.raises(SpecError, match=r"float64 value 1e\+300 at index \(1,\) is not exactly representable"):
        fit_dtype("x", np.array([np.nan, 1e300]), np.float32)
    with pytest.raises(SpecError, match=r"int64 value 2147483648 at index \(0, 1\)"):
        fit_dtype("t", np.array([[0, 2**31]]), np.int32)
