"""``faceveil shard``: list sources in a stable order, key them pseudonymously, write tar shards.

The tars hold the originals: they are made only on request. ``faceveil run`` uses the listing
and keys here but reads loose images in place from a plan (``jobs.plan``), writing no copy."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from faceveil.jobs import parquetin
from faceveil.jobs.parquetin import InputColumns
from faceveil.jobs.shardio import (
    DEFAULT_MAX_MEMBER_BYTES,
    IMAGE_EXTS,
    TarWriter,
    member_refusal,
    open_tar,
    split_member,
)
from faceveil.jobs.storage import Location, RetryPolicy
from faceveil.manifests.jobsecret import sample_id, seal_uri, secret_fingerprint

log = logging.getLogger(__name__)

INDEX = "shards.json"
MAX_META_BYTES = 2**20  # the largest WebDataset .json member read for known boxes
# Input image extensions whose images are lossless: a job whose every input is one of them
# writes PNG unless told otherwise (``--output-image-format``).
LOSSLESS_EXTS = frozenset({"png", "bmp", "tif", "gif"})


@dataclass(frozen=True)
class Source:
    """One input image: its URI, where its bytes are, and its normalised extension.

    Images inside input tars have a URI ``TAR#MEMBER`` and a byte range in that tar; ``error``
    says why a tar member is refused unread (sparse, not a regular file, too large). ``meta``
    is the byte range of the sample's ``.json`` member in a WebDataset tar, if it has one.
    """

    uri: str
    path: str
    ext: str
    start: int | None = None
    end: int | None = None
    error: str = ""
    meta: tuple[int, int] | None = None


@dataclass(frozen=True)
class ShardEntry:
    shard: str
    samples: int
    sha256: str
    bytes: int

    @property
    def file(self) -> str:
        """The file that holds this shard's input, in its folder: the tar itself."""
        return self.shard


@dataclass(frozen=True)
class ReadOptions:
    """How sources are read when sharding or planning: ``threads`` at a time, and none over
    ``max_member_bytes`` (a file, or a member of an input tar; it is listed with its refusal and
    its sample is quarantined by the job). ``columns`` names the image and known-boxes columns
    of Parquet input (``jobs.parquetin``)."""

    threads: int = 8
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    columns: InputColumns = InputColumns()


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _ext(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    return IMAGE_EXTS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None


class TruncatedInputError(ValueError):
    """An input tar that does not end with tar's end-of-archive marker (two zero blocks)."""


def _tar_sources(
    loc: Location, path: str, uri: str, number: int, max_member_bytes: int
) -> list[Source]:
    """Image members of an input tar, with byte ranges, found by reading its headers.

    A tar cut at a header boundary reads without error, so its end is checked explicitly; the
    error names the tar by its place in the sorted listing, not by its path. A member that is
    sparse, not a regular file or over ``max_member_bytes`` is listed with its refusal.
    """
    found = []
    seen: dict[str, int] = {}
    metas: dict[str, tuple[int, int]] = {}
    with loc.fs.open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - 1024))
        if size < 1024 or f.read(1024).strip(b"\0"):
            raise TruncatedInputError(f"input tar number {number} of the sorted listing is "
                                      "truncated (no end-of-archive marker)")  # fmt: skip
        f.seek(0)
        with open_tar(f, "r:") as tar:
            for info in tar:
                ext = None if info.isdir() else _ext(info.name)
                stem, member_ext = split_member(info.name)
                if member_ext == "json" and info.isreg() and info.size <= MAX_META_BYTES:
                    metas[stem] = (info.offset_data, info.offset_data + info.size)
                if ext:
                    start, end = info.offset_data, info.offset_data + info.size
                    refused = member_refusal(info, max_member_bytes)
                    # A tar may hold one name twice: each copy gets its own URI, hence its key.
                    seen[info.name] = seen.get(info.name, 0) + 1
                    copy = f"~{seen[info.name]}" if seen[info.name] > 1 else ""
                    name = f"{uri}#{info.name}{copy}"
                    found.append(Source(name, path, ext, start, end, refused))
    return [replace(s, meta=metas.get(split_member(s.uri[len(uri) + 1 :])[0])) for s in found]


