"""Initializers and atomic model files, with ONNX external data for big models.

External data goes to one file beside the model, named after the model file and the data's
content hash (``model.onnx.<hash16>.data``): two models in one folder never share a data
file, and a new export never overwrites the data an existing model reads. Each tensor is
streamed from the variable's own buffer into it, so the weights are never held twice in
memory. Both files are written under temporary names (``nnxc._files``), then the data file
is renamed into place, then the model; only then are the data files of the replaced model
removed. A reader -- or a crash at any point -- sees the old model with its old data or
the new model with its new data, never a mix.
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np
from onnx import TensorProto, helper

from ..._files import create_temp, fsync_dir, remove_quietly
from ...errors import NnxcError
from .builder import host_array

PROTO_LIMIT = 2**31 - 2**26  # protobuf's 2 GB ceiling, with room for the graph itself
ALIGN = 4096  # external tensors start on page boundaries so runtimes can mmap them
INLINE_BELOW = 1024  # tensors smaller than this stay inside the model file


def _location(path, external_data, total: int) -> str | None:
    if external_data is False or path is None:
        if external_data is False and path is not None and total > PROTO_LIMIT:
            raise NnxcError(f"the weights take {total / 2**30:.2f} GiB, over protobuf's 2 GB "
                            "limit: export with external_data=True")
        return None
    if external_data is None and total <= PROTO_LIMIT:
        return None
    if isinstance(external_data, (str, os.PathLike)) and not isinstance(external_data, bool):
        name = os.fspath(external_data)
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise NnxcError(f"external_data={name!r}: give a plain file name; the data file is "
                            "always written beside the model")
        return name
    return os.path.basename(os.fspath(path)) + ".data"


HASH_CHARS = 16


def data_file_name(location: str, digest: str) -> str:
    """The data file's name: the hash goes before the extension (``m.onnx.<hash>.data``,
    ``weights.<hash>.bin``)."""
    stem, ext = os.path.splitext(location)
    return f"{stem}.{digest[:HASH_CHARS]}{ext}"


def own_data_files(folder: str, model_name: str) -> list[str]:
    """Names of the data files nnxc writes for model file ``model_name`` in ``folder``:
    ``<model_name>.<hash16>.data``, and ``<model_name>.data`` of earlier versions."""
    pattern = re.compile(re.escape(model_name) + r"(\.[0-9a-f]{%d})?\.data" % HASH_CHARS)
    try:
        return sorted(e.name for e in os.scandir(folder) if pattern.fullmatch(e.name) and e.is_file())
    except OSError:
        return []


def build_initializers(model, weights, consts, path, external_data):
    """Add ``weights`` and ``consts`` [(name, array)] to the model as initializers; returns
    the external-data plan ``(location, [(array, offset), ...])`` for ``write_model``, or None.
    With external data, every weight goes to the data file, and constants of 1 kB or more.
    """
    arrays = [(name, host_array(x), True) for name, x in weights]
    arrays += [(name, host_array(x), False) for name, x in consts]
    total = sum(a.nbytes for _, a, _ in arrays)
    location = _location(path, external_data, total)
    inits = model.graph.initializer
    items, offset = [], 0
    for name, a, weight in arrays:
        t = inits.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(a.dtype)
        t.dims.extend(a.shape)
        if location is None or (not weight and a.nbytes < INLINE_BELOW):
            t.raw_data = np.ascontiguousarray(a).tobytes()
            continue
        offset = -(-offset // ALIGN) * ALIGN
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(a.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        items.append((a, offset))
        offset += a.nbytes
    return (location, items) if location is not None else None


def _external_tensors(model, location: str):
    from .tensors import all_tensors
    for t in all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location" and e.value == location:
                    yield e


def write_model(model, path: str, plan) -> None:
    """Write the model (and its external data) atomically, in this order:

    1. the data to a temporary file, hashing it; the model's tensors then name the data
       file ``data_file_name(location, hash)``; the model to a temporary file;
    2. rename the data file into place (a new name: the old model's data is untouched),
       then the model over the old one;
    3. remove the data files of the model replaced (``own_data_files``), now unused.

    On failure before step 2 ends, the temporaries (and a data file renamed in but not yet
    used) are removed and the old model still works with its old data.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    data_tmp = model_tmp = data_final = None
    placed = False  # a data file we renamed into place that no model uses yet
    try:
        if plan is not None:
            location, items = plan
            f, data_tmp = create_temp(os.path.join(folder, base + ".data"))
            digest = hashlib.sha256()
            with f:
                for a, offset in items:
                    view = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
                    digest.update(offset.to_bytes(8, "little") + view.nbytes.to_bytes(8, "little"))
                    digest.update(view)
                    f.seek(offset)
                    f.write(view)
                f.flush()
                os.fsync(f.fileno())
            name = data_file_name(location, digest.hexdigest())
            for e in _external_tensors(model, location):
                e.value = name
            data_final = os.path.join(folder, name)
        f, model_tmp = create_temp(path)
        with f:
            f.write(model.SerializeToString(deterministic=True))
            f.flush()
            os.fsync(f.fileno())
        if data_tmp is not None:  # the data first: the model never points at missing data
            placed = not os.path.exists(data_final)  # else: the same bytes, already in use
            os.replace(data_tmp, data_final)
            data_tmp = None
        os.replace(model_tmp, path)
        model_tmp = None
        placed = False
        fsync_dir(folder)
    finally:
        for tmp in (data_tmp, model_tmp):
            if tmp is not None:
                remove_quietly(tmp)
        if placed:
            remove_quietly(data_final)
    keep = os.path.basename(data_final) if data_final else None
    for name in own_data_files(folder, base):
        if name != keep:
            remove_quietly(os.path.join(folder, name))
