"""The legacy (format-1, master-key) AES-256-GCM envelope, still used to read old key manifests:
known answers, tampering; and the payload framing shared by both formats."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

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
    aad_bytes,
)
from faceveil.manifests.errors import DecryptionError

MASTER = bytes(range(32))
NONCE = bytes.fromhex("000102030405060708090a0b")
ANON = hashlib.sha256(b"anonymized image").hexdigest()


def _expected(job: str, shard: str, key: str, face: int, anon: str, plaintext: bytes) -> bytes:
    """Independent computation from the documented construction."""
    sample_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=job.encode(), info=key.encode()
    ).derive(MASTER)
    aad = json.dumps(
        {
            "job_id": job,
            "shard": shard,
            "key": key,
            "face": face,
            "anon_sha256": anon,
            "v": "faceveil-aad/1",
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return AESGCM(sample_key).encrypt(NONCE, plaintext, aad)


def test_known_answer_with_injected_key_and_nonce():
    env = Envelope(MasterKey(MASTER), "job-1")
    box = env.seal("shard-000003", "abc123", 2, b"face pixels", ANON, nonce=NONCE)
    assert box.nonce == NONCE
    assert box.ciphertext == _expected("job-1", "shard-000003", "abc123", 2, ANON, b"face pixels")
    aad = aad_bytes("job-1", "shard-000003", "abc123", 2, ANON)
    assert box.aad_sha256 == hashlib.sha256(aad).hexdigest()
    assert env.open("shard-000003", "abc123", 2, box.nonce, box.ciphertext, ANON) == b"face pixels"


def test_fixed_vector_is_stable():
    """Pinned vectors (computed once, hard-coded): a change of the derivation or AAD layout
    would make every format-1 manifest unreadable."""
    env = Envelope(MasterKey(MASTER), "job-1")
    box = env.seal("shard-000000", "k", -1, b"", EMPTY_SHA256, nonce=NONCE)
    assert box.ciphertext.hex() == "af661acc610630c563b8692e203ee36a"
    assert box.aad_sha256 == "284fc78ca7ec6cd997eb771de7587a452a8a51ff08aeef0010bfa66e43e58676"
    box = env.seal("shard-000003", "abc123", 2, b"face pixels", ANON, nonce=NONCE)
    assert box.ciphertext.hex() == "7df9a32c238754f022ac72a7d593a3c13ddc80344b6cda839926ac"
    assert box.aad_sha256 == "8ed8de5baab6e8c194bcb5a505977e3b18ec155fbe29371787a6d58fa359ce3f"
    assert (
        env.open(
            "shard-000000",
            "k",
            -1,
            NONCE,
            bytes.fromhex("af661acc610630c563b8692e203ee36a"),
            EMPTY_SHA256,
        )
        == b""
    )


def test_random_nonces_differ():
    env = Envelope(MasterKey.generate(), "job")
    a = env.seal("s", "k", 0, b"x", ANON)
    b = env.seal("s", "k", 0, b"x", ANON)
    assert a.nonce != b.nonce and len(a.nonce) == 12


@pytest.mark.parametrize(
    "change",
    [
        {"shard": "shard-000001"},
        {"key": "other"},
        {"face": 1},
        {"face": -1},
        {"anon_sha256": EMPTY_SHA256},
    ],
)
def test_moved_or_repaired_row_does_not_open(change):
    env = Envelope(MasterKey(MASTER), "job-1")
    where = {"shard": "shard-000000", "key": "k1", "face": 0, "anon_sha256": ANON}
    box = env.seal(where["shard"], where["key"], where["face"], b"secret", where["anon_sha256"])
    moved = where | change
    with pytest.raises(DecryptionError) as err:
        env.open(
            moved["shard"],
            moved["key"],
            moved["face"],
            box.nonce,
            box.ciphertext,
            moved["anon_sha256"],
        )
    assert "secret" not in str(err.value)


def test_other_job_or_key_or_flipped_byte_does_not_open():
    env = Envelope(MasterKey(MASTER), "job-1")
    box = env.seal("s", "k", 0, b"secret", ANON)
    with pytest.raises(DecryptionError):
        Envelope(MasterKey(MASTER), "job-2").open("s", "k", 0, box.nonce, box.ciphertext, ANON)
    with pytest.raises(DecryptionError):
        Envelope(MasterKey.generate(), "job-1").open("s", "k", 0, box.nonce, box.ciphertext, ANON)
    for i in (0, len(box.ciphertext) - 1):
        flipped = bytearray(box.ciphertext)
        flipped[i] ^= 1
        with pytest.raises(DecryptionError):
            env.open("s", "k", 0, box.nonce, bytes(flipped), ANON)
    with pytest.raises(DecryptionError):
        env.open("s", "k", 0, box.nonce[:-1], box.ciphertext, ANON)


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
    for bad in ({"face": -2}, {"face": True}, {"anon_sha256": "ABC"}, {"key": ""}):
        args = {"job_id": "j", "shard": "s", "key": "k", "face": 0, "anon_sha256": ANON} | bad
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
