"""The artifact container: a fixed header, a JSON manifest, then hashed payload sections.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89NNXC\\r\\n\\x1a"   (the high byte and CR/LF catch text-mode copies)
    8       4     u32 format version (FORMAT_VERSION)
    12      4     u32 flags, 0 (reserved)
    16      8     u64 manifest length M
    24      32    sha256 of the manifest bytes
    56      M     manifest: UTF-8 JSON, keys sorted
    56+M    ...   payload: the sections, each starting at a multiple of ALIGN from the payload
                  start, zero padding between them

The manifest records ``format_version`` (equal to the header's), ``sections`` (name ->
``{"offset", "length"}`` relative to the payload start) and ``payload``
(``{"length", "sha256"}`` of the whole payload, padding included). Every byte of the file is
covered: the header fields are checked directly, the manifest by its sha256 in the header,
the payload by its sha256 in the manifest.

Readers are looked up by version in ``READERS``; a format change bumps FORMAT_VERSION and
keeps the reader of every older version, and tools/make_golden_artifact.py adds a golden
file for the new version to tests/golden_artifacts (the old goldens stay and must load).
``mapped`` reads a file through a read-only memory map, hashing it in chunks, so loading
needs no copy of the file in memory; ``read`` returns copies of the sections. A sharded
artifact (its manifest has ``sharding``, see ``nnxc.runtime.distributed``) also records a
sha256 of every distinct weight shard: ``mapped(path, verify_payload=False)`` then checks
everything but the payload hash, and each process checks only the bytes it reads.
The ``exported`` section is ``jax.export`` serialization, readable under jax's own
compatibility guarantees for serialized modules.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import struct
from typing import Callable

import numpy as np

from .._files import atomic_open
from ..errors import NnxcError

MAGIC = b"\x89NNXC\r\n\x1a"
FORMAT_VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<8sIIQ32s")  # magic, version, flags, manifest length, manifest sha256
HEADER_SIZE = _HEADER.size  # 56


class ArtifactError(NnxcError):
    """An artifact file that cannot be read: not an artifact, unknown version, corrupted."""


def pack(manifest: dict, sections: dict) -> tuple[bytes, dict]:
    """(file bytes, completed manifest) for ``manifest`` and the named ``sections`` (bytes or
    ``Parts``); ``write`` writes the same bytes to a file without joining them."""
    manifest, head = _complete(manifest, sections)
    return head + b"".join(bytes(c) for c in _chunks(sections)), manifest


class Parts:
    """A section given as parts that follow one another (a safetensors header, then each
    array's bytes): ``write`` writes them in place, never joining them into one copy. An array
    part may be a NumPy array or a JAX array, read through DLPack without a copy (``np.asarray``
    of a whole JAX array keeps a NumPy copy alive with it), see ``_host_chunks``."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.length = sum(len(p) if isinstance(p, (bytes, bytearray)) else int(p.nbytes)
                          for p in self.parts)

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())

    def chunks(self):
        for p in self.parts:
            if isinstance(p, (bytes, bytearray)):
                yield p
            else:
                yield from _host_chunks(p)


