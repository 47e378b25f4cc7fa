"""Loading and running ONNX models, with external data confined to the model's folder.

An ONNX file names its external data files by relative path, and loaders that follow those
paths blindly read (or map) any file the process can open -- absolute paths, ``..``,
symbolic and hard links have each been the cause of ONNX CVEs, and checking a path before
opening it races with whoever can rename things in the folder. So ``load_onnx`` and
``onnx_session`` never open external data by path:

- every tensor the loader could read is found (graph initializers, sparse initializers,
  Constant-node attributes, subgraphs of If/Loop/Scan at any depth, functions and their
  attribute defaults, training_info) and its entry checked before any file is opened: a
  relative location without ``..``, an offset and a length that are plain non-negative
  integers, a length equal to the tensor's byte size;
- the model's folder is opened once, and each location is opened from it one component
  at a time, relative to the folder just opened, with ``O_NOFOLLOW`` (a symbolic link at
  any component is refused, whenever it appears);
- the opened file itself is checked (``fstat``): a regular file, with one link (a hard
  link may be a file from outside the folder; ``allow_hardlinks=True`` accepts them), and
  long enough for ``[offset, offset + length)``; then exactly those bytes are read from it.

``onnx_session`` gives onnxruntime the bytes read this way (in memory), so onnxruntime
opens no file either.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import NnxcError


class UnsafeModelError(NnxcError):
    """An ONNX model's external data that nnxc refuses to read: a location outside the
    model's folder or through a link, a file that is not a plain regular file, or an
    offset/length that does not fit the file or the tensor."""


class OnnxFileError(NnxcError, ValueError):
    """An ONNX model file that cannot be read: missing, not a regular file, not ONNX."""


from ..backends.onnx.tensors import all_tensors, tensor_places  # noqa: E402,F401 - re-exported


# -- external-data entries, checked before any file is opened ------------------------------

# bits per element of each TensorProto data type that external data can hold
_BITS = {TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8,
         TensorProto.UINT16: 16, TensorProto.INT16: 16, TensorProto.INT32: 32,
         TensorProto.INT64: 64, TensorProto.BOOL: 8, TensorProto.FLOAT16: 16,
         TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
         TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8),
                     ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4),
                     ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2)):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits
_KNOWN_KEYS = ("location", "offset", "length", "checksum", "basepath")  # basepath: ignored


@dataclasses.dataclass
class _Entry:
    """One tensor's external data: ``length`` bytes at ``offset`` of ``location``."""

    where: str  # the tensor's place and name, for messages
    tensor: TensorProto
    location: str
    parts: tuple[str, ...]  # the location's path components, each a plain name
    offset: int
    length: int


def _entries(model: onnx.ModelProto, path: str) -> list[_Entry]:
    """The external-data entries of every tensor of ``model``, each checked on its own."""
    return [_entry(path, where, t) for where, t in tensor_places(model)
            if t.data_location == TensorProto.EXTERNAL]


def _entry(path: str, where: str, t: TensorProto) -> _Entry:
    where = f"{where} (tensor {t.name!r})"

    def refuse(why: str):
        raise UnsafeModelError(f"{path}: {where}: {why}; refusing to load it")
    info: dict[str, str] = {}
    for e in t.external_data:
        if not isinstance(e.key, str) or not isinstance(e.value, str):  # protobuf gives
            refuse("an external data entry is not UTF-8 text")  # bytes for invalid UTF-8
        if e.key in info:
            refuse(f"external data key {e.key!r} is given twice")
        info[e.key] = e.value
    unknown = sorted(set(info) - set(_KNOWN_KEYS))
    if unknown:
        refuse(f"unknown external data key(s) {', '.join(map(repr, unknown))}")
    location = info.get("location", "")
    parts = _location_parts(location, refuse)
    offset = _plain_int(info.get("offset", "0"), "offset", refuse)
    nbytes = _tensor_nbytes(t, refuse)
    length = _plain_int(info["length"], "length", refuse) if "length" in info else nbytes
    if length != nbytes:
        refuse(f"external data length {length} is not the tensor's size ({nbytes} bytes for "
               f"{TensorProto.DataType.Name(t.data_type)}{list(t.dims)})")
    return _Entry(where, t, location, parts, offset, length)


