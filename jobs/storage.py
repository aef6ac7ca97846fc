"""Local and object-store folders through fsspec; publish by rename (local) or one PUT (stores)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)


class Location:
    """A folder on a filesystem (``./out``, ``/data/x``, ``s3://bucket/prefix``)."""

    def __init__(self, uri: str, **storage_options: object) -> None:
        self.fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        self.uri = uri.rstrip("/")
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.root else "/".join(parts)

    def url(self, *parts: str) -> str:
        """A full URI for ``parts`` (with the protocol), for messages and for other processes."""
        return "/".join([self.uri, *parts])

    def child(self, *parts: str) -> Location:
        loc = object.__new__(Location)
        loc.fs, loc.is_local = self.fs, self.is_local
        loc.uri, loc.root = self.url(*parts), self.path(*parts)
        return loc

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str) -> dict:
        return json.loads(self.read_bytes(*parts))

    def listdir(self, *parts: str) -> list[str]:
        """Base names in a folder, sorted; an absent folder is empty."""
        path = self.path(*parts)
        if not self.fs.exists(path):
            return []
        return sorted(Path(p.rstrip("/")).name for p in self.fs.ls(path, detail=False))

    def publish_bytes(self, data: bytes, *parts: str) -> None:
        """Make ``data`` appear at ``parts`` all at once: temp name + rename, or a single PUT."""
        target = self.path(*parts)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            _remove_quietly(tmp)
            raise

    def publish_file(self, local_path: str, *parts: str) -> None:
        """Publish a finished local file: copy beside the target then rename, or one PUT."""
        target = self.path(*parts)
        if not self.is_local:
            self.fs.put_file(local_path, target)
            return
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except BaseException:
            _remove_quietly(tmp)
            raise

    def publish_json(self, obj: object, *parts: str) -> None:
        self.publish_bytes(canonical_json(obj), *parts)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path)


def canonical_json(obj: object) -> bytes:
    """Sorted, compact, UTF-8 JSON: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
