"""nnxc.save / nnxc.load: round trips, multi-platform export, tampering, golden artifacts."""
from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import nnxc
import zoo
from nnxc.runtime import artifact_format as fmt

GOLDEN = os.path.join(os.path.dirname(__file__), "golden_artifacts")


# -- models ----------------------------------------------------------------------

class BNMLP(nnx.Module):
    """BatchNorm in train mode (state updates), a dropout key, a nested output tree."""

    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
        self.l1 = nnx.Linear(6, 8, param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.drop(nnx.relu(self.bn(self.l1(x))))
        return {"logits": self.l2(h), "aux": (h.sum(), [h.mean(axis=0)])}


class TwoInputs(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x, y):
        return self.l(x) + y


class LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(2)(nn.relu(x))


Pair = collections.namedtuple("Pair", "first second")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Result:
    """A custom pytree class: artifacts give it back as a dict of its fields."""
    value: jax.Array
    extra: tuple


def _leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                       else x) for x in jax.tree_util.tree_leaves(tree)]


def assert_same(a, b):
    """Bit-exact equality of two pytrees of arrays (same structure)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(scope="module")
def bn(tmp_path_factory):
    """BNMLP with a symbolic batch saved for cpu: (graph, path, loaded artifact, Compiled).

    Tests share the loaded artifact and the Compiled (and their compiled shapes), so they
    only use the pure ``apply``; ``__call__`` is covered by the zoo round trips.
    """
    graph = nnxc.trace(BNMLP(nnx.Rngs(0)), "f32[B,6]")
    path = str(tmp_path_factory.mktemp("art") / "bnmlp.nnxc")
    nnxc.save(graph, path)
    return graph, path, nnxc.load(path), nnxc.compile(graph)


# -- round trips -------------------------------------------------------------------

def test_roundtrip_matches_compile_and_updates_state(bn):
    graph, _, art, exe = bn
    assert set(art.state) == set(exe.state)
    assert_same(art.state, exe.state)
    got_state, want_state = art.state, exe.state
    for step in range(3):  # state threads through: BatchNorm stats and the dropout counter
        x = rand((4, 6), step)
        got, got_state = art.apply(got_state, x)
        want, want_state = exe.apply(want_state, x)
        assert_same(got, want)
        assert_same(got_state, want_state)
    assert not np.array_equal(got_state["bn.mean"], graph.variable("bn.mean").data)
    assert int(got_state["drop.rngs.count"]) == 3


def test_apply_is_pure(bn):
    art = bn[2]
    before = dict(art.state)
    out1, s1 = art.apply(art.state, rand((4, 6)))
    out2, s2 = art.apply(art.state, rand((4, 6)))
    assert_same(out1, out2)
    assert_same(s1, s2)
    assert_same(art.state, before)
    assert set(s1) == set(before)


def test_symbolic_batch_two_sizes_one_artifact(bn):
    _, _, art, exe = bn
    assert art.manifest["inputs"] == [{"name": "x", "shape": ["B", 6], "dtype": "f32"}]
    assert art.manifest["outputs"][-1] == {"name": "logits", "shape": ["B", 3], "dtype": "f32"}
    assert "B" in art.exported.in_avals[-1].str_short()
    for batch in (4, 9):
        x = rand((batch, 6), batch)
        got, got_state = art.apply(art.state, x)
        want, want_state = exe.apply(exe.state, x)
        assert got["logits"].shape == (batch, 3)
        assert_same(got, want)
        assert_same(got_state, want_state)
    assert {k[1][0] for k in art._executables} >= {(4, 6), (9, 6)}


def test_output_tree_and_manifest(bn):
    art = bn[2]
    m = art.manifest
    assert m["format_version"] == fmt.FORMAT_VERSION and m["nnxc_version"] == nnxc.__version__
    assert [o["name"] for o in m["outputs"]] == ["aux.0", "aux.1.0", "logits"]
    out, _ = art.apply(art.state, rand((4, 6)))
    assert isinstance(out, dict) and isinstance(out["aux"], tuple) and isinstance(out["aux"][1], list)
    kinds = {v["path"]: v["kind"] for v in m["variables"]}
    assert kinds["bn.mean"] == "BatchStat" and kinds["l1.kernel"] == "Param"
    assert kinds["drop.rngs.key"] == "RngKey"
    assert set(m["returned_state"]) == {"bn.mean", "bn.var", "drop.rngs.count"}
    key = next(v for v in m["variables"] if v["path"] == "drop.rngs.key")
    assert key["dtype"] == "key<fry>" and m["weights"]["drop.rngs.key"]["dtype"] == "u32"
    assert str(art.state["drop.rngs.key"].dtype) == "key<fry>"


def test_linen_model(tmp_path):
    module = LinenBN()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 5)), train=False)
    graph = nnxc.trace(module, "f32[B,5]", variables=variables, mutable=["batch_stats"])
    nnxc.save(graph, tmp_path / "linen.nnxc")
    art = nnxc.load(tmp_path / "linen.nnxc")
    assert art.manifest["frontend"] == "linen"
    x = rand((3, 5), 3)
    out, mutated = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables, x)
    assert_same(art(x), out)
    assert_same(art.state["BatchNorm_0.mean"], mutated["batch_stats"]["BatchNorm_0"]["mean"])
    assert_same(art.state["BatchNorm_0.var"], mutated["batch_stats"]["BatchNorm_0"]["var"])


def test_bf16_weights_and_compiled_state(tmp_path):
    exe = nnxc.compile(nnxc.trace(BNMLP(nnx.Rngs(2), dtype=jnp.bfloat16), "f32[4,6]"))
    exe(rand((4, 6)))  # the held state moves on; save must write the current one
    nnxc.save(exe, tmp_path / "bf16.nnxc")
    art = nnxc.load(tmp_path / "bf16.nnxc")
    assert art.manifest["weights"]["l1.kernel"]["dtype"] == "bf16"
    assert art.state["l1.kernel"].dtype == jnp.bfloat16
    assert_same(art.state, exe.state)
    x = rand((4, 6), 3)
    assert_same(art(x), exe(x))


def test_multi_platform_artifact_runs_on_cpu(tmp_path):
    graph = nnxc.trace(TwoInputs(nnx.Rngs(0)), "f32[B,4]", "f32[B,4]")
    manifest = nnxc.save(graph, tmp_path / "multi.nnxc", platforms="cpu,cuda,tpu")
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    art = nnxc.load(tmp_path / "multi.nnxc")
    assert art.manifest["platforms"] == ["cpu", "cuda", "tpu"]
    assert art.platforms == ("cpu", "cuda", "tpu")
    x, y = rand((3, 4)), rand((3, 4), 1)
    assert_same(art(x, y), nnxc.compile(graph)(x, y))


def test_platform_not_exported(tmp_path):
    nnxc.save(nnxc.trace(TwoInputs(nnx.Rngs(0)), "f32[2,4]", "f32[2,4]"), tmp_path / "t.nnxc",
              platforms=["tpu"])
    art = nnxc.load(tmp_path / "t.nnxc")  # inspecting works anywhere
    with pytest.raises(nnxc.NnxcError, match="exported for tpu; it cannot run on cpu"):
        art(rand((2, 4)), rand((2, 4)))
    with pytest.raises(nnxc.NnxcError, match="unknown platform"):
        nnxc.save(nnxc.trace(TwoInputs(nnx.Rngs(0)), "f32[2,4]", "f32[2,4]"),
                  tmp_path / "u.nnxc", platforms="cpu,gpu")


# -- input checks ------------------------------------------------------------------

def test_input_errors_name_the_input(tmp_path):
    nnxc.save(nnxc.trace(TwoInputs(nnx.Rngs(0)), "f32[B,4]", "f32[B,4]"), tmp_path / "t.nnxc")
    art = nnxc.load(tmp_path / "t.nnxc")
    x = rand((3, 4))
    with pytest.raises(nnxc.NnxcError, match=r"input 'y': expected f32\[B,4\], got f64\[3,4\]"):
        art(x, x.astype(np.float64))
    with pytest.raises(nnxc.NnxcError, match=r"input 'x': expected f32\[B,4\], got f32\[3,5\]"):
        art(rand((3, 5)), x)
    with pytest.raises(nnxc.NnxcError, match=r"input 'y'.*got f32\[2,4\].*B=3 from input 'x'"):
        art(x, rand((2, 4)))
    with pytest.raises(nnxc.NnxcError, match=r"input 'x'.*wrong rank"):
        art(rand((4,)), x)
    with pytest.raises(nnxc.NnxcError, match=r"takes 2 input array\(s\) \(x, y\)"):
        art(x)
    with pytest.raises(nnxc.NnxcError, match="no value for variable"):
        art.apply({}, x, x)
    bad = dict(art.state, **{"l.kernel": jnp.zeros((4, 5))})
    with pytest.raises(nnxc.NnxcError, match=r"state\['l.kernel'\]: expected f32\[4, 4\]"):
        art.apply(bad, x, x)


# -- tampering and versions ------------------------------------------------------------

@pytest.fixture()
def small(tmp_path):
    path = tmp_path / "small.nnxc"
    nnxc.save(nnxc.trace(TwoInputs(nnx.Rngs(0)), "f32[B,4]", "f32[B,4]"), path)
    return path


def _patch(path, offset, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _section_offset(path, name):
    manifest, _ = fmt.read(path)
    _, _, _, mlen, _ = struct.unpack_from("<8sIIQ32s", path.read_bytes())
    return fmt.HEADER_SIZE + mlen + manifest["sections"][name]["offset"]


@pytest.mark.parametrize("where", ["header_flags", "manifest_length", "manifest_hash",
                                   "manifest", "exported", "weights", "last_byte"])
def test_flipped_byte_is_rejected(small, where):
    size = small.stat().st_size
    offset = {"header_flags": 12, "manifest_length": 16, "manifest_hash": 30,
              "manifest": fmt.HEADER_SIZE + 20,
              "exported": _section_offset(small, "exported") + 100,
              "weights": _section_offset(small, "weights") + 40, "last_byte": size - 1}[where]
    raw = small.read_bytes()
    _patch(small, offset, bytes([raw[offset] ^ 0x10]))
    with pytest.raises(nnxc.NnxcError, match="corrupted artifact|truncated artifact"):
        nnxc.load(small)


@pytest.mark.parametrize("keep", [0, 5, 40, 300, -1])
def test_truncated_file_is_rejected(small, keep):
    raw = small.read_bytes()
    small.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(nnxc.NnxcError, match="truncated|not an nnxc artifact"):
        nnxc.load(small)


def test_trailing_bytes_are_rejected(small):
    small.write_bytes(small.read_bytes() + b"\0")
    with pytest.raises(nnxc.NnxcError, match="trailing bytes"):
        nnxc.load(small)


def test_unknown_version_is_rejected(small):
    _patch(small, 8, struct.pack("<I", fmt.FORMAT_VERSION + 1))
    with pytest.raises(nnxc.NnxcError, match=f"format version {fmt.FORMAT_VERSION + 1} is not "
                                             "supported.*upgrade nnxc"):
        nnxc.load(small)


def test_bad_magic_is_rejected(small, tmp_path):
    _patch(small, 0, b"PK")
    with pytest.raises(nnxc.NnxcError, match="not an nnxc artifact"):
        nnxc.load(small)
    with pytest.raises(nnxc.NnxcError, match="cannot read artifact"):
        nnxc.load(tmp_path / "missing.nnxc")


def test_consistent_hash_but_bad_content_is_rejected(small):
    """A manifest rewritten with valid hashes but inconsistent content still fails cleanly."""
    manifest, sections = fmt.read(small)
    manifest = dict(manifest)
    manifest["weights"] = dict(manifest["weights"], **{"l.kernel": {"dtype": "f32", "shape": [4, 5]}})
    for key in ("format_version", "sections", "payload"):
        manifest.pop(key)
    data, _ = fmt.pack(manifest, {k: bytes(v) for k, v in sections.items()})
    small.write_bytes(data)
    with pytest.raises(nnxc.NnxcError, match="weight 'l.kernel'"):
        nnxc.load(small)


def test_atomic_write_keeps_old_file(small, monkeypatch):
    before = small.read_bytes()

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fmt.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        nnxc.save(nnxc.trace(TwoInputs(nnx.Rngs(5)), "f32[B,4]", "f32[B,4]"), small)
    assert small.read_bytes() == before
    assert os.listdir(small.parent) == [small.name]


# -- backward compatibility --------------------------------------------------------

GOLDENS = sorted(glob.glob(os.path.join(GOLDEN, "*.nnxc")))


@pytest.mark.parametrize("path", GOLDENS, ids=os.path.basename)
def test_golden_artifact_loads_and_runs(path):
    """Goldens from every format version load and give their stored results."""
    stem = path[:-len(".nnxc")]
    art = nnxc.load(path)
    args = [np.load(f"{stem}.in.{i['name']}.npy", allow_pickle=False)
            for i in art.manifest["inputs"]]
    outs, state = art.apply(art.state, *args)
    for spec, got in zip(art.manifest["outputs"], jax.tree_util.tree_leaves(outs)):
        want = np.load(f"{stem}.out.{spec['name']}.npy", allow_pickle=False)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    for p in art.manifest["returned_state"]:
        want = np.load(f"{stem}.state.{p}.npy", allow_pickle=False)
        np.testing.assert_allclose(_leaves(state[p])[0], want, rtol=1e-5, atol=1e-6)


def test_goldens_exist_for_current_version():
    assert any(p.endswith(f"_v{fmt.FORMAT_VERSION}.nnxc") for p in GOLDENS), \
        "run tools/make_golden_artifact.py after a format change (and keep the old goldens)"
    manifest, _ = fmt.read(GOLDENS[-1])
    json.dumps(manifest)  # plain JSON


# -- output structures and plain functions ------------------------------------------

def test_output_trees_namedtuple_and_custom_class(tmp_path):
    def f(x):
        return Pair(x + 1, None), Result(x * 2, (x.sum(), {"z": x}, {1: x - 1}))

    nnxc.save(nnxc.trace(f, "f32[B,2]"), tmp_path / "f.nnxc")
    art = nnxc.load(tmp_path / "f.nnxc")
    x = rand((3, 2))
    pair, result = art(x)
    assert type(pair).__name__ == "Pair" and pair._fields == ("first", "second")
    assert pair.second is None
    np.testing.assert_array_equal(pair.first, x + 1)
    assert isinstance(result, dict)  # a custom class comes back as a dict of its fields
    assert art.manifest["output_tree"]["tuple"][1]["class"].endswith("Result")
    np.testing.assert_array_equal(result["value"], x * 2)
    np.testing.assert_array_equal(result["extra"][1]["z"], x)
    np.testing.assert_array_equal(result["extra"][2][1], x - 1)
    assert [o["name"] for o in art.manifest["outputs"]] == \
        ["0.first", "1.value", "1.extra.0", "1.extra.1.z", "1.extra.2.1"]


def test_dim_expression_inputs(tmp_path):
    def f(x, y):
        return jnp.concatenate([x, x]) + y

    nnxc.save(nnxc.trace(f, "f32[B,3]", "f32[2*B,3]"), tmp_path / "f.nnxc")
    art = nnxc.load(tmp_path / "f.nnxc")
    assert art.manifest["inputs"][1]["shape"] == ["2*B", 3]
    assert art(rand((2, 3)), rand((4, 3))).shape == (4, 3)
    with pytest.raises(nnxc.NnxcError, match=r"input 'y'.*got f32\[5,3\] \(dim 0 is 5 but 2\*B=4\)"):
        art(rand((2, 3)), rand((5, 3)))


# -- every zoo model ----------------------------------------------------------------

@pytest.mark.parametrize("case", zoo.CASES, ids="-".join)
def test_zoo_roundtrip_bit_exact(case, tmp_path):
    """save -> load -> run equals the model's own jitted call, outputs and state, bit for bit.

    Eval mode runs two batch sizes through the one symbolic-batch artifact; train mode
    (the same program plus state updates, and slower to compile) runs one, to keep the
    file fast.
    """
    name, mode = case
    train = mode == "train"
    model = zoo.make(name, train)
    nnxc.save(zoo.trace(name, model, train), tmp_path / f"{name}.nnxc")
    art = nnxc.load(tmp_path / f"{name}.nnxc")
    for batch in (3,) if train else (2, 3):
        inputs = zoo.example_inputs(name, batch)
        out = art(*inputs)
        want, want_state = zoo.reference(name, model, *inputs, train=train)
        assert_same(out, want)
        assert sorted(art.state) == sorted(want_state)
        for path, x in want_state.items():
            np.testing.assert_array_equal(zoo.as_numpy(art.state[path]), x, err_msg=path)


def test_save_with_passes(tmp_path):
    exe = nnxc.compile(nnxc.trace(BNMLP(nnx.Rngs(3)), "f32[4,6]"))
    x = rand((4, 6))
    exe(x)  # moves the held state on: the passes must see it, not the traced values
    nnxc.save(exe, tmp_path / "frozen.nnxc", passes="inference")
    art = nnxc.load(tmp_path / "frozen.nnxc")
    assert art.manifest["variables"] == [] or all(not v["updated"] for v in art.manifest["variables"])
    want, _ = exe.apply(exe.state, x)
    got = art(x)
    for g, w in zip(_leaves(got), _leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# -- memory-lean loading ---------------------------------------------------------------

def test_load_unmaps_the_file(small):
    art = nnxc.load(small)
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            assert str(small) not in f.read()
    assert all(isinstance(x, jax.Array) for x in art.state.values())


def test_bad_weights_header_is_rejected(small):
    """A safetensors header that does not parse, behind valid hashes, fails cleanly."""
    manifest, sections = fmt.read(small)
    for key in ("format_version", "sections", "payload"):
        manifest.pop(key)
    weights = bytearray(sections["weights"])
    for bad in (weights[:4], struct.pack("<Q", len(weights)) + weights[8:],
                weights[:8] + b"[" + weights[9:]):
        data, _ = fmt.pack(manifest, {"exported": sections["exported"], "weights": bytes(bad)})
        small.write_bytes(data)
        with pytest.raises(nnxc.NnxcError, match="cannot read the weights"):
            nnxc.load(small)


_BIG_MODEL = """
import sys, jax.numpy as jnp
from flax import nnx
import nnxc

