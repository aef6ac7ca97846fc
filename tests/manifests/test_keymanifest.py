"""Key-manifest Parquet schema, reader/writer round trips, the shard sealer and re-encryption."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.envelope import EMPTY_SHA256, Envelope, MasterKey, PayloadKind
from manifests.errors import DecryptionError, ManifestError
from manifests.keymanifest import (
    ESCROW_ID_META,
    SCHEMA,
    KeyRow,
    ShardSealer,
    key_manifest_bytes,
    key_manifest_epoch,
    load_key_manifest,
    open_row,
    read_key_manifest,
    reencrypt_rows,
    write_key_manifest,
)

ANON = hashlib.sha256(b"anon").hexdigest()


@pytest.fixture
def sealer() -> ShardSealer:
    sealer = ShardSealer(Envelope(MasterKey.generate(), "job-1"), "shard-000000")
    sealer.seal_face("k1", 0, (1, 2, 11, 12), b"png0", "s3://b/Jane_Doe.jpg", ANON)
    sealer.seal_face("k1", 1, [20, 20, 30, 30], b"png1", "s3://b/Jane_Doe.jpg", ANON)
    sealer.seal_sample("k1", "s3://b/Jane_Doe.jpg", ANON)
    sealer.seal_sample("q1", "s3://b/broken.jpg", EMPTY_SHA256, b"original bytes")
    return sealer


def test_round_trip_bytes_path_and_file(sealer, tmp_path):
    rows = sealer.rows()
    assert [(r.key, r.face) for r in rows] == [("k1", 0), ("k1", 1), ("k1", -1), ("q1", -1)]
    assert read_key_manifest(sealer.manifest_bytes()) == rows
    write_key_manifest(rows, tmp_path / "m.parquet")
    assert read_key_manifest(tmp_path / "m.parquet") == rows
    assert read_key_manifest(str(tmp_path / "m.parquet")) == rows
    buf = io.BytesIO()
    write_key_manifest(rows, buf)
    assert read_key_manifest(io.BytesIO(buf.getvalue())) == rows
    assert pq.read_schema(tmp_path / "m.parquet").equals(SCHEMA, check_metadata=False)


def test_shard_name_is_the_manifest_stem():
    env = Envelope(MasterKey.generate(), "job-1")
    with_tar = ShardSealer(env, "shard-000007.tar")
    row = with_tar.seal_sample("k", "u", ANON)
    assert with_tar.shard == "shard-000007"
    assert open_row(env, "shard-000007", row, ANON).source_uri == "u"


def test_empty_manifest_round_trips():
    assert read_key_manifest(key_manifest_bytes([])) == []


def test_rows_open_to_their_payloads(sealer):
    env, rows = sealer.envelope, sealer.rows()
    face = open_row(env, "shard-000000", rows[1], ANON)
    assert face.kind is PayloadKind.FACE_PNG and face.data == b"png1"
    assert rows[1].bbox == (20, 20, 30, 30)
    whole = open_row(env, "shard-000000", rows[2], ANON)
    assert whole.kind is PayloadKind.SOURCE and whole.source_uri == "s3://b/Jane_Doe.jpg"
    quarantined = open_row(env, "shard-000000", rows[3], EMPTY_SHA256)
    assert quarantined.kind is PayloadKind.ORIGINAL_FILE and quarantined.data == b"original bytes"
    assert "Jane" not in repr(rows) and "png" not in repr(whole)


def test_row_moved_to_another_sample_or_face_fails(sealer):
    env, row = sealer.envelope, sealer.rows()[0]
    for moved in (
        KeyRow("k2", 0, row.bbox, row.nonce, row.ciphertext, row.aad_sha256),
        KeyRow("k1", 1, row.bbox, row.nonce, row.ciphertext, row.aad_sha256),
    ):
        with pytest.raises(DecryptionError):
            open_row(env, "shard-000000", moved, ANON)
    with pytest.raises(DecryptionError):
        open_row(env, "shard-000001", row, ANON)


def test_manifest_from_another_job_fails(sealer):
    other = Envelope(MasterKey.generate(), "job-2")
    with pytest.raises(DecryptionError):
        open_row(other, "shard-000000", sealer.rows()[0], ANON)


def test_schema_mismatch_is_a_clear_error():
    table = pa.table({"key": ["k"], "face": pa.array([0], pa.int64())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with pytest.raises(ManifestError, match="schema mismatch"):
        read_key_manifest(sink.getvalue().to_pybytes())
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_key_manifest(b"not parquet at all")


def test_bbox_must_have_four_values():
    with pytest.raises(ManifestError):
        KeyRow("k", 0, (1, 2, 3), b"n" * 12, b"c", "a")
    sealer = ShardSealer(Envelope(MasterKey.generate(), "j"), "s")
    with pytest.raises(ValueError):
        sealer.seal_face("k", -1, (0, 0, 1, 1), b"p", "u", ANON)


def test_reencrypt_rows_moves_every_row_to_the_new_key(sealer):
    new_env = Envelope(MasterKey.generate(), "job-1")
    shas = {"k1": ANON}
    new_rows = reencrypt_rows(sealer.rows(), "shard-000000", sealer.envelope, new_env, shas)
    assert [(r.key, r.face, r.bbox) for r in new_rows] == [
        (r.key, r.face, r.bbox) for r in sealer.rows()
    ]
    for old, new in zip(sealer.rows(), new_rows, strict=True):
        sha = shas.get(old.key, EMPTY_SHA256)
        assert open_row(new_env, "shard-000000", new, sha) == open_row(
            sealer.envelope, "shard-000000", old, sha
        )
        with pytest.raises(DecryptionError):
            open_row(sealer.envelope, "shard-000000", new, sha)
    with pytest.raises(DecryptionError):
        reencrypt_rows(sealer.rows(), "shard-000000", new_env, sealer.envelope, shas)


def test_manifest_records_the_key_epoch_of_its_envelope(tmp_path):
    env = Envelope(MasterKey.generate(), "job-1", "ab" * 16)
    sealer = ShardSealer(env, "shard-000000")
    assert sealer.escrow_id == "ab" * 16
    sealer.seal_sample("k1", "s3://b/a.jpg", ANON)
    data = sealer.manifest_bytes()
    manifest = load_key_manifest(data)
    assert manifest.escrow_id == "ab" * 16 and list(manifest.rows) == sealer.rows()
    assert key_manifest_epoch(data) == key_manifest_epoch(io.BytesIO(data)) == "ab" * 16
    assert pq.read_schema(io.BytesIO(data)).metadata[ESCROW_ID_META] == b"ab" * 16
    write_key_manifest(sealer.rows(), tmp_path / "m.parquet", escrow_id="cd" * 16)
    assert key_manifest_epoch(tmp_path / "m.parquet") == "cd" * 16
    unlabelled = key_manifest_bytes(sealer.rows())
    assert (
        load_key_manifest(unlabelled).escrow_id is None and key_manifest_epoch(unlabelled) is None
    )
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        key_manifest_epoch(b"not parquet")
    with pytest.raises(ValueError):
        key_manifest_bytes([], escrow_id="")


def test_malformed_epoch_label_is_a_clear_error():
    table = pa.table(
        {n: pa.array([], f.type) for n, f in zip(SCHEMA.names, SCHEMA, strict=True)},
        schema=SCHEMA.with_metadata({ESCROW_ID_META: b"\xff\xfe"}),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with pytest.raises(ManifestError, match="malformed key epoch"):
        load_key_manifest(sink.getvalue().to_pybytes())
