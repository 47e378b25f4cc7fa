"""Files nnxc writes: the user's umask, one atomic writer, ONNX external data that two
models never share and that a crash between the renames cannot mix up, and temporaries
of killed writers cleaned up."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import nnxc
from nnxc import _files
from nnxc.ir import to_json
from nnxc.ir.printer import write_text
from nnxc.runtime.onnx_io import load_onnx, onnx_session, run_onnx


class MLP(nnx.Module):
    def __init__(self, seed: int):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(32, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 8, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def _graph(seed: int):
    return nnxc.trace(MLP(seed), "f32[B,32]")


X = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)


def _onnx_out(path) -> np.ndarray:
    return run_onnx(onnx_session(path), X)[0]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- permissions: 0o666 & ~umask for everything -----------------------------------------

@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_file_gets_the_users_umask(tmp_path, umask, mask, want):
    umask(mask)
    g = _graph(0)
    frozen = nnxc.optimize(g, "default", freeze=nnx.Param)
    ir = tmp_path / "m.ir"
    side = write_text(frozen, ir, sidecar=True, full_constants=False)
    _files.atomic_write(tmp_path / "m.json", to_json(g))
    _files.atomic_write(tmp_path / "plain.txt", "text")
    nnxc.save(g, tmp_path / "m.nnxc")
    nnxc.export_onnx(g, tmp_path / "inline.onnx")
    nnxc.export_onnx(g, tmp_path / "ext.onnx", external_data=True)
    written = _listing(tmp_path)
    data = [n for n in written if n.startswith("ext.onnx.") and n.endswith(".data")]
    assert len(data) == 1
    for name in ["m.ir", os.path.basename(side), "m.json", "plain.txt", "m.nnxc", "inline.onnx",
                 "ext.onnx", data[0]]:
        assert _mode(tmp_path / name) == want, name
    assert _files.file_mode() == want
    assert not [n for n in written if ".tmp-" in n]


# -- ONNX external data -----------------------------------------------------------------

def test_two_models_in_one_folder_keep_their_own_data(tmp_path):
    a, b = _graph(1), _graph(2)
    want_a, want_b = (np.asarray(nnxc.compile(g)(X)) for g in (a, b))
    nnxc.export_onnx(a, tmp_path / "a.onnx", external_data=True)
    nnxc.export_onnx(b, tmp_path / "b.onnx", external_data=True)
    names = _listing(tmp_path)
    data = [n for n in names if n.endswith(".data")]
    assert len(data) == 2 and any(n.startswith("a.onnx.") for n in data) \
        and any(n.startswith("b.onnx.") for n in data)
    for name, want in (("a.onnx", want_a), ("b.onnx", want_b)):
        np.testing.assert_allclose(_onnx_out(tmp_path / name), want, rtol=1e-5, atol=1e-5)
        model = load_onnx(tmp_path / name)  # the checked loader reads the data too
        assert len(model.graph.initializer) >= 4
    # the same weights named the same by two explicit exports are still two files
    nnxc.export_onnx(a, tmp_path / "c.onnx", external_data="weights.bin")
    nnxc.export_onnx(b, tmp_path / "d.onnx", external_data="weights.bin")
    np.testing.assert_allclose(_onnx_out(tmp_path / "c.onnx"), want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_onnx_out(tmp_path / "d.onnx"), want_b, rtol=1e-5, atol=1e-5)


def test_reexport_replaces_the_data_and_removes_the_old_file(tmp_path):
    path = tmp_path / "m.onnx"
    nnxc.export_onnx(_graph(1), path, external_data=True)
    first = _listing(tmp_path)
    nnxc.export_onnx(_graph(1), path, external_data=True)  # deterministic: same files
    assert _listing(tmp_path) == first
    b = _graph(2)
    nnxc.export_onnx(b, path, external_data=True)
    second = _listing(tmp_path)
    assert len(second) == 2 and second != first
    np.testing.assert_allclose(_onnx_out(path), np.asarray(nnxc.compile(b)(X)), rtol=1e-5, atol=1e-5)
    (tmp_path / "m.onnx.data").write_bytes(b"left by an older nnxc")
    nnxc.export_onnx(b, path)  # no external data: the data files of m.onnx go
    assert _listing(tmp_path) == ["m.onnx"]


def test_a_crash_between_the_renames_leaves_the_old_model_working(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    nnxc.export_onnx(_graph(1), path, external_data=True)
    before = _listing(tmp_path)
    old_out = _onnx_out(path)
    old_bytes = path.read_bytes()

    real = os.replace
    calls = []

    def crash_after_the_data(src, dst):
        calls.append(os.path.basename(dst))
        if len(calls) > 1:  # the data file is in place; the process dies before the model
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_the_data)
    with pytest.raises(OSError, match="killed"):
        nnxc.export_onnx(_graph(2), path, external_data=True)
    monkeypatch.setattr(os, "replace", real)
    assert calls[0].endswith(".data") and calls[1] == "m.onnx"
    assert path.read_bytes() == old_bytes
    assert np.array_equal(_onnx_out(path), old_out)
    assert _listing(tmp_path) == before  # no temporaries, no unused new data file

    # a process killed outright (no cleanup at all) leaves the old model working as well
    def killed(src, dst):
        calls.append(dst)
        if str(dst).endswith("m.onnx"):
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(_files, "remove_quietly", lambda p: None)
    import nnxc.backends.onnx.save as save
    monkeypatch.setattr(save, "remove_quietly", lambda p: None)
    with pytest.raises(KeyboardInterrupt):
        nnxc.export_onnx(_graph(2), path, external_data=True)
    monkeypatch.undo()
    assert np.array_equal(_onnx_out(path), old_out)
    # its temporaries carry its pid; once that process is gone the next export removes
    # them, and the data file it renamed in but never used
    dead = _dead_pid()
    for name in _listing(tmp_path):
        if name.startswith(f".m.onnx.tmp-{os.getpid()}-"):
            os.rename(tmp_path / name, tmp_path / name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    assert len(_listing(tmp_path)) > len(before)
    nnxc.export_onnx(_graph(3), path, external_data=True)
    after = _listing(tmp_path)
    assert len(after) == 2 and after[0] == "m.onnx" and after[1].startswith("m.onnx.")
    np.testing.assert_allclose(_onnx_out(path), np.asarray(nnxc.compile(_graph(3))(X)),
                               rtol=1e-5, atol=1e-5)


# -- temporaries of killed writers --------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".m.ir.tmp-{dead}-abc123", tmp_path / f".m.onnx.tmp-{dead}-0f0f",
             tmp_path / f".m.onnx.data.tmp-{dead}-1a2b"]
    keep = [tmp_path / f".m.ir.tmp-{alive}-abc123",  # a live writer
            tmp_path / f".other.ir.tmp-{dead}-abc123",  # another target
            tmp_path / ".m.ir.tmp-notapid"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    write_text(_graph(0), tmp_path / "m.ir")
    nnxc.export_onnx(_graph(0), tmp_path / "m.onnx", external_data=True)
    for p in stale:
        assert not p.exists(), p
    for p in keep:
        assert p.exists(), p


def test_atomic_writer_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    _files.atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with _files.atomic_open(target, "w") as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and _listing(tmp_path) == ["out.txt"]
