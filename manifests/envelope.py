"""Per-job master key and the AES-256-GCM envelope that seals original pixels per sample.

Keys
    The job's 256-bit :class:`MasterKey` comes from :func:`secrets.token_bytes`. Each sample gets
    its own per-sample data key ``HKDF-SHA256(ikm=master, salt=job_id, info=sample_id,
    length=32)`` (job id and sample id, the ``__key__``, UTF-8 encoded). The master key never
    appears in ``repr``/``str`` or in errors.

Sealing
    AES-256-GCM (96-bit random nonce, injectable for known-answer tests) under the per-sample
    data key.
    The associated data (AAD) is the canonical JSON, ASCII encoded, of::

        {"anon_sha256": A, "face": F, "job_id": J, "key": K, "shard": S, "v": "faceveil-aad/1"}

    with keys sorted and separators ``,`` and ``:`` and no whitespace. ``S`` is the shard name
    without extension (``shard-000000``), ``F`` the face index (``-1`` for the whole sample) and
    ``A`` the lowercase sha256 hex of the anonymized image file exactly as stored in the data
    shard (``EMPTY_SHA256``, the sha256 of ``b""``, for a quarantined sample that has no
    anonymized image). A row moved to another face, sample, shard or job, or paired with another
    anonymized image, fails to open. Key manifests store ``sha256(AAD)`` hex as ``aad_sha256``.

Payload framing (the plaintext inside one ciphertext), all integers big-endian::

    offset  size  field
    0       4     magic b"FVP1"
    4       1     kind: 1 = face_png (lossless PNG of the face region of the decoded original),
                  2 = original_file (the full original file bytes), 3 = source (URI only)
    5       4     n = length of the source URI in bytes (uint32)
    9       n     source URI, UTF-8
    9+n     rest  data bytes (empty for kind ``source``)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import struct
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.errors import DecryptionError

log = logging.getLogger(__name__)

KEY_SIZE = 32
NONCE_SIZE = 12
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
AAD_VERSION = "faceveil-aad/1"
_KEY_CHECK_LABEL = b"faceveil/key-check/v1|"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAGIC = b"FVP1"
_HEADER = struct.Struct(">4sBI")


class MasterKey:
    """A job's 256-bit master key; its bytes are never shown by ``repr``, ``str`` or errors."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise ValueError(f"a master key is exactly {KEY_SIZE} bytes")
        self._key = bytes(key)

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(KEY_SIZE))

    def reveal(self) -> bytes:
        """The raw key bytes, for escrow (Shamir split, KMS wrap) and key derivation only."""
        return self._key

    def check_value(self, job_id: str) -> str:
        """``HMAC-SHA256(master, "faceveil/key-check/v1|" + job_id)`` hex; reveals nothing."""
        return hmac.new(self._key, _KEY_CHECK_LABEL + job_id.encode(), hashlib.sha256).hexdigest()

    def derive(self, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
        """HKDF-SHA256 of the master key (used for per-sample data keys and wrapping keys)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info)
        return hkdf.derive(self._key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    __str__ = __repr__


class PayloadKind(StrEnum):
    """What a sealed plaintext holds."""

    FACE_PNG = "face_png"
    ORIGINAL_FILE = "original_file"
    SOURCE = "source"


_KIND_CODES = {PayloadKind.FACE_PNG: 1, PayloadKind.ORIGINAL_FILE: 2, PayloadKind.SOURCE: 3}
_CODE_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


@dataclass(frozen=True)
class Payload:
    """A decrypted plaintext: its kind, the source URI and the data bytes (see module docs)."""

    kind: PayloadKind
    source_uri: str = field(repr=False)
    data: bytes = field(default=b"", repr=False)

    def to_bytes(self) -> bytes:
        """The framed plaintext."""
        uri = self.source_uri.encode("utf-8")
        if self.kind is PayloadKind.SOURCE and self.data:
            raise ValueError("a 'source' payload carries no data bytes")
        return _HEADER.pack(_MAGIC, _KIND_CODES[PayloadKind(self.kind)], len(uri)) + uri + self.data

    @classmethod
    def from_bytes(cls, raw: bytes) -> Payload:
        """Parse a framed plaintext; raises :class:`DecryptionError` on a malformed frame."""
        if len(raw) < _HEADER.size:
            raise DecryptionError("decrypted payload is too short to be a faceveil payload")
        magic, code, n = _HEADER.unpack_from(raw)
        end = _HEADER.size + n
        if magic != _MAGIC or code not in _CODE_KINDS or end > len(raw):
            raise DecryptionError("decrypted payload has an unknown framing")
        try:
            uri = raw[_HEADER.size : end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("decrypted payload has a malformed source URI") from None
        return cls(_CODE_KINDS[code], uri, raw[end:])


@dataclass(frozen=True)
class SealedBox:
    """One sealed value as stored in a key-manifest row."""

    nonce: bytes
    ciphertext: bytes = field(repr=False)
    aad_sha256: str


@dataclass(frozen=True)
class RowBinding:
    """What a row's AAD binds it to: its shard, its sample (``__key__``), face index (-1 for the
    whole sample) and the sha256 of the sample's anonymized image."""

    shard: str
    sample_id: str
    face: int
    anon_sha256: str


