"""Key manifests: format 2 (per-sample data keys, bbox in the AAD, wrapped keys on the
whole-sample row, KMS blob in the footer) and the row-list commitment (format 1, read with the
legacy envelope, is tested with it in test_envelope.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faceveil.manifests import threshold
from faceveil.manifests.envelope import EMPTY_SHA256, Payload, PayloadKind
from faceveil.manifests.errors import DecryptionError, ManifestError
from faceveil.manifests.escrow import (
    Escrow,
    KmsPolicy,
    ShamirPolicy,
    ShardRef,
    create_escrow,
    kms_open_shard_key,
)
from faceveil.manifests.jobkeys import epoch_sealing
from faceveil.manifests.keymanifest import (
    ESCROW_ID_META,
    KMS_BLOB_META,
    SCHEMA,
    KeyManifest,
    KeyRow,
    SampleToSeal,
    ShardSealer,
    key_manifest_bytes,
    key_manifest_epoch,
    load_key_manifest,
    read_key_manifest,
    write_key_manifest,
)
from faceveil.manifests.sealing import RowName, kms_data_key, row_aad, seal_row
from faceveil.manifests.sealing import open_row as open_sealed_row

ANON = hashlib.sha256(b"anon").hexdigest()
SHARD = "shard-000000"
SOURCE = "s3://b/Jane_Doe.jpg"


@pytest.fixture(scope="module")
def escrow(custodians) -> Escrow:
    return create_escrow("job-1", ShamirPolicy(2, tuple(c.public() for c in custodians)))


@pytest.fixture
def sealer(escrow) -> ShardSealer:
    sealer = ShardSealer(epoch_sealing(escrow, escrow.escrow_ids[0]).shard_keys(SHARD), SHARD)
    k1 = SampleToSeal("k1", SOURCE, ANON)
    sealer.seal_face(k1, 0, (1, 2, 11, 12), b"png0")
    sealer.seal_face(k1, 1, [20, 20, 30, 30], b"png1")
    sealer.seal_sample(k1)
    sealer.seal_sample(SampleToSeal("q1", "s3://b/broken.jpg", EMPTY_SHA256), b"original bytes")
    return sealer


def data_key(escrow: Escrow, manifest: KeyManifest, key: str, custodians) -> bytes:
    """A sample's data key from two custodians' partials on its wrapped key."""
    epoch = escrow.epoch(manifest.escrow_id)
    (row,) = [r for r in manifest.rows if r.sample_id == key and r.face == -1]
    wrapped = threshold.WrappedKey.from_bytes(row.wrapped_key)
    label = epoch.label(SHARD, key)
    partials = [
        threshold.partial_decrypt(epoch.open_share(c), wrapped, label) for c in custodians[:2]
    ]
    shared = threshold.combine_partials(partials, 2)
    return threshold.unwrap(epoch.public_key, wrapped, label, shared)


def open_v2(dk: bytes, row: KeyRow, anon: str) -> Payload:
    """A row of SHARD of job-1, opened where it claims to be."""
    aad = row_aad("job-1", SHARD, RowName(row.sample_id, row.face, row.bbox), anon)
    assert hashlib.sha256(aad).hexdigest() == row.aad_sha256
    return Payload.from_bytes(open_sealed_row(dk, aad, row.nonce, row.ciphertext, row.sample_id))


def test_format_2_round_trips_through_bytes_path_and_file(sealer, escrow, tmp_path):
    rows = sealer.rows()
    assert [(r.sample_id, r.face) for r in rows] == [("k1", 0), ("k1", 1), ("k1", -1), ("q1", -1)]
    manifest = load_key_manifest(sealer.manifest_bytes())
    assert manifest.version == 2 and manifest.escrow_id == escrow.escrow_ids[0]
    assert list(manifest.rows) == rows and manifest.kms_blob == b""
    assert [r.wrapped_key is not None for r in rows] == [False, False, True, True]
    assert rows[2].wrapped_key != rows[3].wrapped_key
    write_key_manifest(rows, tmp_path / "m.parquet")
    assert read_key_manifest(tmp_path / "m.parquet") == rows
    assert read_key_manifest(str(tmp_path / "m.parquet")) == rows
    buf = io.BytesIO()
    write_key_manifest(rows, buf)
    assert read_key_manifest(io.BytesIO(buf.getvalue())) == rows
    assert pq.read_schema(tmp_path / "m.parquet").equals(SCHEMA, check_metadata=False)
    assert read_key_manifest(key_manifest_bytes([])) == []


def test_rows_open_under_their_samples_data_key(sealer, escrow, custodians):
    manifest = load_key_manifest(sealer.manifest_bytes())
    k1 = data_key(escrow, manifest, "k1", custodians)
    q1 = data_key(escrow, manifest, "q1", custodians)
    assert k1 != q1
    face = open_v2(k1, manifest.rows[1], ANON)
    assert face.kind is PayloadKind.FACE_PNG and face.data == b"png1" and face.source_uri == SOURCE
    whole = open_v2(k1, manifest.rows[2], ANON)
    assert whole.kind is PayloadKind.SOURCE and whole.data == b""
    quarantined = open_v2(q1, manifest.rows[3], EMPTY_SHA256)
    assert quarantined.kind is PayloadKind.ORIGINAL_FILE and quarantined.data == b"original bytes"
    with pytest.raises(DecryptionError):
        open_v2(q1, manifest.rows[0], ANON)  # another sample's data key
    assert "Jane" not in repr(manifest.rows) and "png1" not in repr(face)


def test_the_bbox_is_in_the_aad(sealer, escrow, custodians):
    manifest = load_key_manifest(sealer.manifest_bytes())
    dk = data_key(escrow, manifest, "k1", custodians)
    row = manifest.rows[0]
    assert open_v2(dk, row, ANON).data == b"png0"
    for bbox in ((1, 2, 11, 13), (0, 0, 100, 100), (20, 20, 30, 30)):
        aad = row_aad("job-1", SHARD, RowName("k1", 0, bbox), ANON)
        with pytest.raises(DecryptionError, match="re-boxed"):
            open_sealed_row(dk, aad, row.nonce, row.ciphertext, "k1")
    doc = json.loads(row_aad("job-1", SHARD, RowName("k1", 0, (1, 2, 11, 12)), ANON))
    assert doc == {
        "anon_sha256": ANON, "bbox": [1, 2, 11, 12], "face": 0, "job_id": "job-1",
        "key": "k1", "shard": SHARD, "v": "faceveil-aad/2",
    }  # fmt: skip
    assert json.loads(row_aad("job-1", SHARD, RowName("k1", -1, None), ANON))["bbox"] is None
    with pytest.raises(ValueError):
        row_aad("job-1", SHARD, RowName("k1", 0, None), ANON)
    with pytest.raises(ValueError):
        row_aad("job-1", SHARD, RowName("k1", -1, (0, 0, 1, 1)), ANON)


@pytest.mark.parametrize(
    "where",
    [
        {"key": "q1"},
        {"face": 1},
        {"face": 1, "bbox": (20, 20, 30, 30)},
        {"shard": "shard-000001"},
        {"job": "job-2"},
        {"anon": EMPTY_SHA256},
    ],
)
def test_a_moved_row_does_not_open(sealer, escrow, custodians, where):
    manifest = load_key_manifest(sealer.manifest_bytes())
    dk = data_key(escrow, manifest, "k1", custodians)
    row = manifest.rows[0]
    at = {"job": "job-1", "shard": SHARD, "key": "k1", "face": 0, "bbox": row.bbox, "anon": ANON}
    at |= where
    aad = row_aad(at["job"], at["shard"], RowName(at["key"], at["face"], at["bbox"]), at["anon"])
    with pytest.raises(DecryptionError) as err:
        open_sealed_row(dk, aad, row.nonce, row.ciphertext, "a row")
    assert "png0" not in str(err.value)
    with pytest.raises(DecryptionError):
        aad = row_aad("job-1", SHARD, RowName("k1", 0, row.bbox), ANON)
        open_sealed_row(dk, aad, row.nonce[:-1], row.ciphertext, "a row")


def test_seal_row_uses_fresh_nonces():
    aad = row_aad("j", SHARD, RowName("k", -1, None), ANON)
    (n1, c1), (n2, c2) = seal_row(b"\x01" * 32, aad, b"x"), seal_row(b"\x01" * 32, aad, b"x")
    assert n1 != n2 and c1 != c2 and len(n1) == 12


def test_a_wrapped_key_is_bound_to_its_sample_and_shard(sealer, escrow, custodians):
    manifest = load_key_manifest(sealer.manifest_bytes())
    epoch = escrow.epochs[0]
    wrapped = threshold.WrappedKey.from_bytes(manifest.rows[2].wrapped_key)
    wrapped.check_label(epoch.label(SHARD, "k1"))
    for label in (epoch.label(SHARD, "q1"), epoch.label("shard-000001", "k1")):
        with pytest.raises(threshold.ThresholdError):
            wrapped.check_label(label)


def _commit(rows) -> dict:
    return KeyManifest(None, tuple(rows)).commitment()


def test_commitment_notices_a_dropped_added_moved_or_altered_row(sealer):
    rows = sealer.rows()
    base = sealer.commitment()
    assert base["rows"] == 4 and base["samples"] == 2 and len(base["sha256"]) == 64
    assert load_key_manifest(sealer.manifest_bytes()).commitment() == base
    assert _commit(rows[::-1]) == base  # order does not matter, content does
    flipped = bytearray(rows[0].ciphertext)
    flipped[0] ^= 1
    changed = [
        rows[:-1],
        [*rows, rows[0]],
        [KeyRow("k9", *list(rows[0].__dict__.values())[1:]), *rows[1:]],
        [KeyRow(**rows[0].__dict__ | {"ciphertext": bytes(flipped)}), *rows[1:]],
        [KeyRow(**rows[0].__dict__ | {"nonce": b"\x00" * 12}), *rows[1:]],
        [*rows[:2], KeyRow(**rows[2].__dict__ | {"wrapped_key": rows[3].wrapped_key}), rows[3]],
        [*rows[:2], KeyRow(**rows[2].__dict__ | {"aad_sha256": "0" * 64}), rows[3]],
    ]
    digests = {_commit(c)["sha256"] for c in changed}
    assert len(digests) == len(changed) and base["sha256"] not in digests


def test_kms_manifests_carry_the_shard_key_blob(moto_endpoint, aws_env):
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    policy = KmsPolicy(client.create_key()["KeyMetadata"]["Arn"])
    escrow = create_escrow("job-1", policy)
    eid = escrow.escrow_ids[0]
    sealer = ShardSealer(epoch_sealing(escrow, eid).shard_keys(SHARD, kms=client), SHARD)
    sealer.seal_face(SampleToSeal("k1", SOURCE, ANON), 0, (0, 0, 4, 4), b"png")
    sealer.seal_sample(SampleToSeal("k1", SOURCE, ANON))
    manifest = load_key_manifest(sealer.manifest_bytes())
    assert manifest.kms_blob and all(r.wrapped_key is None for r in manifest.rows)
    shard_key = kms_open_shard_key(client, policy, ShardRef("job-1", eid, SHARD), manifest.kms_blob)
    dk = kms_data_key(shard_key, "job-1", escrow.epochs[0].label(SHARD, "k1"))
    assert open_v2(dk, manifest.rows[0], ANON).data == b"png"
    other = kms_data_key(shard_key, "job-1", escrow.epochs[0].label(SHARD, "k2"))
    with pytest.raises(DecryptionError):
        open_v2(other, manifest.rows[0], ANON)


def test_shard_name_is_the_manifest_stem(escrow):
    sealing = epoch_sealing(escrow, escrow.escrow_ids[0])
    sealer = ShardSealer(sealing.shard_keys("shard-000007"), "shard-000007.tar")
    row = sealer.seal_sample(SampleToSeal("k", "u", ANON))
    assert sealer.shard == "shard-000007"
    assert (
        row.aad_sha256
        == hashlib.sha256(
            row_aad("job-1", "shard-000007", RowName("k", -1, None), ANON)
        ).hexdigest()
    )


def test_shard_sealer_refuses_keys_made_for_another_shard(escrow):
    sealing = epoch_sealing(escrow, escrow.escrow_ids[0])
    for keys_for, sealer_for in (("shard-000007.tar", "shard-000007.tar"), (SHARD, "shard-000001")):
        with pytest.raises((ValueError, ManifestError)):
            sealer = ShardSealer(sealing.shard_keys(keys_for), sealer_for)
            sealer.seal_sample(SampleToSeal("k", "u", ANON))


def test_bad_rows_and_schemas_are_clear_errors(escrow):
    with pytest.raises(ManifestError):
        KeyRow("k", 0, (1, 2, 3), b"n" * 12, b"c", "a")
    sealer = ShardSealer(epoch_sealing(escrow, escrow.escrow_ids[0]).shard_keys(SHARD), SHARD)
    with pytest.raises(ValueError):
        sealer.seal_face(SampleToSeal("k", "u", ANON), -1, (0, 0, 1, 1), b"p")
    with pytest.raises(ValueError):
        sealer.seal_face(SampleToSeal("k", "u", ANON), 0, None, b"p")
    table = pa.table({"key": ["k"], "face": pa.array([0], pa.int64())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with pytest.raises(ManifestError, match="schema mismatch"):
        read_key_manifest(sink.getvalue().to_pybytes())
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_key_manifest(b"not parquet at all")


@pytest.mark.parametrize(
    ("meta", "message"),
    [({ESCROW_ID_META: b"\xff\xfe"}, "malformed key epoch"), ({KMS_BLOB_META: b"!!"}, "KMS blob")],
)
def test_malformed_footer_metadata_is_a_clear_error(meta, message):
    table = pa.table(
        {n: pa.array([], f.type) for n, f in zip(SCHEMA.names, SCHEMA, strict=True)},
        schema=SCHEMA.with_metadata(meta),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with pytest.raises(ManifestError, match=message):
        load_key_manifest(sink.getvalue().to_pybytes())


def test_manifest_records_its_key_epoch_and_blob(sealer, tmp_path):
    data = sealer.manifest_bytes()
    assert key_manifest_epoch(data) == key_manifest_epoch(io.BytesIO(data)) == sealer.escrow_id
    write_key_manifest(sealer.rows(), tmp_path / "m.parquet", escrow_id="cd" * 16)
    assert key_manifest_epoch(tmp_path / "m.parquet") == "cd" * 16
    unlabelled = key_manifest_bytes(sealer.rows())
    assert (
        load_key_manifest(unlabelled).escrow_id is None and key_manifest_epoch(unlabelled) is None
    )
    blob = key_manifest_bytes([], "ab" * 16, 2, b"kms blob bytes")
    assert pq.read_schema(io.BytesIO(blob)).metadata[KMS_BLOB_META] == base64.b64encode(
        b"kms blob bytes"
    )
    assert load_key_manifest(blob).kms_blob == b"kms blob bytes"
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        key_manifest_epoch(b"not parquet")
    with pytest.raises(ValueError):
        key_manifest_bytes([], escrow_id="")
