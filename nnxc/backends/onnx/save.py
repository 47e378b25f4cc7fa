"""Initializers and atomic model files, with ONNX external data for big models.

External data goes to one file beside the model; each tensor is streamed from the
variable's own buffer into it, so the weights are never held twice in memory. Files are
written to temporary names in the destination folder and renamed into place.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from onnx import TensorProto, helper

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


def _temp(folder: str, name: str):
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a plain open() would not
    return os.fdopen(fd, "wb"), tmp


def write_model(model, path: str, plan) -> None:
    """Write the model (and its external data) atomically: temp files, then ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    temps = []
    try:
        if plan is not None:
            location, items = plan
            f, tmp = _temp(folder, location)
            temps.append((tmp, os.path.join(folder, location)))
            with f:
                for a, offset in items:
                    f.seek(offset)
                    f.write(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
                f.flush()
                os.fsync(f.fileno())
        f, tmp = _temp(folder, base)
        temps.append((tmp, os.path.abspath(path)))
        with f:
            f.write(model.SerializeToString(deterministic=True))
            f.flush()
            os.fsync(f.fileno())
        for tmp, final in temps:  # the data file first: the model never points at missing data
            os.replace(tmp, final)
        temps = []
    finally:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
