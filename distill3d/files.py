"""Atomic file writes: a reader (or a crash) never sees half a file.

Every writer of the project goes through `atomic_target`: it hands out a temporary sibling path with the same
suffix (so libraries that choose a format from the suffix still work), and renames it over the destination
only when the writer finished without an exception.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success chmod it to `mode` and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp creates 0600; run outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to `path` atomically; returns the path."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
