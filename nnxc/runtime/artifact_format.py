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
The ``exported`` section is ``jax.export`` serialization, readable under jax's own
compatibility guarantees for serialized modules.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Callable

from .._files import atomic_write
from ..errors import NnxcError

MAGIC = b"\x89NNXC\r\n\x1a"
FORMAT_VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<8sIIQ32s")  # magic, version, flags, manifest length, manifest sha256
HEADER_SIZE = _HEADER.size  # 56


class ArtifactError(NnxcError):
    """An artifact file that cannot be read: not an artifact, unknown version, corrupted."""


def pack(manifest: dict, sections: dict[str, bytes]) -> tuple[bytes, dict]:
    """(file bytes, completed manifest) for ``manifest`` and the named ``sections``."""
    chunks, layout, offset = [], {}, 0
    for name, data in sections.items():
        pad = -offset % ALIGN
        chunks.append(b"\0" * pad)
        offset += pad
        layout[name] = {"offset": offset, "length": len(data)}
        chunks.append(bytes(data))
        offset += len(data)
    payload = b"".join(chunks)
    manifest = dict(manifest, format_version=FORMAT_VERSION, sections=layout,
                    payload={"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
    text = json.dumps(manifest, sort_keys=True, indent=1).encode()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text), hashlib.sha256(text).digest())
    return header + text + payload, manifest


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    atomic_write(path, data)


def read(path: str | os.PathLike) -> tuple[dict, dict[str, memoryview]]:
    """(manifest, section name -> bytes) of an artifact file, every check passed."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {path}: {e.strerror or e}") from None
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
    return reader(path, memoryview(data))


def _read_v1(path: str, data: memoryview) -> tuple[dict, dict[str, memoryview]]:
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
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: malformed manifest (a JSON {type(manifest).__name__}, "
                            "expected an object)")
    if manifest.get("format_version") != version:
        raise ArtifactError(f"{path}: corrupted artifact (header says format version {version}, "
                            f"manifest says {manifest.get('format_version')!r})")
    payload = data[HEADER_SIZE + mlen:]
    try:
        want, digest = int(manifest["payload"]["length"]), str(manifest["payload"]["sha256"])
        layout = {str(k): (int(v["offset"]), int(v["length"]))
                  for k, v in manifest["sections"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArtifactError(f"{path}: malformed manifest (no valid payload/sections entry: "
                            f"{type(e).__name__}: {e})") from None
    if len(payload) < want:
        raise ArtifactError(f"{path}: truncated artifact (file has {len(data)} bytes, expected "
                            f"{HEADER_SIZE + mlen + want})")
    if len(payload) > want:
        raise ArtifactError(f"{path}: corrupted artifact ({len(payload) - want} unexpected "
                            "trailing bytes)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ArtifactError(f"{path}: corrupted artifact (payload sha256 mismatch: the content "
                            "changed after it was written)")
    sections = {}
    for name, (start, length) in layout.items():
        if start < 0 or length < 0 or start + length > want:
            raise ArtifactError(f"{path}: corrupted artifact (section {name!r} out of bounds)")
        sections[name] = payload[start:start + length]
    return manifest, sections


READERS: dict[int, Callable[[str, memoryview], tuple[dict, dict[str, memoryview]]]] = {1: _read_v1}
