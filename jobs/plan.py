"""Plan loose-image input as shard lists of sealed source URIs, read in place by the actors.

Loose images (a folder, a glob, an ``s3://`` prefix, and the image members of any raw ``.tar``
found there) are never copied: the plan lists them, and each actor reads every source where it
is. Nothing under OUT holds an original's bytes, its name or its path in clear. Layout:

``OUT/plan/plan.json``, the index::

    {"version": 1, "shard_size": N, "total_samples": N, "secret_fingerprint": "...",
     "shards": [{"shard": "shard-000000.tar", "samples": N, "sha256": "...", "bytes": N}, ...]}

where ``shard`` is the output name (``data/shard-000000.tar``) and ``sha256``/``bytes`` are those of
the shard's plan file, ``OUT/plan/shard-000000.json``::

    {"version": 1, "shard": "shard-000000.tar", "samples": [{"key": K, "src": B64, "check": B64}]}

with the samples in input order. ``key`` is the sample id, ``src`` the sealed source URI (the
bytes of a tar's ``KEY.src`` member), and ``check`` seals, under another key derived from the job
secret (all three: :mod:`manifests.jobsecret`), the JSON
``{"protocol", "path", "start", "end", "ext", "size", "sha256"}`` of the source as planned
(``start``/``end``: the byte range of a member of an input tar, else null), or ``{"error": REASON}``
when it could not be read while planning; with ``--boxes-column``, also the sample's known
``boxes`` (``jobs.parquetin.planned_boxes``). A row of an input Parquet file has ``"row": true``
and its row number as ``start``, ``sha256`` being that of its image bytes; such a plan file also
holds ``"parquet"``, the input columns it is read with (``jobs.parquetin.InputColumns``).
``check`` is AES-256-GCM with the sample id as AAD and a synthetic nonce (an HMAC of the
plaintext), so the same input and secret give the same plan and a nonce only repeats with its
plaintext. Plan files are written first, the index last: a plan
without an index is redone; ``--resume`` reuses a plan made with the same secret.

Reading a planned shard yields ``RawSample``s shaped like a tar's (``src`` plus the image member,
or ``src`` plus ``err``): a source that vanished, changed (size or sha256) or cannot be read is
quarantined by the worker at stage ``read`` with a reason that names no path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec

from faceveil.jobs import parquetin
from faceveil.jobs import shard as sharding
from faceveil.jobs.shard import ReadOptions, ShardEntry, Source
from faceveil.jobs.shardio import RawSample, ShardFormatError
from faceveil.jobs.storage import Location, RetryPolicy
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.jobsecret import (
    open_check,
    sample_id,
    seal_check,
    seal_uri,
    secret_fingerprint,
)

log = logging.getLogger(__name__)

PLAN_DIR = "plan"
INDEX = "plan.json"
VERSION = 1
VANISHED = "source vanished since planning"
CHANGED = "source changed since planning"


@dataclass(frozen=True)
class PlanEntry(ShardEntry):
    """A planned shard: ``shard`` is its output name, ``file`` the plan file listing it."""

    @property
    def file(self) -> str:
        return plan_name(self.shard)


def plan_name(shard: str) -> str:
    """The plan file of output shard ``shard``: ``shard-000000.tar`` -> ``shard-000000.json``."""
    return shard.removesuffix(".tar") + ".json"


def is_plan_file(uri: str) -> bool:
    """Whether a shard task's ``uri`` is a plan file (sources read in place), not a tar."""
    return uri.endswith(".json")


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def _describe(loc: Location, source: Source, columns: parquetin.InputColumns) -> dict:
    """What the plan checks at processing time: where the source is, its size and sha256; and
    the known boxes of a WebDataset sample, from a field of its ``.json``."""
    data, error = sharding._read_source(loc, source)
    if data is None:
        return {"error": error}
    check = {"protocol": _protocol(source.uri), "path": source.path, "start": source.start,
             "end": source.end, "ext": source.ext, "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    if columns.boxes_column:
        check["boxes"] = _json_boxes(loc, source, columns)
    return check


def _json_boxes(loc: Location, source: Source, columns: parquetin.InputColumns) -> dict:
    """The known boxes in field ``columns.boxes_column`` of the sample's ``.json`` (none when
    it has no ``.json`` or no such field), or why they cannot be used."""
    if source.meta is None:
        return parquetin.planned_boxes(None, columns.boxes_normalized)
    try:
        doc = json.loads(loc.fs.cat_file(source.path, start=source.meta[0], end=source.meta[1]))
    except ValueError:
        return {"error": "known boxes: the sample's .json is not JSON"}
    value = doc.get(columns.boxes_column) if isinstance(doc, dict) else None
    return parquetin.planned_boxes(value, columns.boxes_normalized)


def _plan_doc(loc: Location, name: str, sources: list[Source], secret: bytes, reading):
    rows = bool(sources) and sources[0].ext == parquetin.ROW_EXT
    if rows:
        columns = reading.columns
        checks = parquetin.describe_rows(loc.fs, _protocol(sources[0].uri), sources, columns)
    else:
        with ThreadPoolExecutor(max_workers=reading.threads) as pool:
            checks = list(pool.map(lambda s: _describe(loc, s, reading.columns), sources))
    samples = []
    for source, check in zip(sources, checks, strict=True):
        key = sample_id(secret, source.uri)
        samples.append({"key": key, "src": _b64(seal_uri(secret, key, source.uri)),
                        "check": _b64(seal_check(secret, key, check))})  # fmt: skip
    exts = sorted({c["ext"] for c in checks if "ext" in c})
    doc = {"version": VERSION, "shard": name, "samples": samples, "exts": exts}
    if rows:
        doc["parquet"] = reading.columns.to_json()
    return doc


def write_plan(
    input_uri: str,
    out: Location,
    secret: bytes,
    shard_size: int = 1000,
    reading: ReadOptions | None = None,
) -> list[PlanEntry]:
    """Plan ``input_uri`` into ``out`` (the plan folder): one plan file per shard, index last.

    Every source is read once here for its size and sha256; nothing of it is written. A source
    over ``reading.max_member_bytes`` is not read: the plan records its refusal.
    """
    reading = reading or ReadOptions()
    exts: set[str] = set()

    def build(src: Location, name: str, chunk: list[Source]) -> bytes:
        doc = _plan_doc(src, name, chunk, secret, reading)
        exts.update(doc.pop("exts"))
        return canonical_json(doc)

    layout = sharding.IndexedLayout(
        PlanEntry, INDEX, VERSION, shard_size, secret_fingerprint(secret), lambda: exts
    )
    return sharding.publish_in_shards(input_uri, out, layout, reading, build)


def read_plan(loc: Location) -> list[PlanEntry]:
    """The shards of a plan, from its index."""
    doc = loc.read_json(INDEX)
    if doc.get("version") != VERSION:
        raise ValueError(f"{loc.url(INDEX)}: unsupported plan version {doc.get('version')}")
    return [PlanEntry(**e) for e in doc["shards"]]


def reusable_plan(loc: Location, secret: bytes) -> list[PlanEntry] | None:
    """The plan in ``loc`` when it is complete and was made with ``secret``, else None."""
    if not loc.exists(INDEX):
        return None
    if loc.read_json(INDEX).get("secret_fingerprint") != secret_fingerprint(secret):
        return None
    return read_plan(loc)


def _read_planned(check: dict, retry: RetryPolicy) -> tuple[bytes | None, str]:
    """The source's bytes if they are still those planned, else (None, reason without path)."""
    fs = fsspec.filesystem(check["protocol"])

    def read() -> bytes:
        if check["start"] is None:
            # A file that grew since planning is not read at all (it may be of any size now).
            if fs.size(check["path"]) != check["size"]:
                return b""
            return fs.cat_file(check["path"])
        return fs.cat_file(check["path"], start=check["start"], end=check["end"])

    try:
        data = retry.call(read, "read of a source image")
    except FileNotFoundError:
        return None, VANISHED
    except OSError as exc:
        return None, f"unreadable source ({type(exc).__name__})"
    if len(data) != check["size"] or hashlib.sha256(data).hexdigest() != check["sha256"]:
        return None, CHANGED
    return data, ""


def _load(secret: bytes, sample: dict, retry: RetryPolicy) -> RawSample:
    key, src = sample["key"], base64.b64decode(sample["src"])
    check = open_check(secret, key, base64.b64decode(sample["check"]))
    return _loaded(key, src, check, retry)


def _loaded(key: str, src: bytes, check: dict, retry: RetryPolicy) -> RawSample:
    if "error" in check:
        return RawSample(key, {"src": src, "err": check["error"].encode()})
    data, reason = _read_planned(check, retry)
    if data is None:
        return RawSample(key, {"src": src, "err": reason.encode()})
    members = {"src": src, check["ext"]: data}
    if (boxes := parquetin.boxes_member(check)) is not None:
        members["boxes"] = boxes
    return RawSample(key, members)


def iter_planned(
    plan_bytes: bytes,
    expected_sha256: str | None,
    secret: bytes,
    threads: int = 8,
) -> Iterator[RawSample]:
    """The samples of one plan file in order, each source read in place (``threads`` reads
    ahead) and checked against the plan; raises ShardFormatError if the file is not the one
    the index names."""
    if expected_sha256 and hashlib.sha256(plan_bytes).hexdigest() != expected_sha256:
        raise ShardFormatError("sha256 differs from the plan index (altered plan file)")
    try:
        doc = json.loads(plan_bytes)
    except ValueError:
        raise ShardFormatError("unreadable plan file") from None
    if doc.get("version") != VERSION:
        raise ShardFormatError(f"unsupported plan file version {doc.get('version')}")
    if "parquet" in doc:
        yield from _iter_rows(doc, secret)
        return
    samples = iter(doc["samples"])
    retry = RetryPolicy()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ahead: deque = deque()
        for sample in samples:
            ahead.append(pool.submit(_load, secret, sample, retry))
            if len(ahead) > threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _iter_rows(doc: dict, secret: bytes) -> Iterator[RawSample]:
    """The samples of a plan file of Parquet rows, one read per input file they come from."""
    columns = parquetin.InputColumns.from_json(doc["parquet"])
    planned = []
    for sample in doc["samples"]:
        key = sample["key"]
        check = open_check(secret, key, base64.b64decode(sample["check"]))
        planned.append((key, base64.b64decode(sample["src"]), check))
    i = 0
    while i < len(planned):
        key, src, check = planned[i]
        if "row" not in check:
            yield _loaded(key, src, check, RetryPolicy())
            i += 1
            continue
        group = [planned[i]]
        while (
            i + len(group) < len(planned)
            and planned[i + len(group)][2].get("path") == check["path"]
        ):
            group.append(planned[i + len(group)])
        yield from _read_group(group, columns)
        i += len(group)


def _read_group(group: list[tuple[str, bytes, dict]], columns) -> Iterator[RawSample]:
    """Planned rows of one Parquet file as samples (the image, known boxes, carried columns)."""
    try:
        reads = parquetin.read_planned_rows([c for _, _, c in group], columns, CHANGED)
    except FileNotFoundError:
        reads = [parquetin.RowRead(None, VANISHED, None)] * len(group)
    except (OSError, ValueError, IndexError) as exc:
        reads = [parquetin.RowRead(None, f"unreadable source ({type(exc).__name__})", None)] * len(
            group
        )
    for (key, src, check), read in zip(group, reads, strict=True):
        if read.data is None:
            yield RawSample(key, {"src": src, "err": read.reason.encode()}, columns=read.columns)
            continue
        members = {"src": src, check["ext"]: read.data}
        if (boxes := parquetin.boxes_member(check)) is not None:
            members["boxes"] = boxes
        yield RawSample(key, members, columns=read.columns)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()
