"""Differential fuzzing, the fast slice: 100 fixed seeds of tests/fuzzgen.py, each a small
random program (a function, an NNX or a Linen model) checked against its own jax.jit through
every nnxc stage: XLA at optimize "none" and "default" bit-exact, "inference" and ONNX
(onnxruntime) within tolerance, IR text and JSON round trips. Any mismatch, crash or
onnxruntime refusal fails; clear nnxc refusals (UnsupportedOpError) do not.

Programs that fail for a known nnxc bug are listed in KNOWN with the exact failure: they
are strict xfails, so this file turns red when a fix lands (then drop the entry) and when
such a program starts failing differently. Long campaigns: tools/fuzz.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fuzzgen

SEEDS = [*range(100), 2277, 31561, 31862, 34439, 54737, 56098]  # 100 consecutive seeds, and findings

# seed -> (expected failures {(stage, kind, exception type for crashes)}, why): none today.
# Seeds 31862 (an NNX model: the oracle is its jit with the model as an argument, which
# returns what the call changes, not nnx.jit, which returns every variable) and 34439
# (constants passed into jnp's nested jits, now kept as jit_boundary) were listed here.
KNOWN: dict[int, tuple[set, str]] = {}


class KnownFailure(AssertionError):
    """The program fails exactly as KNOWN says."""


def _describe(program, outcomes) -> str:
    lines = [f"seed {program.seed} ({program.kind} program) failed:"]
    for o in outcomes:
        if o.failed:
            lines.append(f"  {o.stage}: {o.kind} {o.error}: {o.message[:1500]}")
    lines.append("reproduce: python tools/fuzz.py --count 1 --seed %d --out /tmp/fuzz" % program.seed)
    lines.append(program.source)
    return "\n".join(lines)


def _params():
    for seed in SEEDS:
        if seed in KNOWN:
            yield pytest.param(seed, marks=pytest.mark.xfail(strict=True, raises=KnownFailure,
                                                             reason=KNOWN[seed][1]))
        else:
            yield seed


@pytest.mark.parametrize("seed", list(_params()))
def test_generated_program_matches_its_own_jit(seed):
    program = fuzzgen.generate(seed)
    outcomes = fuzzgen.check(program)
    failed = fuzzgen.signature(outcomes)
    if seed in KNOWN and failed == KNOWN[seed][0]:
        raise KnownFailure(_describe(program, outcomes))
    assert not failed, _describe(program, outcomes)


# -- the generator and the checks themselves ------------------------------------------------

def test_generator_is_deterministic_and_standalone():
    for seed in (0, 7, 42):
        a, b = fuzzgen.generate(seed), fuzzgen.generate(seed)
        assert a.source == b.source
        assert "fuzzgen" not in a.source.split("PROGRAM = ")[1]  # the program needs only jax/flax


def test_slice_covers_the_layers_ops_and_types_it_should():
    """The fast slice keeps exercising what the fuzzer is for (generation only)."""
    features, kinds, dtypes, symbolic = set(), set(), set(), set()
    for seed in SEEDS:
        p = fuzzgen.generate(seed)
        features.update(p.features)
        kinds.add(p.kind)
        dtypes.update(spec.split("[")[0] for spec in p.specs)
        symbolic.add(p.sizes != [None])
    assert kinds == {"function", "nnx", "linen"}
    assert dtypes >= {"f32", "f16", "i32", "bool"}
    assert symbolic == {True, False}
    wanted = {"Linear", "Conv", "LayerNorm", "RMSNorm", "BatchNorm_train", "BatchNorm_eval",
              "Dropout_train", "MultiHeadAttention", "Embed", "scan", "fori", "cond",
              "softmax", "softmax_hand", "ln_hand", "where", "f2i", "scatter_set", "cumsum",
              "dot_const", "bmm", "pad", "concat", "transpose", "reshape", "state_update"}
    assert wanted <= features, f"not generated in the slice: {sorted(wanted - features)}"


def _small_program():
    for seed in range(200):
        p = fuzzgen.generate(seed)
        if p.kind == "function" and p.sizes == [1, 3] and any(m["rtol"] == 1e-5 for m in p.outputs):
            return p
    raise AssertionError("no small f32 function program in 200 seeds")


def test_checks_catch_results_one_ulp_off(monkeypatch):
    """A one-ulp change of an XLA result is a mismatch of the exact stages."""
    import jax
    import nnxc
    program = _small_program()
    compile_ = nnxc.compile

    class OffByOneUlp:
        def __init__(self, exe):
            self.exe, self.state = exe, exe.state

        def apply(self, state, *args):
            out, new_state = self.exe.apply(state, *args)
            nudge = lambda x: np.nextafter(np.asarray(x), np.float32(np.inf)).astype(x.dtype) \
                if np.asarray(x).dtype.kind == "f" else x  # noqa: E731
            return jax.tree_util.tree_map(nudge, out), new_state

    monkeypatch.setattr(nnxc, "compile", lambda g, **kw: OffByOneUlp(compile_(g, **kw)))
    kinds = {o.stage: o.kind for o in fuzzgen.check(program, ("none", "default"))}
    assert kinds == {"none": "mismatch", "default": "mismatch"}


def test_xla_cpu_dropping_nan_in_max_is_xla_only_not_a_mismatch():
    """Seed 2495: jax.jit's max over the last axis of an all-NaN f32[16,2,256] is -inf on
    XLA:CPU (openxla/xla#21461), nnxc's ONNX ReduceMax gives NaN as JAX specifies: the check
    reports it as 'xla_only' because the program evaluated with NaN-propagating reductions
    agrees with ONNX. nnxc's XLA stages stay bit-exact with jit (they have XLA's bug too)."""
    kinds = {o.stage: o.kind for o in fuzzgen.check(fuzzgen.generate(2495))}
    assert kinds == {"none": "ok", "default": "ok", "inference": "ok", "onnx": "xla_only",
                     "roundtrip": "ok"}, kinds


def test_xla_fma_contraction_across_an_overflow_is_xla_only():
    """Seed 13320: x*x - mean(x*x) with x = 1.7e38. XLA's fused kernel computes it as one
    fma(x, x, -inf) = -inf, where the separate ops (and onnxruntime) give inf - inf = NaN:
    JAX's op-by-op evaluation agrees with ONNX, so the check says 'xla_only'."""
    program = fuzzgen.generate(13320)
    assert "v7 = v2 - v6" in program.source
    kinds = {o.stage: o.kind for o in fuzzgen.check(program, ("none", "onnx"))}
    assert kinds == {"none": "ok", "onnx": "xla_only"}, kinds


