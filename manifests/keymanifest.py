"""The Parquet key manifest of one shard: schema, writer, reader and the per-shard sealer.

One row per sealed value (``keys/shard-NNNNNN.parquet``):

============  ==================  =====================================================
column        type                meaning
============  ==================  =====================================================
key           string              pseudonymous sample id (``__key__``)
face          int32               face index in the sample, ``-1`` for the whole sample
bbox          list<int32>, null   face region ``[x1, y1, x2, y2]`` (half-open), null if -1
nonce         binary              AES-GCM nonce (12 bytes)
ciphertext    binary              AES-GCM ciphertext + tag of a framed payload
aad_sha256    string              sha256 hex of the row's associated data
wrapped_key   binary, null        the sample's wrapped data key (format 2, Shamir escrow,
                                  on the ``face = -1`` row only; see :mod:`manifests.sealing`)
============  ==================  =====================================================

Format 2 (``faceveil.schema`` = ``key-manifest/2``) seals each sample's rows under that sample's
own data key with AAD format 2 (bbox included); a KMS escrow stores the shard's KMS data-key blob
in the metadata ``faceveil.kms_blob`` (base64). Format 1 (``key-manifest/1``, no
``wrapped_key``) is the master-key format of earlier releases; it is still read, and opened
with :func:`open_row` and an :class:`~manifests.envelope.Envelope`.

Every sample written by a worker has exactly one ``face = -1`` row: it always carries the source
URI, and the full original file bytes when the faces alone cannot rebuild the original (for
example quarantined samples, or decodes that lost information). A quarantined sample has no
anonymized image, so its rows are sealed with ``anon_sha256 = EMPTY_SHA256`` (sha256 of ``b""``).

Key epoch: the Parquet schema metadata ``faceveil.escrow_id`` names the key epoch (the entry of
``escrow.json``) whose master key sealed every row of the file; each run of a job (first run and
every resume) seals under its own epoch, so manifests of several epochs coexist in one output
tree. The label is not authenticated: a wrong label only makes the rows fail to open.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from faceveil.manifests.envelope import (
    Envelope,
    Payload,
    PayloadKind,
    RowBinding,
)
from faceveil.manifests.errors import DecryptionError, ManifestError
from faceveil.manifests.sealing import RowName, ShardKeys, commitment, row_aad, seal_row

log = logging.getLogger(__name__)

_V1_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("face", pa.int32(), nullable=False),
    pa.field("bbox", pa.list_(pa.int32()), nullable=True),
    pa.field("nonce", pa.binary(), nullable=False),
    pa.field("ciphertext", pa.binary(), nullable=False),
    pa.field("aad_sha256", pa.string(), nullable=False),
]
SCHEMA_V1 = pa.schema(_V1_FIELDS, metadata={b"faceveil.schema": b"key-manifest/1"})
SCHEMA = pa.schema(
    [*_V1_FIELDS, pa.field("wrapped_key", pa.binary(), nullable=True)],
    metadata={b"faceveil.schema": b"key-manifest/2"},
)
ESCROW_ID_META = b"faceveil.escrow_id"
KMS_BLOB_META = b"faceveil.kms_blob"


@dataclass(frozen=True)
class KeyRow:
    """One key-manifest row (its sample id is the Parquet column ``key``)."""

    sample_id: str
    face: int
    bbox: tuple[int, int, int, int] | None
    nonce: bytes
    ciphertext: bytes = field(repr=False)
    aad_sha256: str
    wrapped_key: bytes | None = field(default=None, repr=False)

    def sealed_bytes(self) -> bytes:
        """Everything sealed in the row (nonce, ciphertext, wrapped key), for commitments."""
        return self.nonce + self.ciphertext + (self.wrapped_key or b"")

    def __post_init__(self) -> None:
        if self.bbox is not None:
            object.__setattr__(self, "bbox", tuple(int(v) for v in self.bbox))
            if len(self.bbox) != 4:
                raise ManifestError(f"row key={self.sample_id!r}: bbox must have 4 integers")


@dataclass(frozen=True)
class KeyManifest:
    """A parsed key manifest: format (1 or 2), key epoch (None if it records none), rows, and
    for a KMS escrow the shard's data-key blob."""

    escrow_id: str | None
    rows: tuple[KeyRow, ...]
    version: int = 2
    kms_blob: bytes = b""

    def commitment(self) -> dict:
        """The row list's commitment (see :func:`manifests.sealing.commitment`)."""
        return commitment(
            [(r.sample_id, r.face, r.aad_sha256, r.sealed_bytes()) for r in self.rows]
        )


