"""Hostile and broken inputs: every file nnxc reads gets a clear nnxc error or a right
answer -- never another exception, a crash, a hang or a read outside the model's folder.

Readers: ``nnxc.ir.parse`` (IR text), ``nnxc.ir.from_json`` (IR JSON), ``nnxc.load``
(``.nnxc`` artifacts), ``nnxc.runtime.onnx_io.load_onnx`` / ``onnx_session`` (ONNX with
external data). The fuzz cases come from tools/fuzz_readers.py (which runs longer campaigns).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from flax import nnx
from onnx import TensorProto

import nnxc
from nnxc.errors import VerifyError
from nnxc.ir import IRJsonError, IRParseError, Node, TensorType, Value, from_json, parse, verify
from nnxc.runtime import artifact_format as fmt
from nnxc.runtime.artifact import ALLOWED_CUSTOM_CALLS
from nnxc.runtime.artifact_format import ArtifactError
from nnxc.runtime.onnx_io import OnnxFileError, UnsafeModelError, load_onnx, onnx_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "fuzz_readers", os.path.join(ROOT, "tools", "fuzz_readers.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fz = _load_tool()


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail (rather than hang the test run) when the body takes longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise AssertionError(f"no answer within {seconds} s: the reader hangs")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- fuzzing each reader with mutated real files ---------------------------------------------

@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return fz.Fixture(str(tmp_path_factory.mktemp("fuzz")))


@pytest.mark.parametrize("reader, count", [("parse", 150), ("from_json", 150), ("load", 50),
                                           ("load_onnx", 120)])
def test_mutated_files_get_an_nnxc_error_or_a_right_answer(fixture, reader, count):
    outcomes = [fz.run_input(fixture, reader, 0, i, timeout=60) for i in range(count)]
    bad = [o for o in outcomes if o.kind not in ("accepted", "refused")]
    assert not bad, "\n".join(f"{reader}:{o.index} {o.kind} {o.error}: {o.message}"
                               for o in bad[:5])
    kinds = {o.kind for o in outcomes}
    assert kinds == {"accepted", "refused"}, kinds  # the mutations reach both answers


# -- artifacts: nothing in a file reaches host code ------------------------------------------

def _exported_with_host_callback():
    """``jax.export`` of a function calling ``jax.pure_callback``: the host-callback custom
    call jax refuses to serialize, serialized anyway (as a crafted file would hold it)."""
    from jax._src.export import _export

    def crafted(variables, args):
        (x,) = args
        return [jax.pure_callback(lambda a: np.asarray(a) * 2,
                                  jax.ShapeDtypeStruct(x.shape, x.dtype), x)], []
    check = _export._check_lowering
    _export._check_lowering = lambda lowering: None  # the check that refuses callbacks
    try:
        return jax.export.export(jax.jit(crafted), platforms=("cpu",), disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call("xla_ffi_python_cpu_callback")])(
            [], [jax.ShapeDtypeStruct((3,), jnp.float32)])
    finally:
        _export._check_lowering = check


def _repack(path, manifest=None, **sections):
    """Rewrite the artifact at ``path`` with a new manifest and/or sections, hashes valid."""
    old_manifest, old_sections = fmt.read(path)
    manifest = dict(manifest or old_manifest)
    for key in ("format_version", "sections", "payload"):
        manifest.pop(key, None)
    data, _ = fmt.pack(manifest, {**{k: bytes(v) for k, v in old_sections.items()}, **sections})
    path.write_bytes(data)


@pytest.fixture()
def plain(tmp_path):
    """An artifact of ``x * 2 + 1`` on f32[3] (no variables)."""
    path = tmp_path / "plain.nnxc"
    nnxc.save(nnxc.trace(lambda x: x * 2 + 1, "f32[3]"), path)
    return path


def test_host_callback_artifact_is_refused_at_load(plain):
    exported = _exported_with_host_callback()
    assert "xla_ffi_python_cpu_callback" in exported.mlir_module()
    _repack(plain, exported=exported.serialize())
    with pytest.raises(ArtifactError, match=r"plain\.nnxc: the exported module makes a custom "
                                            r"call to 'xla_ffi_python_cpu_callback' in @main"):
        nnxc.load(plain)  # before the check, the first call crashed the process (SIGSEGV)


class _TestEffect(jax._src.effects.Effect):
    """An effect that serializes (nullary constructor, equal instances), as a crafted file
    may name one."""

    def __eq__(self, other):
        return type(other) is _TestEffect

    def __hash__(self):
        return hash(_TestEffect)


def test_artifact_with_effects_is_refused_at_load(plain):
    jax._src.effects.lowerable_effects.add_type(_TestEffect)
    art = nnxc.load(plain)
    exported = dataclasses.replace(art.exported, ordered_effects=(_TestEffect(),))
    _repack(plain, exported=exported.serialize())
    with pytest.raises(ArtifactError, match=r"plain\.nnxc: the exported function has effects"):
        nnxc.load(plain)


def test_module_that_hangs_mlirs_reader_is_refused_at_load(tmp_path, monkeypatch):
    """One byte of the golden artifact's StableHLO bytecode (found by tools/fuzz_readers.py)
    sends MLIR's bytecode reader into an endless loop: the module is read in a child
    process, and a reader that does not finish is a clear error, not a hang."""
    from nnxc.runtime import artifact
    path = tmp_path / "hang.nnxc"
    path.write_bytes(open(os.path.join(fz.GOLDEN_ARTIFACTS, "tiny_v1.nnxc"), "rb").read())
    exported = jax.export.deserialize(bytearray(fmt.read(path)[1]["exported"]))
    module = bytearray(exported.mlir_module_serialized)
    assert module[1613] == 4
    module[1613] = 0
    exported = dataclasses.replace(exported, mlir_module_serialized=bytes(module))
    _repack(path, exported=exported.serialize())
    monkeypatch.setattr(artifact, "_READ_TIMEOUT", 3.0)
    with no_hang(30), pytest.raises(ArtifactError, match=r"hang\.nnxc: reading the exported "
                                                         r"StableHLO module did not finish"):
        nnxc.load(path)


def test_custom_call_allowlist_holds_only_what_nnxc_emits():
    from jax._src.export._export import _CUSTOM_CALL_TARGETS_GUARANTEED_STABLE as stable
    assert "shape_assertion" in ALLOWED_CUSTOM_CALLS  # every zoo model has it (symbolic dims)
    assert ALLOWED_CUSTOM_CALLS <= stable  # kernels jax keeps stable, nothing else
    assert not {t for t in ALLOWED_CUSTOM_CALLS if "callback" in t or "python" in t}


def test_linear_algebra_artifacts_still_load(tmp_path):
    """Core ops that lower to JAX's linear-algebra kernels (LAPACK, cuSOLVER, TPU) load."""
    g = nnxc.trace(lambda a: jnp.linalg.cholesky(a @ a.T + 4 * jnp.eye(3)), "f32[3,3]")
    path = tmp_path / "chol.nnxc"
    nnxc.save(g, path, platforms=("cpu", "cuda", "tpu"))
    a = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(nnxc.load(path)(a), np.linalg.cholesky(a @ a.T + 4 * np.eye(3)),
                               rtol=1e-6)