def test_xla_division_by_a_broadcast_reciprocal_is_xla_only():
    """Seed 31407: x0 / (|x1| + 1) with x1 broadcast and 1.7e38 in both. XLA:CPU divides by a
    broadcast value as x0 * (1 / y), and 1 / 1.7e38 underflows to 0: jax.jit gives 0 (and NaN
    for inf / 1.7e38) where the division (and onnxruntime) gives 1 (inf). The difference stays
    finite through the clip and the Linear after it; op by op JAX agrees with ONNX."""
    program = fuzzgen.generate(31407)
    assert "v4 = x0 / (jnp.abs(x1) + 1.0)" in program.source
    kinds = {o.stage: o.kind for o in fuzzgen.check(program, ("none", "onnx"))}
    assert kinds == {"none": "ok", "onnx": "xla_only"}, kinds


def test_xla_dot_rounding_an_overflowing_product_is_xla_only():
    """Seed 40609: x @ x.T of an f32 input holding 1.7e38, -inf and NaN. XLA:CPU's dot rounds
    1.7e38 * 1.7e38 to inf before adding -inf (NaN); onnxruntime's MatMul adds the exact
    product in one FMA (-inf). Op by op with exact products, JAX agrees with ONNX."""
    program = fuzzgen.generate(40609)
    kinds = {o.stage: o.kind for o in fuzzgen.check(program, ("none", "onnx"))}
    assert kinds == {"none": "ok", "onnx": "xla_only"}, kinds