def aad_bytes(job_id: str, shard: str, sample_id: str, face: int, anon_sha256: str) -> bytes:
    """The canonical associated data binding a row to its job, shard, sample, face and image."""
    for name, value in (("job_id", job_id), ("shard", shard), ("sample_id", sample_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    if isinstance(face, bool) or not isinstance(face, int) or face < -1:
        raise ValueError("face must be an int >= -1")
    if not isinstance(anon_sha256, str) or not _SHA256_HEX.fullmatch(anon_sha256):
        raise ValueError("anon_sha256 must be 64 lowercase hex characters")
    doc = {
        "anon_sha256": anon_sha256,
        "face": face,
        "job_id": job_id,
        "key": sample_id,
        "shard": shard,
        "v": AAD_VERSION,
    }
    return canonical_json(doc)


class Envelope:
    """Seals and opens the per-sample ciphertexts of one job under one key epoch's master key.

    ``escrow_id`` names the key epoch (the ``escrow.json`` entry) that holds ``master``; a
    :class:`~manifests.keymanifest.ShardSealer` records it in the manifests it writes. It is a
    label only: it takes no part in key derivation or AAD (each epoch has its own master key).
    Envelopes pickle (workers receive one), master key included: send them to trusted workers only.
    """

    def __init__(self, master: MasterKey, job_id: str, escrow_id: str | None = None) -> None:
        if not isinstance(master, MasterKey):
            raise TypeError("master must be a MasterKey")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job_id must be a non-empty string")
        if escrow_id is not None and (not isinstance(escrow_id, str) or not escrow_id):
            raise ValueError("escrow_id must be a non-empty string or None")
        self._master = master
        self.job_id = job_id
        self.escrow_id = escrow_id

    def __repr__(self) -> str:
        return f"Envelope(job_id={self.job_id!r}, escrow_id={self.escrow_id!r})"

    def data_key(self, sample_id: str) -> bytes:
        """The per-sample data key (AES-256):
        ``HKDF-SHA256(master, salt=job_id, info=sample_id)``."""
        return self._master.derive(self.job_id.encode("utf-8"), sample_id.encode("utf-8"))

    def _aad(self, at: RowBinding) -> bytes:
        return aad_bytes(self.job_id, at.shard, at.sample_id, at.face, at.anon_sha256)

    def seal(self, at: RowBinding, plaintext: bytes, nonce: bytes | None = None) -> SealedBox:
        """Encrypt ``plaintext`` for the row ``at`` names (shard, sample, face, image)."""
        aad = self._aad(at)
        if nonce is None:
            nonce = secrets.token_bytes(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        ciphertext = AESGCM(self.data_key(at.sample_id)).encrypt(nonce, plaintext, aad)
        return SealedBox(bytes(nonce), ciphertext, hashlib.sha256(aad).hexdigest())

    def open(self, at: RowBinding, nonce: bytes, ciphertext: bytes) -> bytes:
        """Decrypt the row ``at`` names; any mismatch raises one :class:`DecryptionError`."""
        aad = self._aad(at)
        try:
            if len(nonce) != NONCE_SIZE:
                raise InvalidTag
            return AESGCM(self.data_key(at.sample_id)).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            log.debug(
                "row did not open: shard=%s sample=%s face=%d", at.shard, at.sample_id, at.face
            )
            raise DecryptionError(
                f"row key={at.sample_id!r} face={at.face} of {at.shard!r} did not decrypt: wrong "
                "key, or the row was tampered with, moved, or paired with another image"
            ) from None