# -- artifacts: an edited (and re-hashed) manifest fails at load, naming the field -----------

@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(output_tree={"tuple": [0, 5]}),
     r"output_tree\.tuple\[1\]: leaf 5 is out of range"),
    (lambda m: m.update(output_tree={"list": []}), r"output_tree: 1 of the 1 leaves are missing"),
    (lambda m: m.update(output_tree={"namedtuple": "P", "fields": ["_x"], "items": [0]}),
     r"not a namedtuple"),
    (lambda m: m.update(input_tree={"dict": [["a", 0], ["a", 0]]}),
     r"input_tree\.dict\[1\]: key 'a' is used twice"),
    (lambda m: m["inputs"][0].update(dtype="i32"),
     r"the manifest says input 'x' is i32\[3\], the exported function has f32\[3\]"),
    (lambda m: m["inputs"][0].update(dtype="f99"), r"inputs\[0\]\.dtype: unknown dtype \"f99\""),
    (lambda m: m["inputs"][0].update(shape=[-3]), r"inputs\[0\]\.shape\[0\]: negative dim -3"),
    (lambda m: m["outputs"][0].update(shape=["(("]),
     r"outputs\[0\]\.shape\[0\]: not a dim expression"),
    (lambda m: m.update(returned_state=["nope"]),
     r"returned_state\[0\]: \"nope\" is not a variable"),
])
def test_edited_manifest_fails_at_load(plain, edit, message):
    manifest, _ = fmt.read(plain)
    edit(manifest)
    _repack(plain, manifest)
    with pytest.raises(ArtifactError, match=message):
        nnxc.load(plain)