def test_exact_product_dot_is_lax_dot_general():
    """The oracle's f64 dot computes lax.dot_general's layout (batch, lhs free, rhs free)."""
    from jax import lax
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    dims = (((3, 1), (1, 3)), ((0,), (0,)))
    want = np.asarray(lax.dot_general(x, y, dims, precision=lax.Precision.HIGHEST))
    got = fuzzgen._dot_f64(x, y, {"dimension_numbers": dims}, np.float32)
    assert got.shape == want.shape == (2, 4, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    big = np.array([[1.7e38, -np.inf]], np.float32)
    assert fuzzgen._dot_f64(big, big.T, {"dimension_numbers": (((1,), (0,)), ((), ()))},
                            np.float32)[0, 0] == np.inf  # 2.9e76 + inf: no inf - inf


def test_onnx_nan_differences_not_explained_by_xla_are_mismatches(monkeypatch):
    """The 'xla_only' reading needs the NaN-propagating evaluation to agree with ONNX: a NaN
    that ONNX invents is still a mismatch."""
    import onnxruntime as ort
    program = _small_program()
    run = ort.InferenceSession.run

    def nan_first(self, names, feeds, *a, **k):
        outs = run(self, names, feeds, *a, **k)
        for o in outs:
            if o.dtype.kind == "f" and o.size:
                o.reshape(-1)[0] = np.nan
        return outs

    monkeypatch.setattr(ort.InferenceSession, "run", nan_first)
    [outcome] = fuzzgen.check(program, ("onnx",))
    assert outcome.kind == "mismatch", outcome


def test_checks_catch_onnx_results_beyond_tolerance(monkeypatch):
    import onnxruntime as ort
    program = _small_program()
    run = ort.InferenceSession.run

    def off(self, names, feeds, *a, **k):
        return [o * np.asarray(1.001, o.dtype) + np.asarray(1e-3, o.dtype) if o.dtype.kind == "f" else o
                for o in run(self, names, feeds, *a, **k)]

    monkeypatch.setattr(ort.InferenceSession, "run", off)
    [outcome] = fuzzgen.check(program, ("onnx",))
    assert outcome.kind == "mismatch", outcome


def test_onnxruntime_crashing_is_ort_refused_not_fatal(monkeypatch):
    """onnxruntime runs in a forked child: a crash there (it segfaults on some models) is an
    ort_refused outcome, and this process lives on."""
    import signal

    def crash(model_bytes, feeds):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(fuzzgen, "_onnx_job", crash)
    with pytest.raises(fuzzgen.OrtRefused, match="crashed"):
        fuzzgen.onnx_runs(b"not a model", [[]])


def test_outcomes_are_classified():
    import nnxc
    assert fuzzgen.classify("onnx", nnxc.UnsupportedOpError([("sort", "", None, "no rule")])) == "refused"
    internal = nnxc.UnsupportedOpError([("gather", "", None, "internal error in its ONNX rule "
                                                           "(KeyError: 'x'); please report it")])
    assert fuzzgen.classify("onnx", internal) == "crash"
    assert fuzzgen.error_name(internal) == "UnsupportedOpError[internal KeyError]"
    assert fuzzgen.classify("trace", nnxc.NnxcError("cannot trace this")) == "refused"
    assert fuzzgen.classify("onnx", nnxc.NnxcError("fails the ONNX checker (an nnxc bug)")) == "crash"
    assert fuzzgen.classify("none", nnxc.NnxcError("anything")) == "crash"
    assert fuzzgen.classify("default", nnxc.VerifyError("bad IR")) == "crash"
    assert fuzzgen.classify("onnx", KeyError("x")) == "crash"
    assert fuzzgen.classify("onnx", fuzzgen.OrtRefused("no")) == "ort_refused"
    assert fuzzgen.classify("none", fuzzgen.Mismatch("no")) == "mismatch"
    assert fuzzgen.classify("trace", fuzzgen.InvalidProgram("no")) == "invalid"


def test_assert_close_tolerates_only_measured_rounding_sensitivity():
    want = np.array([1.0, 2.0, np.nan, np.inf], np.float32)
    fuzzgen.assert_close(want + np.float32(1e-6), want, "x", 1e-5)
    with pytest.raises(fuzzgen.Mismatch):
        fuzzgen.assert_close(want + np.float32(1e-3), want, "x", 1e-5)
    sens = np.array([1e-3, 0.0, 0.0, 0.0])
    fuzzgen.assert_close(want + np.array([2e-3, 0, 0, 0], np.float32), want, "x", 1e-5, sens)
    with pytest.raises(fuzzgen.Mismatch):  # the room is per element
        fuzzgen.assert_close(want + np.array([0, 2e-3, 0, 0], np.float32), want, "x", 1e-5, sens)
    ints = np.array([1, 2, 3], np.int32)
    with pytest.raises(fuzzgen.Mismatch):
        fuzzgen.assert_close(ints + 1, ints, "i", 1e-5)
    fuzzgen.assert_close(ints + np.array([1, 0, 0], np.int32), ints, "i", 1e-5, np.array([np.inf, 0, 0]))


def test_reduced_programs_stay_valid():
    """reduce() shrinks while the predicate holds, and what it returns still runs under jax
    (it only ever replaces a value by another of the same shape and dtype)."""
    program = next(p for p in map(fuzzgen.generate, range(50, 150))
                   if len(p.stmts) >= 8 and "jnp.tanh" in p.source)
    small = fuzzgen.reduce(program, lambda cand: "jnp.tanh" in cand.source, max_checks=60)
    assert small.n_lines < program.n_lines and "jnp.tanh" in small.source
    fuzzgen.Run(small.ns).refs()


def test_reproducer_runs_with_only_nnxc(tmp_path):
    program = _small_program()
    outcomes = [fuzzgen.Outcome("onnx", "mismatch", "", "pretend")]
    path = tmp_path / "mismatch_1.py"
    path.write_text(fuzzgen.reproducer(program, outcomes))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    # the program is fine, so the re-run check passes and says so
    assert res.returncode == 0, res.stdout + res.stderr
    assert "onnx" in res.stdout and "ok" in res.stdout
