"""Anonymize one shard: read samples in order, batch them through anon_core, publish outputs.

A shard is a WebDataset tar, or a plan file of loose sources (``jobs.plan``) that are read in
place, each checked against its planned size and sha256; no copy of them is written."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from faceveil.anon_core.imageio import crop_png
from faceveil.anon_core.known import BoxesError, WithBoxes, parse_boxes
from faceveil.anon_core.models import file_sha256
from faceveil.anon_core.pipeline import AnonResult, FaceAnonymizer, quarantined
from faceveil.anon_core.results import SampleStatus
from faceveil.jobs.datawriter import OutputSpec, data_writer
from faceveil.jobs.plan import is_plan_file, iter_planned
from faceveil.jobs.shardio import (
    DEFAULT_MAX_MEMBER_BYTES,
    IMAGE_MEMBER_EXTS,
    RawSample,
    ShardFormatError,
    iter_verified,
)
from faceveil.jobs.storage import Location
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.envelope import EMPTY_SHA256
from faceveil.manifests.jobsecret import open_uri
from faceveil.manifests.keymanifest import SampleToSeal

log = logging.getLogger(__name__)

# A second sample under a key already seen in the shard (a shard not written by faceveil shard):
# quarantined, and not sealed, so the key's escrow rows stay those of the first sample.
DUPLICATE_KEY = "duplicate key in shard"
QUARANTINE_SCHEMA = pa.schema(
    [("key", pa.string()), ("stage", pa.string()), ("reason", pa.string())]
)


@dataclass(frozen=True)
class ShardTask:
    """What a worker needs to process one shard: where it is (a tar, or a plan file) and what its
    index promises (sample count, sha256 of the tar or plan file)."""

    shard: str
    uri: str
    samples: int
    sha256: str


class ShardStatus(StrEnum):
    """How a shard ended: ``done`` (published, marker last) or ``failed`` (nothing published)."""

    DONE = "done"
    FAILED = "failed"


@dataclass
class ShardSummary:
    """Counts for one shard; ``samples_in == anonymized + no_face + quarantined`` when done."""

    shard: str
    samples_in: int = 0
    anonymized: int = 0
    no_face: int = 0
    quarantined: int = 0
    faces: int = 0
    status: ShardStatus = ShardStatus.DONE
    error: str = ""
    files: dict = field(default_factory=dict)
    manifest: str = ""  # the key manifest's row-list commitment (canonical JSON), with escrow
    images_reused: int = 0  # surrogate: images whose faces came from the first pass's records
    images_detected: int = 0  # surrogate with records: images the detector ran on

    @property
    def samples_out(self) -> int:
        return self.anonymized + self.no_face


class ShardSealer(Protocol):
    """Seals originals of one shard (the key-manifest seam); see ``manifests.keymanifest``."""

    escrow_id: str

    def seal_face(self, sample: SampleToSeal, face, bbox, png_bytes): ...
    def seal_sample(self, sample: SampleToSeal, original_bytes): ...
    def manifest_bytes(self) -> bytes: ...
    def commitment(self) -> dict: ...


class Observer(Protocol):
    """Sees original and anonymized pixels of each anonymized sample (the privacy sample seam)."""

    def observe(self, key, original_rgb, anonymized_rgb, faces) -> None: ...


Progress = Callable[[int, int, int], None]  # samples, faces, quarantined since the last call


@dataclass(frozen=True)
class ShardOptions:
    """How a worker processes its shards. ``secret`` opens the sealed source URIs (needed to seal
    them into the key manifest, and to read a planned shard's sources); a source or tar member
    over ``max_member_bytes`` is not read and its sample is quarantined. ``observer`` sees each
    anonymized sample (the in-job audit), ``progress`` gets counts as samples finish, and
    ``marker_extra`` is added to the shard's ``_done`` marker; ``output`` says how ``data/`` is
    written (WebDataset tars or Parquet)."""

    batch_size: int = 16
    secret: bytes | None = None
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    observer: Observer | None = None
    progress: Progress | None = None
    marker_extra: dict = field(default_factory=dict)
    output: OutputSpec = field(default_factory=OutputSpec)

    def __repr__(self) -> str:
        return f"ShardOptions(batch_size={self.batch_size}, <secret redacted>)"

    def for_marker(self, **extra) -> ShardOptions:
        """These options with ``extra`` as the marker's extra fields."""
        return replace(self, marker_extra=extra)


@dataclass
class _Pending:
    sample: RawSample
    source_uri: str
    image: bytes | WithBoxes | None
    result: AnonResult | None = None

    @property
    def original(self) -> bytes | None:
        """The input image's bytes (what a quarantined sample's escrow row seals)."""
        return self.image.image if isinstance(self.image, WithBoxes) else self.image


def known_boxes(member: bytes) -> tuple[WithBoxes | None, str]:
    """The known boxes of a sample (its ``boxes`` member: JSON ``{"boxes": [[x1, y1, x2, y2],
    ...], "normalized": bool}``, or ``{"error": REASON}``) on an empty image, or why they cannot
    be used."""
    try:
        doc = json.loads(member)
        if "error" in doc:
            return None, str(doc["error"])
        boxes = parse_boxes(doc["boxes"])
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc) if isinstance(exc, BoxesError) else "unreadable boxes"
        return None, f"known boxes: {reason}"
    return WithBoxes(b"", boxes, bool(doc.get("normalized"))), ""


