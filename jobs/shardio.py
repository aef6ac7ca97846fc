"""Deterministic WebDataset tar writing and streaming, order-preserving tar reading."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from faceveil.anon_core.imageio import DEFAULT_MAX_FILE_BYTES

# The largest tar member read into memory; a larger one is refused, never read.
DEFAULT_MAX_MEMBER_BYTES = DEFAULT_MAX_FILE_BYTES
# The largest pax or GNU long-name header tarfile may read before a member is seen.
MAX_HEADER_BYTES = 2**20
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)

# Image file extensions -> the one each is stored under; an image member has either.
IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp",
              "tif": "tif", "tiff": "tif", "gif": "gif"}  # fmt: skip
IMAGE_MEMBER_EXTS = frozenset(IMAGE_EXTS) | frozenset(IMAGE_EXTS.values())
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"))  # fmt: skip


def sniff_ext(data: bytes) -> str:
    """The image extension its magic bytes say (``jpg`` when unknown: the decoder decides)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "jpg")


class ShardFormatError(ValueError):
    """A shard whose bytes do not match its index (truncated, altered) or that cannot be read."""


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses a pax or GNU long-name header over MAX_HEADER_BYTES before tarfile reads it."""

    def _proc_member(self, tarfile_):
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise ShardFormatError(
                f"tar extension header of {self.size} bytes exceeds the cap of {MAX_HEADER_BYTES}"
            )
        return super()._proc_member(tarfile_)


def open_tar(fileobj: BinaryIO, mode: str = "r|") -> tarfile.TarFile:
    """A tar reader whose extension headers are capped (see :data:`MAX_HEADER_BYTES`)."""
    return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_CappedTarInfo)


def member_refusal(info: tarfile.TarInfo, max_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> str:
    """Why ``info`` must not be read (sparse, not a regular file, too large), or ``""``.

    Decided from the header alone, before any of the member's data is read or allocated.
    """
    if info.issparse():
        return "tar member is a GNU sparse file"
    if not info.isreg():
        return f"tar member of type {info.type!r} is not a regular file"
    if info.size > max_bytes:
        return f"tar member of {info.size} bytes exceeds the cap of {max_bytes} bytes"
    return ""


@dataclass
class RawSample:
    """One sample of a shard: its sample id (the tar's ``__key__``) and its members by extension,
    in file order.

    ``refused`` says why a member of the sample was not read (the sample is quarantined then).
    ``columns`` (Parquet input) is a one-row pyarrow Table of the columns the output carries.
    """

    sample_id: str
    members: dict[str, bytes] = field(default_factory=dict)
    refused: str = ""
    columns: object = None


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


def iter_samples(
    fileobj: BinaryIO, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[RawSample]:
    """Samples in file order; a sample is the run of adjacent members sharing a key.

    A member that is sparse, not a regular file, or larger than ``max_member_bytes`` is not
    read: its sample carries the reason in ``refused``. Directories are skipped.
    """
    current: RawSample | None = None
    try:
        with open_tar(fileobj) as tar:
            for info in tar:
                if info.isdir():
                    continue
                key, ext = split_member(info.name)
                refused = member_refusal(info, max_member_bytes)
                data = b"" if refused else tar.extractfile(info).read()
                if current is not None and (current.sample_id != key or ext in current.members):
                    yield current  # a repeated member starts a new sample: duplicates stay visible
                    current = None
                if current is None:
                    current = RawSample(key)
                current.members[ext] = data
                current.refused = current.refused or refused
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardFormatError(f"unreadable tar ({type(exc).__name__}: {exc})") from None
    if current is not None:
        yield current


def iter_verified(
    fileobj: BinaryIO,
    expected_sha256: str | None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[RawSample]:
    """Like ``iter_samples``, then checks the sha256 of every byte read against the index.

    Samples are yielded as they are read; the check runs after the last one, so the caller must
    not publish anything before the iterator finishes without raising.
    """
    reader = _HashingReader(fileobj)
    stream = io.BufferedReader(reader, 1 << 20)
    yield from iter_samples(stream, max_member_bytes)
    stream.read()
    reader.drain()
    if expected_sha256 and reader.digest.hexdigest() != expected_sha256:
        raise ShardFormatError("sha256 differs from the shard index (truncated or altered tar)")
