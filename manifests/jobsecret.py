"""What the job secret (and a run's transit key) seal: every use of AES-GCM outside escrow.

The job secret (``--secret-file``, 32 bytes) names samples and hides their sources:

- sample ids (``__key__``): ``HMAC-SHA256(secret, source URI)``, hex, first 32 characters;
- the secret's public fingerprint: ``HMAC-SHA256(secret, "faceveil shard-secret fingerprint")``,
  first 16 hex characters (tells two runs apart, reveals nothing);
- sealed source URIs (a shard's ``KEY.src`` member, a plan's ``src``): AES-256-GCM under
  ``HKDF-SHA256(secret, info="faceveil source-uri v1")``, AAD the sample id, nonce
  ``HMAC(secret, "uri-nonce:" + sample id)[:12]``;
- sealed plan checks (where a source is, its size and sha256): AES-256-GCM under
  ``HKDF-SHA256(secret, info="faceveil plan-check v1")``, AAD the sample id, nonce
  ``HMAC(secret, "plan-check-nonce:" + plaintext)[:12]``.

Both nonces are derived, so plans and shards are byte-reproducible; a nonce repeats only with
the same plaintext. A run's *transit* key (random, in memory) seals pickled objects that carry
original pixels between processes (:func:`seal_object`), so what Ray may spill is ciphertext.
Blobs are ``nonce (12) | ciphertext + tag``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceveil.manifests.canonical import canonical_json

SAMPLE_ID_CHARS = 32
_NONCE = 12


def sample_id(secret: bytes, uri: str) -> str:
    """Pseudonymous sample id (``__key__``): HMAC-SHA256 of the source URI under the job
    secret, 32 hex characters."""
    return hmac.new(secret, uri.encode(), hashlib.sha256).hexdigest()[:SAMPLE_ID_CHARS]


def secret_fingerprint(secret: bytes) -> str:
    """A public check value that tells whether two runs used the same secret (not the secret)."""
    return hmac.new(secret, b"faceveil shard-secret fingerprint", hashlib.sha256).hexdigest()[:16]


def _cipher(secret: bytes, info: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret))


def _open(cipher: AESGCM, blob: bytes, aad: bytes | None, what: str) -> bytes:
    try:
        return cipher.decrypt(bytes(blob[:_NONCE]), bytes(blob[_NONCE:]), aad)
    except InvalidTag:
        raise ValueError(f"{what} does not open with this key") from None


def seal_uri(secret: bytes, sample_id: str, uri: str) -> bytes:
    """The source URI of sample ``sample_id`` sealed, so shards and plans hold no file names."""
    nonce = hmac.new(secret, b"uri-nonce:" + sample_id.encode(), hashlib.sha256).digest()[:_NONCE]
    cipher = _cipher(secret, b"faceveil source-uri v1")
    return nonce + cipher.encrypt(nonce, uri.encode(), sample_id.encode())


def open_uri(secret: bytes, sample_id: str, blob: bytes) -> str:
    """The source URI sealed by :func:`seal_uri`; ValueError with the wrong secret or sample id."""
    cipher = _cipher(secret, b"faceveil source-uri v1")
    return _open(cipher, blob, sample_id.encode(), "a source URI (job secret)").decode()


def seal_check(secret: bytes, sample_id: str, doc: dict) -> bytes:
    """``doc`` (where the source is, its size and sha256) sealed for sample ``sample_id``."""
    plain = canonical_json(doc)
    nonce = hmac.new(secret, b"plan-check-nonce:" + plain, hashlib.sha256).digest()[:_NONCE]
    return nonce + _cipher(secret, b"faceveil plan-check v1").encrypt(
        nonce, plain, sample_id.encode()
    )


def open_check(secret: bytes, sample_id: str, blob: bytes) -> dict:
    """The document sealed by :func:`seal_check`; ValueError with the wrong secret or sample id."""
    cipher = _cipher(secret, b"faceveil plan-check v1")
    return json.loads(_open(cipher, blob, sample_id.encode(), "a plan entry (job secret)"))


def seal_object(key: bytes, obj: object) -> bytes:
    """``obj`` pickled and sealed under a run's transit ``key``."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), None)


def open_object(key: bytes, blob: bytes) -> object:
    """The object :func:`seal_object` sealed; ValueError when ``blob`` was not sealed under
    ``key`` or was changed (nothing is unpickled then)."""
    plain = _open(AESGCM(key), blob, None, "a sealed object (this run's transit key)")
    return pickle.loads(plain)  # authenticated: written by this run's own processes