def _parquet_sources(loc: Location, found: dict, protocol: str, columns: InputColumns):
    """One source per row of every Parquet file in ``found``; all must have the same columns."""
    sources: list[Source] = []
    schemas = set()
    for path in sorted(p for p in found if parquetin.is_parquet(p)):
        rows, schema = parquetin.file_rows(loc.fs, path, columns)
        schemas.add(schema.remove_metadata().to_string())
        uri = protocol + path if protocol else path
        sources += [Source(parquetin.row_uri(uri, r), path, parquetin.ROW_EXT, r, r + 1)
                    for r in range(rows)]  # fmt: skip
    if len(schemas) > 1:
        raise ValueError("the input's Parquet files do not all have the same columns and types")
    return sources


def list_sources(
    input_uri: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    columns: InputColumns | None = None,
) -> list[Source]:
    """Every image under a folder, glob or prefix (and inside any .tar there), sorted by URI;
    or, when the input holds Parquet files, every row of them (``jobs.parquetin``).

    An image file or tar member over ``max_member_bytes`` is listed with its refusal (never read).
    """
    loc = Location(input_uri if not _is_glob(input_uri) else input_uri.split("*", 1)[0])
    if not _is_glob(input_uri) and not loc.fs.exists(loc.root):
        raise FileNotFoundError(f"input {input_uri} does not exist")
    protocol = input_uri.split("://", 1)[0] + "://" if "://" in input_uri else ""
    if _is_glob(input_uri):
        found = loc.fs.glob(loc.fs._strip_protocol(input_uri), detail=True)
    elif loc.fs.isfile(loc.root):
        found = {loc.root: loc.fs.info(loc.root)}
    else:
        found = loc.fs.find(loc.root, detail=True)
    if any(parquetin.is_parquet(p) for p in found):
        if any(_ext(p) or p.lower().endswith(".tar") for p in found):
            raise ValueError(f"{input_uri} holds both Parquet files and images; give one kind")
        return _parquet_sources(loc, found, protocol, columns or InputColumns())
    sources: list[Source] = []
    skipped = 0
    tars = 0
    for path in sorted(found):
        uri = protocol + path if protocol else path
        if path.lower().endswith(".tar"):
            tars += 1
            sources.extend(_tar_sources(loc, path, uri, tars, max_member_bytes))
        elif ext := _ext(path):
            size = found[path].get("size") or 0
            too_large = size > max_member_bytes
            error = f"file of {size} bytes exceeds the cap of {max_member_bytes} bytes"
            sources.append(Source(uri, path, ext, error=error if too_large else ""))
        else:
            skipped += 1
    if skipped:
        log.info("skipped %d files that are not images by extension", skipped)
    return sorted(sources, key=lambda s: s.uri)


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def _read_source(loc: Location, source: Source) -> tuple[bytes | None, str]:
    """The source's bytes, retrying transient store errors; (None, reason) if unreadable.

    Neither the retry log nor the reason names the object: source paths are people's names.
    """

    if source.error:
        return None, source.error

    def read() -> bytes:
        if source.start is None:
            return loc.fs.cat_file(source.path)
        return loc.fs.cat_file(source.path, start=source.start, end=source.end)

    try:
        return RetryPolicy().call(read, "read of a source image"), ""
    except OSError as exc:
        return None, f"unreadable source ({type(exc).__name__})"