def _source_uri(sample: RawSample, secret: bytes | None) -> str:
    """The sample's source URI from its sealed ``src`` member (its sample id when there is
    none)."""
    blob = sample.members.get("src")
    if blob is None or secret is None:
        return sample.sample_id
    return open_uri(secret, sample.sample_id, blob)


def classify_sample(sample: RawSample, seen: set[str], secret: bytes | None) -> _Pending:
    """The sample with its image bytes, or already quarantined (a duplicate sample id, a refused
    tar member, a read error, no image member); ``seen`` collects the sample ids met so far in
    the shard."""
    source = _source_uri(sample, secret)
    if sample.sample_id in seen:
        return _Pending(sample, source, None, quarantined("input", DUPLICATE_KEY))
    seen.add(sample.sample_id)
    if sample.refused:
        return _Pending(sample, source, None, quarantined("input", sample.refused))
    if "err" in sample.members:
        reason = sample.members["err"].decode(errors="replace")
        return _Pending(sample, source, None, quarantined("read", reason))
    image_exts = [e for e in sample.members if e.lower() in IMAGE_MEMBER_EXTS]
    if not image_exts:
        return _Pending(sample, source, None, quarantined("input", "sample has no image member"))
    image = sample.members[image_exts[0]]
    if "boxes" not in sample.members:
        return _Pending(sample, source, image)
    known, reason = known_boxes(sample.members["boxes"])
    if known is None:
        return _Pending(sample, source, image, quarantined("input", reason))
    return _Pending(sample, source, replace(known, image=image))


def _windows(samples: Iterator[RawSample], size: int, secret) -> Iterator[list[_Pending]]:
    """Consecutive windows of pending samples, each holding ``size`` images still to process."""
    seen: set[str] = set()
    window: list[_Pending] = []
    for sample in samples:
        window.append(classify_sample(sample, seen, secret))
        if sum(p.result is None for p in window) >= size:
            yield window
            window = []
    yield window


def _batches(samples: Iterator[RawSample], size: int, anonymizer: FaceAnonymizer, secret):
    """Pending samples in input order, each with its result.

    The anonymizer gets the windows as a stream (``FaceAnonymizer.map``), so an accelerated
    one can decode the next window and encode the last one on CPU threads while the device works.
    """
    queued: deque[list[_Pending]] = deque()

    def images():
        for window in _windows(samples, size, secret):
            queued.append(window)
            yield [p.image for p in window if p.result is None]

    for results in anonymizer.map(images()):
        window = queued.popleft()
        for p, result in zip([p for p in window if p.result is None], results, strict=True):
            p.result = result
        yield from window