def _location_parts(location: str, refuse) -> tuple[str, ...]:
    """The components of a relative location inside the folder (``a/b.bin`` -> a, b.bin)."""
    if not location:
        refuse("external data has no location")
    shown = _shown(location)
    if "\0" in location:
        refuse(f"external data location {shown} holds a NUL character")
    if re.match(r"^([A-Za-z]:|[\\/])", location):
        refuse(f"external data location {shown} is an absolute path")
    parts = tuple(p for p in re.split(r"[\\/]+", location) if p not in ("", "."))
    if ".." in parts:
        refuse(f"external data location {shown} leaves the model's folder ('..')")
    if not parts:
        refuse(f"external data location {shown} names the model's folder, not a file")
    return parts


def _shown(location: str) -> str:
    return repr(location if len(location) <= 200 else location[:200] + "...")


def _plain_int(text: str, what: str, refuse) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        refuse(f"external data {what} {text[:40]!r} is not a non-negative integer")
    return int(text)


def _tensor_nbytes(t: TensorProto, refuse) -> int:
    bits = _BITS.get(t.data_type)
    if bits is None:
        kind = TensorProto.DataType.Name(t.data_type) if t.data_type in \
            TensorProto.DataType.values() else str(t.data_type)
        refuse(f"a tensor of type {kind} cannot keep its data externally")
    n = 1
    for d in t.dims:
        if d < 0:
            refuse(f"tensor dims {list(t.dims)} hold a negative size")
        n *= d
    return (n * bits + 7) // 8


# -- opening files inside the folder, never through a link --------------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open: fstat refuses it
_CAN_OPEN_BENEATH = bool(_NOFOLLOW) and os.open in os.supports_dir_fd