def build_shard(loc: Location, sources: Iterable[Source], secret: bytes, threads: int = 8) -> bytes:
    """The tar bytes of one shard: per sample ``KEY.src`` (sealed URI), then ``KEY.EXT`` (original
    bytes, unchanged) or ``KEY.err`` (why the source could not be read)."""
    sources = list(sources)
    if any(s.ext == parquetin.ROW_EXT for s in sources):
        raise ValueError("faceveil shard takes images; give Parquet input to faceveil run")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        contents = list(pool.map(lambda s: _read_source(loc, s), sources))
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for source, (data, error) in zip(sources, contents, strict=True):
        key = sample_id(secret, source.uri)
        writer.add(f"{key}.src", seal_uri(secret, key, source.uri))
        if data is None:
            writer.add(f"{key}.err", error.encode())
        else:
            writer.add(f"{key}.{source.ext}", data)
    writer.close()
    return buf.getvalue()


def write_shards(
    input_uri: str,
    out_uri: str,
    secret: bytes,
    shard_size: int = 1000,
    reading: ReadOptions | None = None,
) -> list[ShardEntry]:
    """Shard ``input_uri`` into ``out_uri``/shard-NNNNNN.tar plus the ``shards.json`` index.

    A source over ``reading.max_member_bytes`` (a file, or a member of an input tar) is not read:
    its sample carries the reason and is quarantined by the job."""
    reading = reading or ReadOptions()

    def build(src: Location, name: str, chunk: list[Source]) -> bytes:
        return build_shard(src, chunk, secret, reading.threads)

    layout = IndexedLayout(ShardEntry, INDEX, 1, shard_size, secret_fingerprint(secret))
    return publish_in_shards(input_uri, Location(out_uri), layout, reading, build)


@dataclass(frozen=True)
class IndexedLayout:
    """How a sharded listing is published: the entry type (whose ``file`` names each shard's
    file), the index file's name and version, the sources per shard, and the fingerprint of the
    job secret that keyed them. ``exts``, when given, returns the image extensions of the
    sources as read by the builds (Parquet rows only know theirs once read); by default they
    are the sources' own."""

    entry: type[ShardEntry]
    index: str
    version: int
    shard_size: int
    fingerprint: str
    exts: Callable[[], set[str]] | None = None


def publish_in_shards(
    input_uri: str,
    out: Location,
    layout: IndexedLayout,
    reading: ReadOptions,
    build: Callable[[Location, str, list[Source]], bytes],
) -> list[ShardEntry]:
    """List ``input_uri``'s sources (sorted), cut them into shards of ``shard_size``, publish
    ``build(source folder, shard name, sources)`` for each under its entry's ``file``, then the
    index, last: the one listing that both ``faceveil shard`` and the job's plan write."""
    shard_size = layout.shard_size
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    sources = list_sources(input_uri, reading.max_member_bytes, reading.columns)
    if not sources:
        raise FileNotFoundError(f"no images found under {input_uri}")
    src_loc = Location(input_uri if not _is_glob(input_uri) else input_uri.split("*", 1)[0])
    entries = []
    for index, start in enumerate(range(0, len(sources), shard_size)):
        chunk = sources[start : start + shard_size]
        name = shard_name(index)
        data = build(src_loc, name, chunk)
        entry = layout.entry(name, len(chunk), hashlib.sha256(data).hexdigest(), len(data))
        out.publish_bytes(data, entry.file)
        entries.append(entry)
        log.info("published %s (%d samples)", entry.file, len(chunk))
    exts = layout.exts() if layout.exts else {s.ext for s in sources if not s.error}
    index_doc = {
        "version": layout.version,
        "shard_size": shard_size,
        "total_samples": len(sources),
        "secret_fingerprint": layout.fingerprint,
        "lossless": bool(exts) and exts <= LOSSLESS_EXTS,
        "shards": [e.__dict__ for e in entries],
    }
    out.publish_json(index_doc, layout.index)
    return entries


def read_index(loc: Location) -> list[ShardEntry]:
    """The shard list of a sharded input, from its ``shards.json``."""
    doc = loc.read_json(INDEX)
    if doc.get("version") != 1:
        raise ValueError(f"{loc.url(INDEX)}: unsupported index version {doc.get('version')}")
    return [ShardEntry(**e) for e in doc["shards"]]