def _flat_bytes(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _host_chunks(a):
    """The bytes of an array as flat uint8 views: a NumPy array, or a JAX array on one CPU
    device, through DLPack without a copy; otherwise (bfloat16, which NumPy's DLPack lacks,
    or an array on other devices) copied to the host ``_CHUNK`` bytes of rows at a time."""
    if isinstance(a, np.ndarray):
        yield _flat_bytes(a)
        return
    try:
        view = np.from_dlpack(a)
    except (BufferError, RuntimeError, TypeError):
        view = None
    if view is not None:
        yield _flat_bytes(view)
        return
    if a.ndim == 0:
        yield _flat_bytes(np.asarray(a))
        return
    step = max(1, _CHUNK // max(1, int(a.nbytes) // a.shape[0]))
    for k in range(0, a.shape[0], step):
        yield _flat_bytes(np.asarray(a[k:k + step]))


def safetensors_parts(arrays: dict, dtype_names: dict) -> Parts:
    """``arrays`` (name -> NumPy or JAX array) in the safetensors format: an 8-byte
    little-endian header length, the JSON header (data offsets in the order given, padded
    with spaces to 8 bytes), then each array's bytes, referenced, not copied.
    ``dtype_names``: IR dtype name -> safetensors dtype name."""
    from ..ir.types import dtype_name
    header, offset = {}, 0
    for name, a in arrays.items():
        n = int(a.nbytes)
        header[name] = {"dtype": dtype_names[dtype_name(a.dtype)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Parts([struct.pack("<Q", len(text)) + text, *arrays.values()])


def _layout(sections: dict) -> tuple[dict, int]:
    layout, offset = {}, 0
    for name, data in sections.items():
        offset += -offset % ALIGN
        layout[name] = {"offset": offset, "length": len(data)}
        offset += len(data)
    return layout, offset


def _chunks(sections: dict):
    """The payload's bytes, padding included, as buffers in file order."""
    offset = 0
    for data in sections.values():
        pad = -offset % ALIGN
        if pad:
            yield b"\0" * pad
        offset += pad + len(data)
        yield from (data.chunks() if isinstance(data, Parts) else (data,))


def _complete(manifest: dict, sections: dict) -> tuple[dict, bytes]:
    """The manifest with the sections' layout and the payload's length and sha256, and the
    file's header and manifest bytes. The payload is hashed in place, part by part."""
    layout, length = _layout(sections)
    digest = hashlib.sha256()
    for chunk in _chunks(sections):
        digest.update(chunk)
    manifest = dict(manifest, format_version=FORMAT_VERSION, sections=layout,
                    payload={"length": length, "sha256": digest.hexdigest()})
    text = json.dumps(manifest, sort_keys=True, indent=1).encode()
    return manifest, _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text), hashlib.sha256(text).digest()) + text


def write(path: str | os.PathLike, manifest: dict, sections: dict) -> dict:
    """Write an artifact atomically (temporary file, fsync, rename) and return its completed
    manifest. ``sections``: name -> bytes or ``Parts``. The payload is read twice, to hash it
    (its sha256 goes in the manifest, before it) and to write it, and never joined: saving
    needs about the weights once (arrays are read in place, see ``Parts``)."""
    manifest, head = _complete(manifest, sections)
    with atomic_open(path, "wb") as f:
        f.write(head)
        for chunk in _chunks(sections):
            f.write(chunk)
    return manifest


def read(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """(manifest, section name -> bytes) of an artifact file, every check passed.

    The sections are copies; ``mapped`` reads them in place without copying.
    """
    with mapped(path) as art:
        return art.manifest, {name: bytes(view) for name, view in art.sections.items()}


class mapped:
    """An artifact file mapped read-only into memory and verified, as a context manager.

    ``manifest`` is the manifest, ``sections`` maps section names to memoryviews of the
    mapping (valid until ``close``). Hashes are computed chunk by chunk and the pages read
    are dropped from the process again (``release``), so verifying a large file does not
    make it resident. ``close`` unmaps the file unless something still references the
    mapping (it is then unmapped when the last reference goes). The file must not be
    truncated while mapped; nnxc itself only replaces artifacts by rename.
    """

    def __init__(self, path: str | os.PathLike, verify_payload: bool = True):
        self.path = path = os.fspath(path)
        self._mm = _map_regular_file(path)
        self._view = memoryview(self._mm if self._mm is not None else b"")
        self.sections: dict[str, memoryview] = {}
        try:
            self.manifest, self._layout = _verify(path, self._view, self._drop, verify_payload)
        except BaseException:
            self.close()
            raise
        self.sections = {name: self._view[start:start + length]
                         for name, (start, length) in self._layout.items()}

    def verify_payload(self) -> None:
        """The payload sha256 check ``verify_payload=False`` left out (ArtifactError on a mismatch)."""
        _check_payload_hash(self.path, self.manifest, self._view, self._drop)

    def release(self, name: str, start: int, end: int) -> None:
        """Drop the pages of bytes ``start:end`` of section ``name`` from this process (they
        stay in the page cache and are read again if touched)."""
        base, length = self._layout[name]
        self._drop(base + max(0, start), base + min(end, length))

    def _drop(self, start: int, end: int) -> None:
        if self._mm is None or _DONTNEED is None or end <= start:
            return
        start -= start % mmap.PAGESIZE
        try:
            self._mm.madvise(_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass  # only a memory optimisation

    def close(self) -> None:
        # release the views too: a caller's frame kept by a reference cycle may hold them
        for view in [*self.sections.values(), self._view]:
            try:
                view is not None and view.release()
            except BufferError:  # an array made from it still exists
                pass
        self.sections, self._view = {}, None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # arrays still view the mapping: it lives as long as they do
                pass
            self._mm = None

    def __enter__(self) -> "mapped":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _map_regular_file(path: str) -> mmap.mmap | None:
    """A read-only map of the regular file ``path`` (None when it is empty). The file is
    opened without blocking and checked on the open descriptor: a FIFO, a device or a
    folder is refused, never waited on or read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read artifact {path}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"cannot read artifact {path}: not a regular file")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if st.st_size else None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read artifact {path}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    finally:
        os.close(fd)


_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None
_CHUNK = 1 << 24  # bytes hashed at a time


def _sha256(data: memoryview, start: int, end: int, drop: Callable[[int, int], None]):
    """sha256 of ``data[start:end]``, read in chunks whose pages are dropped once hashed."""
    h = hashlib.sha256()
    for a in range(start, end, _CHUNK):
        b = min(a + _CHUNK, end)
        h.update(data[a:b])
        drop(a, b)
    return h


def _no_drop(start: int, end: int) -> None:
    pass


def _verify(path: str, data: memoryview, drop: Callable[[int, int], None] = _no_drop,
            verify_payload: bool = True) -> tuple[dict, dict[str, tuple[int, int]]]:
    """(manifest, section name -> (file offset, length)) of the artifact bytes ``data``."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{path} is not an nnxc artifact (bad magic bytes "
                            f"{bytes(data[:len(MAGIC)])!r}, expected {MAGIC!r})")
    if len(data) < HEADER_SIZE:
        raise ArtifactError(f"{path}: truncated artifact ({len(data)} bytes, shorter than the "
                            f"{HEADER_SIZE}-byte header)")
    version = _HEADER.unpack_from(data)[1]
    reader = READERS.get(version)
    if reader is None:
        newest = max(READERS)
        hint = "upgrade nnxc to read it" if version > newest else "it is not a known version"
        raise ArtifactError(f"{path}: artifact format version {version} is not supported by "
                            f"this nnxc (reads versions {', '.join(map(str, sorted(READERS)))}); "
                            f"{hint}")
    return reader(path, data, drop, verify_payload)


def _read_v1(path: str, data: memoryview, drop: Callable[[int, int], None] = _no_drop,
             verify_payload: bool = True) -> tuple[dict, dict[str, tuple[int, int]]]:
    _, version, flags, mlen, mhash = _HEADER.unpack_from(data)
    if flags != 0:
        raise ArtifactError(f"{path}: corrupted artifact (unknown header flags {flags:#x})")
    if HEADER_SIZE + mlen > len(data):
        raise ArtifactError(f"{path}: truncated artifact (file has {len(data)} bytes, the "
                            f"manifest alone needs {HEADER_SIZE + mlen})")
    text = data[HEADER_SIZE:HEADER_SIZE + mlen]
    if hashlib.sha256(text).digest() != mhash:
        raise ArtifactError(f"{path}: corrupted artifact (manifest sha256 mismatch)")
    try:
        manifest = json.loads(bytes(text))
    except ValueError as e:
        raise ArtifactError(f"{path}: corrupted artifact (manifest is not JSON: {e})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: malformed manifest (JSON nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: malformed manifest (a JSON {type(manifest).__name__}, "
                            "expected an object)")
    if manifest.get("format_version") != version:
        raise ArtifactError(f"{path}: corrupted artifact (header says format version {version}, "
                            f"manifest says {manifest.get('format_version')!r})")
    base = HEADER_SIZE + mlen
    have = len(data) - base
    want, digest = _payload_entry(path, manifest)
    layout = _sections_entry(path, manifest)
    if have < want:
        raise ArtifactError(f"{path}: truncated artifact (file has {len(data)} bytes, expected "
                            f"{base + want})")
    if have > want:
        raise ArtifactError(f"{path}: corrupted artifact ({have - want} unexpected "
                            "trailing bytes)")
    if verify_payload:
        _check_payload_hash(path, manifest, data, drop)
    sections = {}
    for name, (start, length) in layout.items():
        if start < 0 or length < 0 or start + length > want:
            raise ArtifactError(f"{path}: corrupted artifact (section {name!r} out of bounds)")
        sections[name] = (base + start, length)
    return manifest, sections


def _check_payload_hash(path: str, manifest: dict, data: memoryview,
                        drop: Callable[[int, int], None] = _no_drop) -> None:
    base = len(data) - manifest["payload"]["length"]  # the length was checked by the reader
    if _sha256(data, base, len(data), drop).hexdigest() != manifest["payload"]["sha256"]:
        raise ArtifactError(f"{path}: corrupted artifact (payload sha256 mismatch: the content "
                            "changed after it was written)")


def _is_size(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _payload_entry(path: str, manifest: dict) -> tuple[int, str]:
    """(length, sha256 hex) of the manifest's ``payload`` entry."""
    p = manifest.get("payload")
    if not (isinstance(p, dict) and _is_size(p.get("length")) and isinstance(p.get("sha256"), str)):
        raise ArtifactError(f"{path}: malformed manifest (payload: expected "
                            f"{{\"length\": bytes, \"sha256\": hex}}, got {str(p)[:80]})")
    return p["length"], p["sha256"]


def _sections_entry(path: str, manifest: dict) -> dict[str, tuple[int, int]]:
    """name -> (offset, length) of the manifest's ``sections`` entry."""
    secs = manifest.get("sections")
    if not isinstance(secs, dict):
        raise ArtifactError(f"{path}: malformed manifest (sections: expected an object, got "
                            f"{str(secs)[:80]})")
    layout = {}
    for name, v in secs.items():
        if not (isinstance(v, dict) and _is_size(v.get("offset")) and _is_size(v.get("length"))):
            raise ArtifactError(f"{path}: malformed manifest (sections[{name!r}]: expected "
                                f"{{\"offset\": bytes, \"length\": bytes}}, got {str(v)[:80]})")
        layout[name] = (v["offset"], v["length"])
    return layout


# version -> reader(path, file bytes, drop(start, end), verify_payload) -> (manifest, name ->
# (offset, length)); ``drop`` may be called on byte ranges the reader is done with
READERS: dict[int, Callable[..., tuple[dict, dict[str, tuple[int, int]]]]] = {1: _read_v1}
