"""Atomic file writes: a temporary file in the same folder, then a rename.

Every file nnxc writes goes through here, so all of them

- get the permissions a plain ``open(path, "w")`` would give: ``0o666 & ~umask`` (the
  temporary file is created with mode 0o666 and the kernel applies the umask; the rename
  keeps that mode);
- appear whole or not at all: the data goes to ``.<name>.tmp-<pid>-<random>`` beside the
  target, is flushed and fsynced, then renamed over the target (and the folder fsynced);
- clean up after killed writers: temporaries of the same target whose process is gone are
  removed before a new one is made.
"""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager

FILE_MODE = 0o666  # before the umask, like open()


def file_mode() -> int:
    """The mode new files get: ``0o666 & ~umask``."""
    return FILE_MODE & ~current_umask()


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races
    with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + ".tmp-"


_TEMP_TAIL = re.compile(r"(\d+)-[0-9a-f]+")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would kill it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove ``.<name>.tmp-<pid>-*`` files beside ``path`` whose process is no longer
    running (left by a writer that was killed); returns the paths removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for name in entries:
        m = _TEMP_TAIL.fullmatch(name[len(prefix):])
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
        except OSError:
            pass
    return removed


def create_temp(path: str | os.PathLike, mode: str = "wb"):
    """``(file, temp_path)``: a new, exclusively created temporary file beside ``path``
    named ``.<name>.tmp-<pid>-<random>``, with the mode ``open()`` would give ``path``.
    Stale temporaries of ``path`` are removed first. The caller renames or unlinks it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f"{_temp_prefix(path)}{os.getpid()}-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, flags, FILE_MODE)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    try:
        f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return f, tmp


def finish(f) -> None:
    """Flush and fsync an open temporary file, then close it."""
    with f:
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(os.fspath(folder) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically."""
    path = os.fspath(path)
    f, tmp = create_temp(path, mode)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
        f.write(data)
