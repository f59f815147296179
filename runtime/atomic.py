"""Atomic output: a reader (or a run killed mid-way) sees the old file or the new one, never a part.

Every file the project writes (models, encodings, targets, reports, caches) goes through here.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the destination folder, fsync it, rename it into place
    (and fsync the folder, so that the rename itself survives a power cut where the file system
    allows it).

    The temporary file is ``.<name>.<random>.tmp``: hidden, and never named like an output. A
    process killed while writing leaves the old file (or none) and at most that temporary; an
    exception removes the temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:  # nor fsyncs them
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