def _table(
    rows: Iterable[KeyRow], escrow_id: str | None, version: int = 2, kms_blob: bytes = b""
) -> pa.Table:
    rows = list(rows)
    columns = {
        "key": [r.sample_id for r in rows],
        "face": [r.face for r in rows],
        "bbox": [list(r.bbox) if r.bbox is not None else None for r in rows],
        "nonce": [r.nonce for r in rows],
        "ciphertext": [r.ciphertext for r in rows],
        "aad_sha256": [r.aad_sha256 for r in rows],
    }
    schema = SCHEMA_V1 if version == 1 else SCHEMA
    if version != 1:
        columns["wrapped_key"] = [r.wrapped_key for r in rows]
    meta = dict(schema.metadata)
    if escrow_id is not None:
        if not isinstance(escrow_id, str) or not escrow_id:
            raise ValueError("escrow_id must be a non-empty string or None")
        meta[ESCROW_ID_META] = escrow_id.encode()
    if kms_blob:
        meta[KMS_BLOB_META] = base64.b64encode(kms_blob)
    return pa.Table.from_pydict(columns, schema=schema.with_metadata(meta))


def write_key_manifest(
    rows: Iterable[KeyRow], where: str | Path | BinaryIO, escrow_id: str | None = None
) -> None:
    """Write rows as Parquet to a local path or a writable binary file object."""
    table = _table(rows, escrow_id)
    pq.write_table(table, where if not isinstance(where, Path) else str(where))


def key_manifest_bytes(
    rows: Iterable[KeyRow], escrow_id: str | None = None, version: int = 2, kms_blob: bytes = b""
) -> bytes:
    """The Parquet file as bytes (recording key epoch ``escrow_id``), for one rename or PUT."""
    sink = pa.BufferOutputStream()
    # Ciphertext does not compress: writing it uncompressed saves the CPU and loses nothing.
    pq.write_table(_table(rows, escrow_id, version, kms_blob), sink, compression="none")
    return sink.getvalue().to_pybytes()


def _check_schema(schema: pa.Schema) -> int:
    got = [(f.name, f.type) for f in schema]
    for version, expected in ((2, SCHEMA), (1, SCHEMA_V1)):
        if got == [(f.name, f.type) for f in expected]:
            return version
    shown = ", ".join(f"{name}: {typ}" for name, typ in got)
    raise ManifestError(
        f"key manifest schema mismatch: expected {SCHEMA.names} with types "
        f"{[str(f.type) for f in SCHEMA]}, got [{shown}]"
    )


def _escrow_id(schema: pa.Schema) -> str | None:
    raw = (schema.metadata or {}).get(ESCROW_ID_META)
    if raw is None:
        return None
    try:
        escrow_id = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ManifestError("key manifest records a malformed key epoch") from None
    if not escrow_id.isprintable() or not escrow_id or len(escrow_id) > 128:
        raise ManifestError("key manifest records a malformed key epoch")
    return escrow_id


def key_manifest_epoch(src: str | Path | bytes | BinaryIO) -> str | None:
    """The key epoch a manifest records, from its Parquet footer only (no rows are read)."""
    source = io.BytesIO(src) if isinstance(src, bytes | bytearray) else src
    try:
        schema = pq.ParquetFile(str(source) if isinstance(source, Path) else source).schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"not a readable Parquet key manifest ({type(exc).__name__})") from None
    _check_schema(schema)
    return _escrow_id(schema)


def read_key_manifest(src: str | Path | bytes | BinaryIO) -> list[KeyRow]:
    """Read the rows of a key manifest from a path, bytes, or a readable binary file object."""
    return list(load_key_manifest(src).rows)


def load_key_manifest(src: str | Path | bytes | BinaryIO) -> KeyManifest:
    """Read a key manifest, rows and key epoch, as :func:`read_key_manifest` reads rows."""
    source = io.BytesIO(src) if isinstance(src, bytes | bytearray) else src
    try:
        table = pq.read_table(str(source) if isinstance(source, Path) else source)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"not a readable Parquet key manifest ({type(exc).__name__})") from None
    version = _check_schema(table.schema)
    rows = []
    for rec in table.to_pylist():
        for name in ("key", "face", "nonce", "ciphertext", "aad_sha256"):
            if rec[name] is None:
                raise ManifestError(f"key manifest row has a null {name}")
        bbox = rec["bbox"]
        if bbox is not None and (len(bbox) != 4 or any(v is None for v in bbox)):
            raise ManifestError(f"row key={rec['key']!r}: bbox must have 4 integers")
        rows.append(
            KeyRow(
                rec["key"],
                rec["face"],
                tuple(bbox) if bbox is not None else None,
                rec["nonce"],
                rec["ciphertext"],
                rec["aad_sha256"],
                rec.get("wrapped_key"),
            )
        )
    blob = (table.schema.metadata or {}).get(KMS_BLOB_META, b"")
    try:
        kms_blob = base64.b64decode(blob, validate=True) if blob else b""
    except ValueError:
        raise ManifestError("key manifest records a malformed KMS blob") from None
    return KeyManifest(_escrow_id(table.schema), tuple(rows), version, kms_blob)