class _Folder:
    """The model's folder, opened once. ``open(entry)`` opens a file inside it one path
    component at a time, each relative to the folder opened before it, without following
    links, so what is opened is inside the folder whatever is renamed meanwhile."""

    def __init__(self, model_path: str):
        if not _CAN_OPEN_BENEATH:
            raise UnsafeModelError(f"{model_path}: this platform cannot open external data "
                                   "without following links; refusing to load it")
        self.path = model_path
        base = os.path.dirname(os.path.abspath(model_path))
        try:
            self.fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except OSError as e:
            raise OnnxFileError(f"cannot open the folder of {model_path}: {e.strerror}") from None

    def __enter__(self) -> "_Folder":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def refuse(self, entry: _Entry, why: str):
        raise UnsafeModelError(f"{self.path}: {entry.where}: external data location "
                               f"{_shown(entry.location)} {why}; refusing to load it")

    def open(self, entry: _Entry, allow_hardlinks: bool) -> tuple[int, int]:
        """(file descriptor, size) of the entry's file, checked on the descriptor."""
        fd = self.fd
        for i, part in enumerate(entry.parts):
            last = i == len(entry.parts) - 1
            flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | (_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nxt, err = os.open(part, flags, dir_fd=fd), None
            except OSError as e:
                nxt, err = None, e
            if err is not None:
                why = self._open_problem(fd, part, err, last)
            if fd != self.fd:
                os.close(fd)
            if err is not None:
                self.refuse(entry, why)
            fd = nxt
        try:
            size = self._check_file(fd, entry, allow_hardlinks)
        except BaseException:
            os.close(fd)
            raise
        return fd, size

    @staticmethod
    def _open_problem(dir_fd: int, part: str, err: OSError, last: bool) -> str:
        try:
            is_link = stat.S_ISLNK(os.lstat(part, dir_fd=dir_fd).st_mode)
        except OSError:
            is_link = False
        if is_link or err.errno == errno.ELOOP:
            return f"goes through a symbolic link ({part!r})"
        if err.errno == errno.ENOENT:
            return f"does not exist ({part!r} is missing)"
        if err.errno == errno.ENOTDIR and not last:
            return f"goes through {part!r}, which is not a folder"
        return f"cannot be opened ({part!r}: {err.strerror})"

    def _check_file(self, fd: int, entry: _Entry, allow_hardlinks: bool) -> int:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self.refuse(entry, "is not a regular file")
        if st.st_nlink > 1 and not allow_hardlinks:
            self.refuse(entry, f"has {st.st_nlink} hard links (it may be a file from outside "
                               "the model's folder; pass allow_hardlinks=True to read it)")
        if entry.offset + entry.length > st.st_size:
            self.refuse(entry, f"holds {st.st_size} bytes, too few for the tensor's "
                               f"[{entry.offset}, {entry.offset + entry.length}) "
                               f"(offset {entry.offset}, length {entry.length})")
        return st.st_size

    def read(self, entry: _Entry, allow_hardlinks: bool) -> bytes:
        fd, _ = self.open(entry, allow_hardlinks)
        try:
            chunks, at, left = [], entry.offset, entry.length
            while left:
                chunk = os.pread(fd, min(left, 1 << 30), at)
                if not chunk:
                    self.refuse(entry, "became shorter while being read")
                chunks.append(chunk)
                at, left = at + len(chunk), left - len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def check(self, entry: _Entry, allow_hardlinks: bool) -> None:
        fd, _ = self.open(entry, allow_hardlinks)
        os.close(fd)


# -- reading models ------------------------------------------------------------------------

def subgraphs(node: onnx.NodeProto):
    """The bodies of a node (Loop, If, Scan): its graph-valued attributes."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def op_types(graph: onnx.GraphProto, nested: bool = True) -> set[str]:
    """The op types of ``graph``'s nodes, and of the bodies inside them when ``nested``."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        if nested:
            for sub in subgraphs(node):
                ops |= op_types(sub)
    return ops


def read_model_file(path) -> onnx.ModelProto:
    """The ModelProto in the file ``path``, external data left unread (OnnxFileError when
    the file cannot be read or is not an ONNX protobuf)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except OSError as e:
        raise OnnxFileError(f"cannot read ONNX model {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OnnxFileError(f"cannot read ONNX model {path}: not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
    except OSError as e:
        raise OnnxFileError(f"cannot read ONNX model {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, RuntimeWarning, ...
        raise OnnxFileError(f"{path} is not an ONNX model ({len(data)} bytes that do not "
                            f"decode as onnx.ModelProto: {e})") from None
    return model


def check_external_data(model: onnx.ModelProto, base_or_path: str,
                        allow_hardlinks: bool = False) -> None:
    """Refuse (UnsafeModelError) external data that ``load_onnx`` would refuse; reads no
    data. ``base_or_path``: the model file's path, or its folder."""
    path = _model_path(base_or_path)
    entries = _entries(model, path)
    if entries:
        with _Folder(path) as folder:
            for entry in entries:
                folder.check(entry, allow_hardlinks)


def _model_path(base_or_path: str) -> str:
    """A path whose folder is the model's: the model file itself, or a name in ``base``."""
    p = os.fspath(base_or_path)
    return os.path.join(p, "model.onnx") if os.path.isdir(p) else p


def load_onnx(path, load_external_data: bool = True, allow_hardlinks: bool = False
              ) -> onnx.ModelProto:
    """``onnx.load`` that reads external data only from inside the model's folder.

    Every entry is checked before any file is opened; each file is opened from the folder
    without following links and checked on the open file (see the module docstring).
    ``load_external_data=False`` checks the files without reading them;
    ``allow_hardlinks=True`` reads files that have other hard links. Raises OnnxFileError
    for a file that is not ONNX and UnsafeModelError for refused external data, naming the
    file, the tensor's place and what is wrong.
    """
    path = os.fspath(path)
    model = read_model_file(path)
    _load_external(model, path, allow_hardlinks, inline=load_external_data)
    return model


def _load_external(model: onnx.ModelProto, path: str, allow_hardlinks: bool,
                   inline: bool = True, into=None) -> None:
    """Check every external entry of ``model``, then read each: into the tensor
    (``inline``), or through ``into(entry, data)``."""
    entries = _entries(model, path)
    if not entries:
        return
    with _Folder(path) as folder:
        for entry in entries:
            folder.check(entry, allow_hardlinks)
        if not inline and into is None:
            return
        for entry in entries:
            data = folder.read(entry, allow_hardlinks)
            if into is not None:
                into(entry, data)
            else:
                _set_data(entry.tensor, data)


def _set_data(t: TensorProto, data: bytes) -> None:
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    t.raw_data = data


def onnx_session(model_or_path, providers=("CPUExecutionProvider",), options=None,
                 allow_hardlinks: bool = False):
    """An onnxruntime InferenceSession. A path is read like ``load_onnx`` reads it and its
    external data handed to onnxruntime in memory: onnxruntime opens no file itself."""
    import onnxruntime as ort
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes about unused initializers
    if isinstance(model_or_path, onnx.ModelProto):
        if any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(model_or_path)):
            raise NnxcError("this model keeps its weights in external data: open it by path")
        data = model_or_path.SerializeToString()
        return ort.InferenceSession(data, sess_options=options, providers=list(providers))
    path = os.fspath(model_or_path)
    model = read_model_file(path)
    names, buffers = [], []

    def in_memory(entry: _Entry, data: bytes) -> None:
        name = f"nnxc-in-memory-{len(names)}.bin"  # a file only onnxruntime's memory has
        del entry.tensor.external_data[:]
        for key, value in (("location", name), ("offset", "0"), ("length", str(len(data)))):
            e = entry.tensor.external_data.add()
            e.key, e.value = key, value
        names.append(name)
        buffers.append(data)
    _load_external(model, path, allow_hardlinks, inline=False, into=in_memory)
    if names:
        options.add_external_initializers_from_files_in_memory(
            names, buffers, [len(b) for b in buffers])
    return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                providers=list(providers))


