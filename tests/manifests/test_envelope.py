"""The legacy (format-1, master-key) AES-256-GCM envelope, still used to read old key manifests:
known answers, tampering, a format-1 key manifest written and read back; and the payload framing
shared by both formats."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceveil.manifests.envelope import (
    EMPTY_SHA256,
    Envelope,
    MasterKey,
    Payload,
    PayloadKind,
    RowBinding,
    aad_bytes,
)
from faceveil.manifests.errors import DecryptionError
from faceveil.manifests.keymanifest import (
    SCHEMA_V1,
    KeyRow,
    key_manifest_bytes,
    load_key_manifest,
    open_row,
)

MASTER = bytes(range(32))
NONCE = bytes.fromhex("000102030405060708090a0b")
ANON = hashlib.sha256(b"anonymized image").hexdigest()
SHARD = "shard-000000"
SOURCE = "s3://b/Jane_Doe.jpg"


def _documented_aad(job: str, at: RowBinding) -> bytes:
    """The AAD as the module docstring lays it out, built with json, not the envelope."""
    doc = {
        "job_id": job,
        "shard": at.shard,
        "key": at.sample_id,
        "face": at.face,
        "anon_sha256": at.anon_sha256,
        "v": "faceveil-aad/1",
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _expected(job: str, at: RowBinding, plaintext: bytes) -> bytes:
    """Independent computation from the documented construction."""
    data_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=job.encode(), info=at.sample_id.encode()
    ).derive(MASTER)
    return AESGCM(data_key).encrypt(NONCE, plaintext, _documented_aad(job, at))


def test_known_answer_with_injected_key_and_nonce():
    env = Envelope(MasterKey(MASTER), "job-1")
    at = RowBinding("shard-000003", "abc123", 2, ANON)
    box = env.seal(at, b"face pixels", nonce=NONCE)
    assert box.nonce == NONCE
    assert box.ciphertext == _expected("job-1", at, b"face pixels")
    aad = aad_bytes("job-1", "shard-000003", "abc123", 2, ANON)
    assert box.aad_sha256 == hashlib.sha256(aad).hexdigest()
    assert env.open(at, box.nonce, box.ciphertext) == b"face pixels"


# Format-1 vectors written out once: the AAD exactly as the module docstring lays it out, the
# per-sample data key and ciphertext from cryptography's HKDF and AES-GCM called directly
# (``_expected``), never from the envelope. A change of the derivation or AAD layout would make
# every format-1 manifest unreadable.
WHOLE_SAMPLE_AAD = (
    b'{"anon_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",'
    b'"face":-1,"job_id":"job-1","key":"k","shard":"shard-000000","v":"faceveil-aad/1"}'
)
VECTORS = [
    (
        RowBinding("shard-000000", "k", -1, EMPTY_SHA256),
        b"",
        "6b67e9ceecafc87ffabb682f67e85f4350b6e20681aa422a5cbfef6649c13877",
        "284fc78ca7ec6cd997eb771de7587a452a8a51ff08aeef0010bfa66e43e58676",
        "af661acc610630c563b8692e203ee36a",
    ),
    (
        RowBinding("shard-000003", "abc123", 2, ANON),
        b"face pixels",
        "97db573963b1158f92269279dc3061c847350e584cb4d770de257e83a00c07ba",
        "8ed8de5baab6e8c194bcb5a505977e3b18ec155fbe29371787a6d58fa359ce3f",
        "7df9a32c238754f022ac72a7d593a3c13ddc80344b6cda839926ac",
    ),
]


def test_fixed_vector_is_the_documented_construction():
    """The pinned vectors are what the documented construction gives, computed without the
    code under test (so a pinned value cannot just echo the envelope)."""
    assert hashlib.sha256(WHOLE_SAMPLE_AAD).hexdigest() == VECTORS[0][3]
    for at, plaintext, data_key, aad_sha256, ciphertext in VECTORS:
        derived = HKDF(hashes.SHA256(), 32, salt=b"job-1", info=at.sample_id.encode())
        assert derived.derive(MASTER).hex() == data_key
        assert hashlib.sha256(_documented_aad("job-1", at)).hexdigest() == aad_sha256
        assert _expected("job-1", at, plaintext).hex() == ciphertext


@pytest.mark.parametrize("vector", VECTORS, ids=["whole-sample", "face"])
def test_fixed_vector_is_stable(vector):
    at, plaintext, data_key, aad_sha256, ciphertext = vector
    env = Envelope(MasterKey(MASTER), "job-1")
    assert env.data_key(at.sample_id).hex() == data_key
    box = env.seal(at, plaintext, nonce=NONCE)
    assert (box.ciphertext.hex(), box.aad_sha256) == (ciphertext, aad_sha256)
    assert env.open(at, NONCE, bytes.fromhex(ciphertext)) == plaintext
    if at.face == -1:
        assert aad_bytes("job-1", at.shard, at.sample_id, at.face, at.anon_sha256) == (
            WHOLE_SAMPLE_AAD
        )


def test_random_nonces_differ():
    env = Envelope(MasterKey.generate(), "job")
    a = env.seal(RowBinding("s", "k", 0, ANON), b"x")
    b = env.seal(RowBinding("s", "k", 0, ANON), b"x")
    assert a.nonce != b.nonce and len(a.nonce) == 12


@pytest.mark.parametrize(
    "change",
    [
        {"shard": "shard-000001"},
        {"sample_id": "other"},
        {"face": 1},
        {"face": -1},
        {"anon_sha256": EMPTY_SHA256},
    ],
)
def test_moved_or_repaired_row_does_not_open(change):
    env = Envelope(MasterKey(MASTER), "job-1")
    at = RowBinding("shard-000000", "k1", 0, ANON)
    box = env.seal(at, b"secret")
    with pytest.raises(DecryptionError) as err:
        env.open(replace(at, **change), box.nonce, box.ciphertext)
    assert "secret" not in str(err.value)


def test_other_job_or_key_or_flipped_byte_does_not_open():
    env = Envelope(MasterKey(MASTER), "job-1")
    at = RowBinding("s", "k", 0, ANON)
    box = env.seal(at, b"secret")
    with pytest.raises(DecryptionError):
        Envelope(MasterKey(MASTER), "job-2").open(at, box.nonce, box.ciphertext)
    with pytest.raises(DecryptionError):
        Envelope(MasterKey.generate(), "job-1").open(at, box.nonce, box.ciphertext)
    for i in (0, len(box.ciphertext) - 1):
        flipped = bytearray(box.ciphertext)
        flipped[i] ^= 1
        with pytest.raises(DecryptionError):
            env.open(at, box.nonce, bytes(flipped))
    with pytest.raises(DecryptionError):
        env.open(at, box.nonce[:-1], box.ciphertext)


def test_master_key_validation_and_redaction():
    with pytest.raises(ValueError) as err:
        MasterKey(b"\x01" * 31)
    assert "01" not in str(err.value)
    key = MasterKey.generate()
    assert repr(key) == str(key) == "MasterKey(<redacted>)"
    assert key.reveal().hex() not in repr(Envelope(key, "j"))
    assert key == MasterKey(key.reveal()) and key != MasterKey.generate()
    assert pickle.loads(pickle.dumps(key)) == key  # Ray ships the envelope to its actors


def test_key_check_value_is_hmac_not_key():
    key = MasterKey(MASTER)
    check = key.check_value("job-1")
    assert check != hashlib.sha256(MASTER).hexdigest() and MASTER.hex() not in check
    assert check != key.check_value("job-2") and len(check) == 64


def test_aad_validation():
    for bad in ({"face": -2}, {"face": True}, {"anon_sha256": "ABC"}, {"sample_id": ""}):
        args = {"job_id": "j", "shard": "s", "sample_id": "k", "face": 0, "anon_sha256": ANON} | bad
        with pytest.raises(ValueError):
            aad_bytes(**args)


@pytest.mark.parametrize(
    "payload",
    [
        Payload(PayloadKind.FACE_PNG, "s3://bucket/people/Jane_Doe.jpg", b"\x89PNG..."),
        Payload(PayloadKind.ORIGINAL_FILE, "/data/é.png", b"\x00" * 100),
        Payload(PayloadKind.SOURCE, "file:///x.jpg"),
    ],
)
def test_payload_framing_round_trip(payload):
    raw = payload.to_bytes()
    assert raw[:4] == b"FVP1"
    uri = payload.source_uri.encode()
    assert struct.unpack(">I", raw[5:9])[0] == len(uri) and raw[9 : 9 + len(uri)] == uri
    assert Payload.from_bytes(raw) == payload
    assert payload.source_uri not in repr(payload)


def test_payload_framing_rejects_garbage():
    for raw in (
        b"",
        b"FVP1",
        b"XXXX\x01\x00\x00\x00\x00",
        b"FVP1\x09\x00\x00\x00\x00",
        b"FVP1\x01\x00\x00\x00\x09ab",
    ):
        with pytest.raises(DecryptionError):
            Payload.from_bytes(raw)
    with pytest.raises(ValueError):
        Payload(PayloadKind.SOURCE, "u", b"data").to_bytes()


def test_format_1_manifests_are_still_read():
    env = Envelope(MasterKey.generate(), "job-1")
    face = Payload(PayloadKind.FACE_PNG, SOURCE, b"p").to_bytes()
    whole = Payload(PayloadKind.SOURCE, SOURCE).to_bytes()
    boxes = [
        (0, (1, 2, 3, 4), env.seal(RowBinding(SHARD, "k1", 0, ANON), face)),
        (-1, None, env.seal(RowBinding(SHARD, "k1", -1, ANON), whole)),
    ]
    rows = [KeyRow("k1", f, bbox, b.nonce, b.ciphertext, b.aad_sha256) for f, bbox, b in boxes]
    data = key_manifest_bytes(rows, "ab" * 16, version=1)
    assert pq.read_schema(io.BytesIO(data)).equals(SCHEMA_V1, check_metadata=False)
    manifest = load_key_manifest(data)
    assert manifest.version == 1 and manifest.escrow_id == "ab" * 16
    assert list(manifest.rows) == rows and all(r.wrapped_key is None for r in manifest.rows)
    assert open_row(env, SHARD, manifest.rows[0], ANON).data == b"p"
    assert open_row(env, SHARD, manifest.rows[1], ANON).source_uri == SOURCE
    with pytest.raises(DecryptionError):
        open_row(Envelope(MasterKey.generate(), "job-1"), SHARD, manifest.rows[0], ANON)
    with pytest.raises(DecryptionError):
        open_row(env, SHARD, KeyRow(**rows[1].__dict__ | {"face": 0}), ANON)