def open_row(envelope: Envelope, shard: str, row: KeyRow, anon_sha256: str) -> Payload:
    """Decrypt and parse one row of ``shard``; raises :class:`DecryptionError` on any mismatch."""
    at = RowBinding(shard, row.sample_id, row.face, anon_sha256)
    plaintext = envelope.open(at, row.nonce, row.ciphertext)
    payload = Payload.from_bytes(plaintext)
    if (row.face >= 0) != (payload.kind is PayloadKind.FACE_PNG):
        raise DecryptionError(
            f"row key={row.sample_id!r} face={row.face}: payload kind does not match"
        )
    return payload


@dataclass(frozen=True)
class SampleToSeal:
    """The sample whose rows a :class:`ShardSealer` seals: its id (``__key__``), its source URI
    (inside every payload) and the sha256 of its anonymized image (in every row's AAD;
    ``EMPTY_SHA256`` for a quarantined sample, which has none)."""

    sample_id: str
    source_uri: str = field(repr=False)
    anon_sha256: str


class ShardSealer:
    """Collects the sealed rows (format 2) of one shard while a worker processes its samples.

    ``shard`` is the shard's name as in ``keys/<shard>.parquet`` (``shard-000000``; a trailing
    ``.tar`` is dropped). Each sample's rows are sealed under its own data key from ``keys``
    (:class:`~manifests.sealing.ShardKeys`); the sample's wrapped key goes on its whole-sample
    row. The manifest records the key epoch and, with KMS, the shard key's blob.
    """

    def __init__(self, keys: ShardKeys, shard: str) -> None:
        self.keys = keys
        self.job_id = keys.epoch.job_id
        self.shard = shard.removesuffix(".tar")
        if keys.shard != self.shard:
            raise ValueError(f"data keys made for {keys.shard!r} cannot seal {self.shard!r}")
        self.escrow_id = keys.epoch.escrow_id
        self._rows: list[KeyRow] = []
        self._data_keys: dict[str, tuple[bytes, bytes | None]] = {}

    def _add(
        self,
        sample: SampleToSeal,
        face: int,
        bbox: tuple[int, int, int, int] | None,
        payload: Payload,
    ) -> KeyRow:
        sample_id = sample.sample_id
        if sample_id not in self._data_keys:
            self._data_keys[sample_id] = self.keys.sample(sample_id)
        data_key, wrapped = self._data_keys[sample_id]
        aad = row_aad(self.job_id, self.shard, RowName(sample_id, face, bbox), sample.anon_sha256)
        nonce, ciphertext = seal_row(data_key, aad, payload.to_bytes())
        digest = hashlib.sha256(aad).hexdigest()
        row = KeyRow(
            sample_id, face, bbox, nonce, ciphertext, digest, wrapped if face < 0 else None
        )
        self._rows.append(row)
        return row

    def seal_face(
        self, sample: SampleToSeal, face: int, bbox: tuple[int, int, int, int], png_bytes: bytes
    ) -> KeyRow:
        """Seal the lossless PNG of face ``face``'s region ``bbox`` of the decoded original."""
        if face < 0:
            raise ValueError("face rows have an index >= 0")
        if bbox is None or len(bbox) != 4:
            raise ValueError("a face row needs a bbox of 4 integers")
        payload = Payload(PayloadKind.FACE_PNG, sample.source_uri, png_bytes)
        return self._add(sample, face, tuple(int(v) for v in bbox), payload)

    def seal_sample(self, sample: SampleToSeal, original_bytes: bytes | None = None) -> KeyRow:
        """Seal the whole-sample row (face -1): the source URI and, if given, the original file.

        For a quarantined sample give ``anon_sha256=EMPTY_SHA256`` and the original bytes.
        """
        if original_bytes is None:
            payload = Payload(PayloadKind.SOURCE, sample.source_uri)
        else:
            payload = Payload(PayloadKind.ORIGINAL_FILE, sample.source_uri, bytes(original_bytes))
        return self._add(sample, -1, None, payload)

    def rows(self) -> list[KeyRow]:
        """The rows sealed so far, in order."""
        return list(self._rows)

    def commitment(self) -> dict:
        """The row list's commitment, for the shard's marker and the job-signed log."""
        return commitment(
            [(r.sample_id, r.face, r.aad_sha256, r.sealed_bytes()) for r in self._rows]
        )

    def manifest_bytes(self) -> bytes:
        """The shard's key manifest as Parquet bytes, recording its key epoch."""
        return key_manifest_bytes(self._rows, self.escrow_id, 2, self.keys.kms_blob)