class _ShardOutput:
    """Collects one shard's outputs: the data shard (a tar or Parquet file in a private temp
    folder), quarantine rows and sealed originals; ``publish`` writes them, marker last."""

    def __init__(self, shard: str, sealer: ShardSealer | None, options: ShardOptions):
        self.summary = ShardSummary(shard)
        self.sealer = sealer
        self.observer = options.observer
        self._tmpdir = tempfile.TemporaryDirectory(prefix="faceveil-")
        self._suffix = options.output.suffix
        self._data = data_writer(options.output, self._tmpdir.name)
        self._quarantine: list[dict] = []

    def add(self, p: _Pending) -> tuple[int, int]:
        """Record one sample; returns (faces, quarantined) for progress."""
        self.summary.samples_in += 1
        result = p.result
        self._data.observe(p.sample.columns)
        if not result.ok:
            return 0, self._add_quarantined(p)
        sample_id = p.sample.sample_id
        self._data.add(sample_id, result, p.sample.columns)
        self.summary.faces += len(result.faces)
        if result.status == SampleStatus.ANONYMIZED:
            self.summary.anonymized += 1
        else:
            self.summary.no_face += 1
        if self.sealer is not None:
            self._seal(p)
        if self.observer is not None and len(result.faces):
            self.observer.observe(sample_id, result.original.rgb, result.output.image, result.faces)
        return len(result.faces), 0

    def _add_quarantined(self, p: _Pending) -> int:
        result = p.result
        self.summary.quarantined += 1
        self._quarantine.append(
            {"key": p.sample.sample_id, "stage": result.stage, "reason": result.reason}
        )
        if self.sealer is not None and result.reason != DUPLICATE_KEY:
            self.sealer.seal_sample(
                SampleToSeal(p.sample.sample_id, p.source_uri, EMPTY_SHA256), p.original
            )
        return 1

    def _seal(self, p: _Pending) -> None:
        result = p.result
        sample = SampleToSeal(p.sample.sample_id, p.source_uri, result.sha256)
        for face, region in enumerate(result.output.regions):
            x1, y1, x2, y2 = (int(v) for v in region)
            if x2 > x1 and y2 > y1:
                png = crop_png(result.original.rgb, (x1, y1, x2, y2))
                self.sealer.seal_face(sample, face, (x1, y1, x2, y2), png)
        # Whole original bytes when the decoded pixels do not represent the file exactly, or when
        # a lossless input leaves as JPEG (--output-image-format): its other pixels changed too.
        kept = result.original.exact and not (result.original.lossless and result.ext == "jpg")
        original = None if kept else p.original
        self.sealer.seal_sample(sample, original)

    def publish(self, out: Location, extra: dict) -> ShardSummary:
        s = self.summary
        if s.samples_in != s.samples_out + s.quarantined:
            raise RuntimeError(f"{s.shard}: accounting does not add up; nothing published")
        self._data.finish()
        stem = s.shard.removesuffix(".tar")
        files = {"data": (self._data.path, f"data/{stem}{self._suffix}")}
        blobs = {"quarantine": (_quarantine_bytes(self._quarantine), f"quarantine/{stem}.parquet")}
        if self.sealer is not None:
            blobs["keys"] = (self.sealer.manifest_bytes(), f"keys/{stem}.parquet")
            # The row list's commitment: in the marker, and back to the driver in memory, which
            # signs it into the log (job.manifests).
            commitment = self.sealer.commitment()
            s.manifest = canonical_json(commitment).decode()
            extra = {**extra, "escrow_id": self.sealer.escrow_id, "manifest": commitment}
        for name, (path, target) in files.items():
            out.publish_file(path, target)
            s.files[name] = {"path": target, "sha256": file_sha256(path)}
        for name, (data, target) in blobs.items():
            out.publish_bytes(data, target)
            s.files[name] = {"path": target, "sha256": hashlib.sha256(data).hexdigest()}
        marker = {**extra, **_marker_counts(s), "files": s.files}
        out.publish_json(marker, f"_done/{stem}.json")
        return s

    def close(self) -> None:
        self._data.close()
        self._tmpdir.cleanup()


def _marker_counts(s: ShardSummary) -> dict:
    keys = ("shard", "samples_in", "anonymized", "no_face", "quarantined", "faces")
    return {k: getattr(s, k) for k in keys}


def _quarantine_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def process_shard(
    task: ShardTask,
    anonymizer: FaceAnonymizer,
    out: Location,
    sealer: ShardSealer | None = None,
    options: ShardOptions | None = None,
) -> ShardSummary:
    """Anonymize every sample of one shard, in input order, and publish its outputs (sealing the
    originals with ``sealer`` when the job has escrow).

    Raises ShardFormatError when the shard differs from its index (count or sha256): nothing of
    that shard is published then, so a rerun redoes it whole.
    """
    options = options or ShardOptions()
    output = _ShardOutput(task.shard, sealer, options)
    secret = options.secret
    try:
        with shard_samples(task, secret, options.max_member_bytes) as samples:
            for p in _batches(samples, options.batch_size, anonymizer, secret):
                faces, bad = output.add(p)
                if options.progress is not None:
                    options.progress(1, faces, bad)
        if output.summary.samples_in != task.samples:
            raise ShardFormatError(
                f"{output.summary.samples_in} samples read, index says {task.samples}"
            )
        return output.publish(out, options.marker_extra)
    finally:
        output.close()


@contextmanager
def shard_samples(
    task: ShardTask, secret: bytes | None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[Iterator[RawSample]]:
    """The samples of one shard in order: a plan file's sources read in place (a source that
    vanished or changed since planning comes as an ``err`` sample), or a tar's members; both
    checked against the index's sha256."""
    src = Location(task.uri)
    if is_plan_file(task.uri):
        if secret is None:
            raise ValueError("a planned shard needs the job secret to find its sources")
        yield iter_planned(src.read_bytes(), task.sha256, secret)
        return
    with src.fs.open(src.root, "rb") as f:
        yield iter_verified(f, task.sha256, max_member_bytes)