def run_onnx(session, *args) -> list:
    """Run with positional inputs in the model's input order; returns the outputs as a list.
    bf16 inputs and outputs go through bound OrtValues (onnxruntime's numpy bridge has no
    bfloat16)."""
    names = [i.name for i in session.get_inputs()]
    if len(args) != len(names):
        raise NnxcError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
    if not any(_is_bf16(a) for a in args) and not any(
            o.type == "tensor(bfloat16)" for o in session.get_outputs()):
        return session.run(None, dict(zip(names, args)))
    import ctypes

    import onnxruntime as ort
    io = session.io_binding()
    for name, a in zip(names, args):
        a = np.ascontiguousarray(a)
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            a.view(np.uint16), TensorProto.BFLOAT16) if _is_bf16(a)
            else ort.OrtValue.ortvalue_from_numpy(a))
    for o in session.get_outputs():
        io.bind_output(o.name, "cpu")
    session.run_with_iobinding(io)
    out = []
    for v in io.get_outputs():
        if v.data_type() != "tensor(bfloat16)":
            out.append(v.numpy())
            continue
        import ml_dtypes
        shape = tuple(v.shape())
        n = int(np.prod(shape))
        bits = np.ctypeslib.as_array((ctypes.c_uint16 * n).from_address(v.data_ptr())) if n else \
            np.zeros(0, np.uint16)
        out.append(bits.copy().reshape(shape).view(ml_dtypes.bfloat16))
    return out


def _is_bf16(a) -> bool:
    return getattr(getattr(a, "dtype", None), "name", "") == "bfloat16"
