"""Deterministic WebDataset tar writing and streaming, order-preserving tar reading."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO


class ShardFormatError(ValueError):
    """A shard whose bytes do not match its index (truncated, altered) or that cannot be read."""


@dataclass
class RawSample:
    """One sample of a shard: its key and its members by extension, in file order."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)


class TarWriter:
    """Writes members with fixed metadata (mtime 0, root owner, 0644) so bytes are reproducible."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT
        )

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class _HashingReader(io.RawIOBase):
    """Passes reads through while hashing and counting every byte."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.digest.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key is everything before the first dot of the base name."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, ext


def iter_samples(fileobj: BinaryIO) -> Iterator[RawSample]:
    """Samples in file order; a sample is the run of adjacent members sharing a key."""
    current: RawSample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member(info.name)
                data = tar.extractfile(info).read()
                if current is not None and (current.key != key or ext in current.members):
                    yield current  # a repeated member starts a new sample: duplicates stay visible
                    current = None
                if current is None:
                    current = RawSample(key)
                current.members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardFormatError(f"unreadable tar ({type(exc).__name__}: {exc})") from None
    if current is not None:
        yield current


def iter_verified(fileobj: BinaryIO, expected_sha256: str | None) -> Iterator[RawSample]:
    """Like ``iter_samples``, then checks the sha256 of every byte read against the index.

    Samples are yielded as they are read; the check runs after the last one, so the caller must
    not publish anything before the iterator finishes without raising.
    """
    reader = _HashingReader(fileobj)
    stream = io.BufferedReader(reader, 1 << 20)
    yield from iter_samples(stream)
    stream.read()
    reader.drain()
    if expected_sha256 and reader.digest.hexdigest() != expected_sha256:
        raise ShardFormatError("sha256 differs from the shard index (truncated or altered tar)")
