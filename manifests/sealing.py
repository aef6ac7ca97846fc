"""Per-sample data keys: how a worker gets one without any key that opens other samples, and
how the rows of a sample are sealed under it.

Data keys
    Every sample has its own random 256-bit data key. With a Shamir escrow the worker wraps it
    to the key epoch's *public* key under the sample's label (:func:`manifests.escrow.sample_label`,
    :func:`manifests.threshold.wrap`); the wrap is stored on the sample's whole-sample row, and
    only M custodians' partial decryptions of that one wrap open it again. With KMS, the worker
    asks KMS for one data key per shard (its blob is stored in the manifest) and derives each
    sample's data key as ``HKDF-SHA256(shard key, salt=job_id, info="faceveil/kms-sample/v1|" +
    label)``. Workers hold no private escrow key and no master key.

Rows (AAD format 2)
    AES-256-GCM under the sample's data key, 96-bit random nonce. The AAD is the canonical JSON
    (sorted keys, no whitespace, ASCII) of::

        {"anon_sha256": A, "bbox": [x1, y1, x2, y2] | null, "face": F, "job_id": J, "key": K,
         "shard": S, "v": "faceveil-aad/2"}

    so a row moved to another face, sample, shard or job, re-boxed, or paired with another
    anonymized image fails to open (format 1, of earlier releases, lacked the bbox).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceveil.manifests import threshold
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.envelope import aad_bytes
from faceveil.manifests.errors import DecryptionError
from faceveil.manifests.escrow import sample_label

AAD_VERSION = "faceveil-aad/2"
NONCE_SIZE = 12
_KMS_SAMPLE_INFO = b"faceveil/kms-sample/v1|"


class RowId(Protocol):
    """What names a row inside its shard (a :class:`~manifests.keymanifest.KeyRow` is one)."""

    sample_id: str
    face: int
    bbox: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class RowName:
    """A row's name before it is sealed: sample id, face index (-1: whole sample), face box."""

    sample_id: str
    face: int
    bbox: tuple[int, int, int, int] | None = None


def row_aad(job_id: str, shard: str, row: RowId, anon_sha256: str) -> bytes:
    """The AAD (format 2) of ``row`` of ``shard``."""
    sample_id, face, bbox = row.sample_id, row.face, row.bbox
    if (face < 0) != (bbox is None):
        raise ValueError("face rows have a bbox; the whole-sample row (face -1) has none")
    base = json.loads(aad_bytes(job_id, shard, sample_id, face, anon_sha256))  # checks the fields
    doc = base | {"v": AAD_VERSION, "bbox": None if bbox is None else [int(v) for v in bbox]}
    return canonical_json(doc)


def seal_row(data_key: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of ``plaintext`` under a sample's data key."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce, AESGCM(data_key).encrypt(nonce, plaintext, aad)


def open_row(data_key: bytes, aad: bytes, nonce: bytes, ciphertext: bytes, what: str) -> bytes:
    """The plaintext of a row; one DecryptionError naming ``what`` on any mismatch."""
    try:
        if len(nonce) != NONCE_SIZE:
            raise InvalidTag
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise DecryptionError(
            f"{what} did not decrypt: wrong key, or the row was tampered with, moved, re-boxed "
            "or paired with another image"
        ) from None


def kms_data_key(shard_key: bytes, job_id: str, label: bytes) -> bytes:
    """A sample's data key under a KMS shard key."""
    hkdf = HKDF(hashes.SHA256(), 32, salt=job_id.encode(), info=_KMS_SAMPLE_INFO + label)
    return hkdf.derive(shard_key)


@dataclass(frozen=True)
class EpochSealing:
    """What a worker needs to seal under one key epoch: public values only (plus, for KMS, the
    ARN it asks for shard keys). Safe to send to every actor."""

    job_id: str
    escrow_id: str
    scheme: str
    public_key: bytes = b""
    key_arn: str = ""

    def shard_keys(self, shard: str, kms=None) -> ShardKeys:
        """The data-key source for one shard (KMS: one GenerateDataKey call, ``kms`` a client)."""
        if self.scheme == "kms":
            from faceveil.manifests.escrow import (
                KmsPolicy,
                ShardRef,
                kms_shard_key,
                make_kms_client,
            )

            client = kms or make_kms_client(self.key_arn)
            policy = KmsPolicy(self.key_arn)
            ref = ShardRef(self.job_id, self.escrow_id, shard)
            plain, blob = kms_shard_key(client, policy, ref)
            return ShardKeys(self, shard, plain, blob)
        return ShardKeys(self, shard)


@dataclass
class ShardKeys:
    """Hands out each sample's data key (and its wrap) for one shard."""

    epoch: EpochSealing
    shard: str
    shard_key: bytes = field(default=b"", repr=False)
    kms_blob: bytes = b""

    def sample(self, sample_id: str) -> tuple[bytes, bytes | None]:
        """(data key, wrapped key bytes to store, or None with KMS) of one sample."""
        label = sample_label(self.epoch.job_id, self.epoch.escrow_id, self.shard, sample_id)
        if self.epoch.scheme == "kms":
            return kms_data_key(self.shard_key, self.epoch.job_id, label), None
        data_key = secrets.token_bytes(32)
        wrapped = threshold.wrap(self.epoch.public_key, label, data_key)
        return data_key, wrapped.to_bytes()


def commitment(rows: list[tuple[str, int, str, bytes]]) -> dict:
    """A manifest's row list as committed in its marker and in the job-signed log: row and
    sample counts and ``sha256`` over the sorted ``(key, face, aad_sha256, sha256 of the sealed
    bytes)`` of every row, so a row dropped, added, moved or changed is noticed."""
    items = sorted(
        [key, face, aad, hashlib.sha256(sealed).hexdigest()] for key, face, aad, sealed in rows
    )
    digest = hashlib.sha256(
        json.dumps(items, separators=(",", ":"), ensure_ascii=True).encode()
    ).hexdigest()
    return {"rows": len(items), "samples": len({i[0] for i in items}), "sha256": digest}
