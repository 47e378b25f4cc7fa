"""Loading and running ONNX models, with external data confined to the model's folder.

An ONNX file names its external data files by relative path, and loaders that follow those
paths blindly read (or map) any file the process can open -- absolute paths, ``..`` and
symbolic links have each been the cause of ONNX CVEs. ``load_onnx`` and ``onnx_session``
refuse every location that does not name a regular file inside the model's own folder, and
every offset/length that does not fit in that file.
"""
from __future__ import annotations

import os
import re

import onnx
from onnx import AttributeProto, TensorProto

from ..errors import NnxcError


class UnsafeModelError(NnxcError):
    """An ONNX model's external data points outside its folder (or past a file's end)."""


def _tensors_in_graph(g):
    yield from g.initializer
    for s in g.sparse_initializer:
        yield s.values
        yield s.indices
    for node in g.node:
        yield from _tensors_in_node(node)


def _tensors_in_node(node):
    for a in node.attribute:
        if a.type == AttributeProto.TENSOR:
            yield a.t
        elif a.type == AttributeProto.TENSORS:
            yield from a.tensors
        elif a.type == AttributeProto.SPARSE_TENSOR:
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        elif a.type == AttributeProto.GRAPH:
            yield from _tensors_in_graph(a.g)
        elif a.type == AttributeProto.GRAPHS:
            for g in a.graphs:
                yield from _tensors_in_graph(g)


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of a model: initializers, constants, subgraphs, functions."""
    yield from _tensors_in_graph(model.graph)
    for f in model.functions:
        for node in f.node:
            yield from _tensors_in_node(node)


def _safe_file(base: str, location: str, tensor: str) -> str:
    """The path of ``location`` if it is a regular file inside ``base``; raise otherwise."""
    def refuse(why):
        raise UnsafeModelError(f"tensor {tensor!r}: external data location {location!r} {why}; "
                               "refusing to load it")
    if not location:
        refuse("is empty")
    if "\0" in location or os.path.isabs(location) or re.match(r"^([A-Za-z]:|[\\/])", location):
        refuse("is an absolute path")
    parts = re.split(r"[\\/]+", location)
    if any(p == ".." for p in parts):
        refuse("leaves the model's folder ('..')")
    path = base
    for p in parts:
        path = os.path.join(path, p)
        if os.path.islink(path):
            refuse("goes through a symbolic link")
    real_base = os.path.realpath(base)
    if os.path.commonpath([os.path.realpath(path), real_base]) != real_base:
        refuse("resolves outside the model's folder")
    if not os.path.isfile(path):
        refuse("is not an existing regular file")
    return path


def check_external_data(model: onnx.ModelProto, base: str) -> None:
    """Refuse external data outside ``base`` (the model's folder) or beyond a file's end."""
    for t in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        path = _safe_file(base, info.get("location", ""), t.name)
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise UnsafeModelError(f"tensor {t.name!r}: malformed external data offset/length") from None
        size = os.path.getsize(path)
        if offset < 0 or offset > size or (length >= 0 and offset + length > size):
            raise UnsafeModelError(f"tensor {t.name!r}: external data [{offset}, +{length}) lies "
                                   f"outside {info['location']!r} ({size} bytes)")


def load_onnx(path, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` that checks every external data location before reading any of it."""
    path = os.fspath(path)
    model = onnx.load(path, load_external_data=False)
    base = os.path.dirname(os.path.abspath(path))
    check_external_data(model, base)
    if load_external_data:
        for t in all_tensors(model):
            if t.data_location == TensorProto.EXTERNAL:
                _read_external(t, base)
    return model


def _read_external(t, base: str) -> None:
    info = {e.key: e.value for e in t.external_data}
    path = _safe_file(base, info["location"], t.name)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)  # no link swapped in since the check
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        f.seek(int(info.get("offset", 0)))
        length = int(info.get("length", -1))
        t.raw_data = f.read() if length < 0 else f.read(length)
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT


def onnx_session(model_or_path, providers=("CPUExecutionProvider",), options=None):
    """An onnxruntime InferenceSession; files are checked like ``load_onnx`` first."""
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
    check_external_data(onnx.load(path, load_external_data=False),
                        os.path.dirname(os.path.abspath(path)))
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))


def run_onnx(session, *args) -> list:
    """Run with positional inputs in the model's input order; returns the outputs as a list."""
    names = [i.name for i in session.get_inputs()]
    if len(args) != len(names):
        raise NnxcError(f"the model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
    return session.run(None, dict(zip(names, args)))