class Big(nnx.Module):  # 252 MB of f32, 151 MB of bf16, a dropout key
    def __init__(self, rngs):
        self.a = nnx.Linear(6144, 10240, rngs=rngs)
        self.b = nnx.Linear(6144, 12288, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=nnx.Rngs(dropout=1))

    def __call__(self, x):
        return self.drop(self.a(x)).sum() + self.b(x.astype(jnp.bfloat16)).sum()

nnxc.save(nnxc.trace(Big(nnx.Rngs(0)), "f32[B,6144]"), sys.argv[1])
"""

_MEASURE_LOAD = """
import resource, sys
import jax, numpy as np
import nnxc
jax.device_put(np.ones(4)).block_until_ready()  # the CPU client exists before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
art = nnxc.load(sys.argv[1])
jax.block_until_ready(list(art.state.values()))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        for x in art.state.values()]
print((after - before) * 1024, sum(x.nbytes for x in data))
"""


_MEASURE_SAVE = _BIG_MODEL.replace("nnxc.save(nnxc.trace(Big(nnx.Rngs(0)), \"f32[B,6144]\"), sys.argv[1])", """
import jax
g = nnxc.trace(Big(nnx.Rngs(0)), "f32[B,6144]")
jax.block_until_ready([v.data for v in g.variables])  # initialization done (it runs async)
def status():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak RSS starts again from here
before = status()["VmRSS"]
nnxc.save(g, sys.argv[1])
print(status()["VmHWM"] - before, sum(v.data.nbytes for v in g.variables if not v.meta.get("new")))
""")


@pytest.mark.slow  # a 400 MB model in fresh processes; tools/bench_aot.py measures it too
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="resets the peak RSS: Linux")
def test_save_adds_little_memory_to_the_weights(tmp_path):
    """Saving a ~400 MB model streams the weights into the file (hashed and written in place,
    bfloat16 in 16 MiB chunks): the peak RSS grows by a small part of the weights, where
    joining the sections grew it by 3x the weights."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(nnxc.__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-c", _MEASURE_SAVE, str(tmp_path / "big.nnxc")], check=True,
                         env=env, cwd=tmp_path, capture_output=True, text=True).stdout
    growth, weights = map(int, out.split()[-2:])
    assert weights > 390e6
    assert growth < 0.25 * weights, f"peak RSS grew {growth / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
    art = nnxc.load(tmp_path / "big.nnxc")
    assert sum(x.size for x in art.state.values()) > 100e6


@pytest.mark.slow  # a big model written and loaded in fresh processes
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="ru_maxrss in KiB: Linux")
def test_load_peak_memory_is_about_the_weights(tmp_path):
    """Loading a ~400 MB artifact grows the peak RSS by about the weights' size, not several
    times it: the file is mapped, hashed in chunks and copied once into the arrays."""
    import subprocess
    import sys
    path = tmp_path / "big.nnxc"
    root = os.path.dirname(os.path.dirname(nnxc.__file__))  # the nnxc this test imported
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = functools.partial(subprocess.run, check=True, env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    run([sys.executable, "-c", _BIG_MODEL, str(path)])
    out = run([sys.executable, "-c", _MEASURE_LOAD, str(path)]).stdout
    growth, weights = map(int, out.split()[-2:])
    assert weights > 390e6
    assert growth < 2.2 * weights, f"peak RSS grew {growth / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
