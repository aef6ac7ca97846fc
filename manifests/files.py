"""The one way a local file is written: private, whole, and published at once.

A temp file made by ``mkstemp`` beside the target (mode 0600 from its creation, so a private file
never exists with a wider mode, not even while it is rewritten), written, fsynced, then renamed
over the target, or hard-linked to it when the target must not be overwritten. A reader sees the
old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], object], overwrite: bool = True
) -> None:
    """Write ``path`` through ``write(file)``; FileExistsError if it exists (unless overwrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_private_file(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600 (refuses to clobber unless ``overwrite``)."""
    atomic_write(path, lambda f: f.write(data), overwrite)