def test_exported_function_must_fit_the_variable_table(tmp_path):
    """Same counts, other shapes: another model's exported function is refused at load."""
    a, b = tmp_path / "a.nnxc", tmp_path / "b.nnxc"
    nnxc.save(nnxc.trace(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), "f32[B,3]"), a)
    nnxc.save(nnxc.trace(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), "f32[B,4]"), b)
    _repack(a, exported=bytes(fmt.read(b)[1]["exported"]))
    with pytest.raises(ArtifactError, match=r"a\.nnxc: the manifest says variable 'kernel' is "
                                            r"f32\[3,2\], the exported function has f32\[4,2\]"):
        nnxc.load(a)


def test_artifact_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    path = tmp_path / "pipe.nnxc"
    os.mkfifo(path)
    with no_hang(), pytest.raises(ArtifactError, match="pipe.nnxc: not a regular file"):
        nnxc.load(path)


# -- ONNX: external data is read from inside the model's folder only --------------------------

SECRET = fz.SECRET * 64


@pytest.fixture()
def onnx_dir(tmp_path):
    """tmp/model/nested.onnx (+ nested.data) with external data in an initializer, a sparse
    initializer, both branches of an If, a function and training_info; tmp/secret.bin
    outside the folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    fz.onnx_seed_model(str(folder))
    (tmp_path / "secret.bin").write_bytes(SECRET)
    return folder


def _rewrite(path, tensor: str, **entries):
    """Set external-data entries (location=..., offset=..., length=...) of one tensor."""
    model = onnx.load(str(path), load_external_data=False)
    (t,) = [t for t in fz._onnx_places(model) if t.name == tensor]
    for e in t.external_data:
        if e.key in entries:
            e.value = str(entries.pop(e.key))
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, str(v)
    path.write_bytes(model.SerializeToString())


TENSORS = ["w", "sv", "then_t", "else_t", "k_t", "t_init", "t_algo"]


def test_nested_model_loads_every_tensor(onnx_dir):
    model = load_onnx(onnx_dir / "nested.onnx")
    values = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in fz._onnx_places(model)
              if t.name in TENSORS}
    assert values == {"w": [[1, 2], [3, 4]], "sv": [5, 6], "then_t": [1, 2], "else_t": [3, 4],
                      "k_t": [2, 2], "t_init": [7, 8, 9], "t_algo": [1]}


@pytest.mark.parametrize("tensor", TENSORS)
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "hardlink"])
def test_every_tensor_is_confined_to_the_folder(onnx_dir, tensor, how):
    """Initializers, sparse initializers, If branches, functions and training_info alike."""
    path, secret = onnx_dir / "nested.onnx", onnx_dir.parent / "secret.bin"
    if how == "symlink":
        os.symlink(secret, onnx_dir / "link.data")
    if how == "hardlink":
        os.link(secret, onnx_dir / "link.data")
    location = {"dotdot": "../secret.bin", "absolute": str(secret)}.get(how, "link.data")
    _rewrite(path, tensor, location=location, offset=0)
    why = {"dotdot": r"leaves the model's folder \('..'\)", "absolute": "is an absolute path",
           "symlink": "goes through a symbolic link", "hardlink": "has 2 hard links"}[how]
    with pytest.raises(UnsafeModelError, match=rf"nested\.onnx: .*\(tensor '{tensor}'\).*{why}"):
        load_onnx(path)
    with pytest.raises(UnsafeModelError, match=why):
        onnx_session(path)


def test_hardlinks_are_read_when_the_user_opts_in(onnx_dir):
    os.link(onnx_dir / "nested.data", onnx_dir / "second.data")
    path = onnx_dir / "nested.onnx"
    _rewrite(path, "t_init", location="second.data")
    with pytest.raises(UnsafeModelError, match="has 2 hard links"):
        load_onnx(path)
    model = load_onnx(path, allow_hardlinks=True)
    (t,) = [t for t in fz._onnx_places(model) if t.name == "t_init"]
    assert onnx.numpy_helper.to_array(t).tolist() == [7, 8, 9]


@pytest.mark.parametrize("entries, why", [
    ({"length": -4}, r"length '-4' is not a non-negative integer"),
    ({"length": 4}, r"length 4 is not the tensor's size \(12 bytes for FLOAT\[3\]\)"),
    ({"length": 16}, r"length 16 is not the tensor's size"),
    ({"offset": -1}, r"offset '-1' is not a non-negative integer"),
    ({"offset": "1_0"}, r"offset '1_0' is not a non-negative integer"),
    ({"offset": 10 ** 6}, r"holds \d+ bytes, too few for the tensor's \[1000000, 1000012\)"),
    ({"location": "fifo.data"}, r"is not a regular file"),
    ({"location": "sub"}, r"is not a regular file"),
    ({"location": "sub/../nested.data"}, r"leaves the model's folder"),
    ({"location": ""}, r"has no location"),
])
def test_bad_offsets_lengths_and_files_are_refused(onnx_dir, entries, why):
    os.mkfifo(onnx_dir / "fifo.data")
    (onnx_dir / "sub").mkdir()
    path = onnx_dir / "nested.onnx"
    _rewrite(path, "t_init", **entries)
    place = r"training_info\[0\]\.initialization\.initializer\[0\] \(tensor 't_init'\)"
    with no_hang(), pytest.raises(UnsafeModelError, match=rf"nested\.onnx: {place}: .*{why}"):
        load_onnx(path)


def test_broken_and_odd_model_files_get_a_clear_error(onnx_dir):
    path = onnx_dir / "nested.onnx"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(OnnxFileError, match=r"nested\.onnx is not an ONNX model"):
        load_onnx(path)
    os.mkfifo(onnx_dir / "pipe.onnx")
    with no_hang(), pytest.raises(OnnxFileError, match="pipe.onnx: not a regular file"):
        load_onnx(onnx_dir / "pipe.onnx")
    with pytest.raises(OnnxFileError, match="missing.onnx: No such file"):
        load_onnx(onnx_dir / "missing.onnx")


def test_onnx_session_runs_on_data_it_read_itself(onnx_dir):
    path = onnx_dir / "nested.onnx"
    model = load_onnx(path)
    model.ClearField("training_info")  # onnxruntime has no use for them
    del model.functions[:]
    model.graph.node.pop()  # the call of the local function, and its output
    model.graph.output.pop()
    ext = onnx_dir / "plain.onnx"
    onnx.save(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="plain.data", size_threshold=0)
    x = np.ones((2, 2), np.float32)
    y2, z = onnx_session(ext).run(None, {"x": x, "c": np.array(True)})
    np.testing.assert_array_equal(y2, x @ np.array([[1, 2], [3, 4]], np.float32)
                                  + np.array([[5, 0], [0, 6]], np.float32))
    np.testing.assert_array_equal(z, [1, 2])


# -- ONNX: the check-then-open race ------------------------------------------------------------

def _race_folder(tmp_path):
    """model/m.onnx whose only tensor is in model/sub/w.data; outside/w.data holds SECRET."""
    folder, outside = tmp_path / "model", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    w = np.arange(64, dtype=np.float32)
    (folder / "sub" / "w.data").write_bytes(w.tobytes())
    (outside / "w.data").write_bytes(SECRET[:w.nbytes])
    t = onnx.numpy_helper.from_array(w, "w")
    t.ClearField("raw_data")
    fz._external(t, "sub/w.data", 0, w.nbytes)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], initializer=[t])
    path = folder / "m.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    return path, folder / "sub", outside, w.tobytes()


def _swap_in_link(sub, outside):
    os.rename(sub, str(sub) + ".real")
    os.symlink(outside, sub)


def _swap_back(sub):
    os.unlink(sub)
    os.rename(str(sub) + ".real", sub)


def _tensor_bytes(model) -> bytes:
    return model.graph.initializer[0].raw_data


def test_a_folder_swapped_for_a_link_before_the_open_is_not_followed(tmp_path, monkeypatch):
    """The swap happens right before the data file is opened (after every path check)."""
    path, sub, outside, want = _race_folder(tmp_path)
    real_open, swapped = os.open, []

    def open_then_swap(p, *args, **kwargs):
        if os.path.basename(os.fspath(p)) == "w.data" and not swapped:
            _swap_in_link(sub, outside)
            swapped.append(True)
        return real_open(p, *args, **kwargs)
    monkeypatch.setattr(os, "open", open_then_swap)
    try:
        got = _tensor_bytes(load_onnx(path))
    except UnsafeModelError as e:
        assert "symbolic link" in str(e)
    else:
        assert got == want  # read from the folder that was opened, not through the link
    assert swapped


def test_symlink_race_never_reads_outside_the_folder(tmp_path):
    path, sub, outside, want = _race_folder(tmp_path)
    stop, errors = threading.Event(), []

    def swapper():
        try:
            while not stop.is_set():  # each state lasts long enough to be seen
                _swap_in_link(sub, outside)
                time.sleep(0.0002)
                _swap_back(sub)
                time.sleep(0.0002)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = {"read": 0, "refused": 0}
    try:
        for _ in range(2000):
            try:
                got = _tensor_bytes(load_onnx(path))
            except UnsafeModelError:
                outcomes["refused"] += 1
                continue
            assert got == want, "load_onnx returned bytes of a file outside the model folder"
            outcomes["read"] += 1
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert outcomes["read"] and outcomes["refused"], outcomes  # the race was on


# -- IR text: malformed input is an IRParseError with line and column ------------------------

_HEAD = "graph @g(%x: f32[3]) {\n"


@pytest.mark.parametrize("line2, message", [
    ("  %0: f32[3] = sin(%x) {a=" + "(" * 5000 + ")" * 5000 + "}",
     r"line 2, col \d+: nesting deeper than 100 levels"),
    ("  %0: f32[3] = sin(%x) {a=" + "9" * 5000 + "}",
     r"line 2, col 27: integer '9{37}\.\.\.' has 5000 digits"),
    ("  %0: f32[3] = add(%x, 99999999999:i32)", r"line 2, col 24: bad constant: 99999999999 is "
                                                 r"out of the range of i32"),
    ("  %0: f32[3] = add(%x, 1e39:f32)", r"line 2, col 24: bad constant: 1e\+39 overflows f32"),
    ("  %0: f32[3] = add(%x, 1.5:i32)", r"bad constant: 1.5 is not an integer \(i32\)"),
    ("  %0: f32[99999999999999999999] = sin(%x)", r"line 2, col 11: dim '9+' is not a size"),
    ("  %0: f32[\u00b2] = sin(%x)", r"line 2, col 11: bad dim '\u00b2'"),
    ("  %0: f32[" + "(" * 200 + "B" + ")" * 200 + "] = sin(%x)",
     r"line 2, col 11: bad dim '\(\(\(.*': nests deeper than 100 levels"),
    ("  %0: f32[B+" + "9" * 5000 + "] = sin(%x)", r"line 2, col 13: bad dim 'B\+9+\.\.\.': an "
                                                  r"integer of 5000 digits"),
    ("  %0: f32[3] = sin(%x) {a=1, a=2}", r"line 2, col 30: attribute 'a' is given twice"),
    ("  %0: f32[3] = sin(%x) {a=dim(B+)}", r"line 2, col 33: bad dim 'B\+': unexpected end"),
])
def test_malformed_ir_text_names_line_and_column(line2, message):
    with pytest.raises(IRParseError, match=message):
        parse(_HEAD + line2 + "\n  return %x\n}\n")


def test_deeply_nested_regions_are_a_parse_error():
    with pytest.raises(IRParseError, match=r"line 203, col 205: nesting deeper than 100 levels"):
        parse(fz.nested_regions(2000))
    assert parse(fz.nested_regions(50)).nodes[0].op == "cond"


def test_output_tree_with_unsortable_keys_is_a_parse_error():
    with pytest.raises(IRParseError, match=r"line 2, col 10: cannot build the output tree"):
        parse(_HEAD + "  return {1: %x, \"a\": %x}\n}\n")


@pytest.mark.parametrize("op, attrs, regions, why", [
    ("scan", {}, 1, "malformed scan node \\(missing attribute 'num_consts'\\)"),
    ("scan", {"num_consts": 0, "num_carry": 1, "length": 3}, 0,
     "malformed scan node \\(ValueError"),
    ("while", {"cond_nconsts": "x", "body_nconsts": 0}, 2, "malformed while node \\(TypeError"),
])
def test_verify_reports_malformed_nodes(op, attrs, regions, why):
    from nnxc.ir import Graph, Region
    x = Value(TensorType((3,), "f32"), "x")
    node = Node(op, [x], [TensorType((3,), "f32")], attrs,
                regions=[Region([Value(TensorType((3,), "f32"))]) for _ in range(regions)])
    g = Graph("g", inputs=[x], nodes=[node], outputs=node.outputs)
    with pytest.raises(VerifyError, match=rf"{op}: {why}"):
        verify(g)


# -- IR JSON: what from_json accepts prints, parses and verifies -----------------------------

@pytest.fixture(scope="module")
def doc():
    g = nnxc.trace(lambda x, n: jax.lax.cond(n > 0, jnp.sin, jnp.cos, x * 2.0), "f32[B,3]", "i32[]")
    return nnxc.ir.to_json(g)


def _edited(doc_text: str, edit) -> str:
    import json
    d = json.loads(doc_text)
    edit(d)
    return json.dumps(d)


@pytest.mark.parametrize("edit, message", [
    # these raised AttributeError, TypeError or ValueError
    (lambda d: d["nodes"][0].update(attrs=3), r"nodes\[0\]\.attrs: expected an object, got 3"),
    (lambda d: d["nodes"].__setitem__(0, "sin"), r"nodes\[0\]: expected an object, got \"sin\""),
    (lambda d: d["inputs"][0]["type"].update(dtype="f99"),
     r"inputs\[0\]\.type\.dtype: unknown dtype"),
    (lambda d: d["inputs"][0]["type"].update(shape=[{}]),
     r"inputs\[0\]\.type\.shape\[0\]: expected an integer"),
    (lambda d: d["nodes"][0]["inputs"].__setitem__(1, {"value": 2 ** 40, "dtype": "i8"}),
     r"nodes\[0\]\.inputs\[1\]\.value: bad constant: 1099511627776 is out of the range of i8"),
    (lambda d: d.update(nodes="x"), r"nodes: expected a list"),
    (lambda d: d["nodes"][-1]["regions"].__setitem__(0, "r"), r"regions\[0\]: expected an object"),
    (lambda d: d.update(name=None), r"name: expected a string, got null"),
    # these were accepted, and their text could not be printed or parsed back
    (lambda d: d["inputs"].append(dict(d["inputs"][0], id="x2")),
     r"inputs\[2\]: prints as %x, the name of inputs\[0\] too"),
    (lambda d: d["nodes"][0].update(op="sin cos"), r"nodes\[0\]\.op: expected an op name"),
    (lambda d: d["nodes"][0].update(path="a b"),
     r"nodes\[0\]\.path: a module path has no whitespace"),
    (lambda d: d["nodes"][0].update(attrs={"a b": 1}),
     r"nodes\[0\]\.attrs\.a b: expected an attribute name"),
    (lambda d: d["nodes"][0].update(attrs={"a": {"enum": "None", "member": "X"}}),
     r"'None' cannot name a class"),
    (lambda d: d["nodes"][0].update(attrs={"a": {"dim": "B+"}}),
     r"nodes\[0\]\.attrs\.a\.dim: bad dim"),
    (lambda d: d["updates"].append({"path": "nope", "value": "x"}),
     r"malformed graph: update of unknown variable 'nope'"),
    (lambda d: d.update(out_tree="(%x,)"), r"out_tree: names other values than \"outputs\""),
    (lambda d: d["nodes"][0].update(extra=1), r"nodes\[0\]: unknown field 'extra' in a node"),
])
def test_malformed_json_is_an_ir_json_error(doc, edit, message):
    with pytest.raises(IRJsonError, match=message):
        from_json(_edited(doc, edit))


def test_json_graphs_print_parse_and_verify(doc):
    g = from_json(doc)
    text = g.text()
    assert parse(text).text() == text
    verify(g)
