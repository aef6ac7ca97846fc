"""Reading ``escrow.json`` of format 2 (earlier releases): one escrowed master key per key
epoch, split M-of-N to custodians or wrapped by AWS KMS, all under one policy.

This module only reads and recovers (so that such outputs stay restorable); nothing writes this
format any more. Recovering a master key opens every sample of its epoch: that is why format 3
(:mod:`manifests.escrow`) replaced it.

Key epochs
    Each run of a job (the first run and every ``--resume``) makes its own master key, because
    a resumed run cannot get the earlier key back without M custodians or KMS. Each such key is
    one *epoch* of ``escrow.json``, named by its ``escrow_id``; key manifests record the epoch
    that sealed them (see :mod:`manifests.keymanifest`). Every epoch is escrowed under the same
    policy (custodians and threshold, or KMS key): a resume copies the policy of the job's first
    epoch, a reshare re-splits every epoch to the new custodians, and a rekey replaces all
    epochs by one. An epoch keeps its ``escrow_id`` across reshares (it names a master key); the
    file's ``revision`` (random hex) changes on every change (new epoch, reshare, rekey), and
    restore requests are bound to it.

Never a key itself. The document::

    {"format": "faceveil-escrow/2", "job_id": J, "revision": hex,
     "scheme": "shamir", "threshold": M, "custodians": [{name, fingerprint, x25519, ed25519}],
     -- or --  "scheme": "kms", "key_arn": ARN,
     "epochs": [{"escrow_id": random hex,
                 "key_check": HMAC-SHA256(master, "faceveil/key-check/v1|" + J) hex,
                 "audit_key": {"public": b64 Ed25519 job signing key, "sealed": b64(nonce + GCM)},
                 "shares": [{fingerprint, sealed}]      (shamir, one per custodian)
                 -- or -- "wrapped_key": b64 KMS ciphertext blob (kms)}, ...]}

``shamir``: in each epoch, share ``i`` (x = i+1) of that epoch's master key is sealed to custodian
``i``'s X25519 key with context ``"escrow-share"`` and AAD = the canonical JSON of the epoch's
*header* (:meth:`Epoch.header`: job id, escrow id, key check, scheme, audit public key, threshold
and custodian fingerprints) and the custodian's fingerprint, so a share only opens inside the
epoch it was made for.

``kms``: each epoch's master key is wrapped with an EncryptionContext binding
``faceveil:job_id``, ``faceveil:escrow_id``, ``faceveil:purpose`` (``master-key``) and
``faceveil:audit_key`` (the epoch's job signing key id).

Each epoch's job signing key (Ed25519, signs that run's audit entries) is sealed under
``HKDF(master, salt=job_id, info="faceveil/audit-key-wrap/v1")`` of the epoch's master key, so
whoever recovers that key (M custodians, or KMS access) can sign as that run, and nobody else
can. The first epoch's key is the job's long-lived signing key: entries written after recovery
(restore, reshare, rekey) are signed with it, and a rekey carries it into the new epoch.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from faceveil.manifests import shamir
from faceveil.manifests.audit import key_id
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    b64d,
    b64e,
    open_sealed,
)
from faceveil.manifests.envelope import MasterKey
from faceveil.manifests.errors import CustodianKeyError, EscrowError, ShareError
from faceveil.manifests.escrow import EpochList, KmsClient, escrow_header, kms_call

log = logging.getLogger(__name__)

ESCROW_FORMAT = "faceveil-escrow/2"
EPOCH_FORMAT = "faceveil-escrow-epoch/1"
SHARE_CONTEXT = "escrow-share"
_AUDIT_WRAP_INFO = b"faceveil/audit-key-wrap/v1"
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Epoch:
    """One key epoch of ``escrow.json``: a master key escrowed under the job's policy."""

    job_id: str
    escrow_id: str
    key_check: str
    scheme: str
    audit_public: bytes
    audit_sealed: bytes
    threshold: int = 0
    custodians: tuple[CustodianPublic, ...] = ()
    shares: tuple[bytes, ...] = ()
    key_arn: str = ""
    wrapped_key: bytes = b""

    def header(self) -> dict:
        """The fields every sealed share of this epoch is bound to."""
        return {
            "format": EPOCH_FORMAT,
            "job_id": self.job_id,
            "escrow_id": self.escrow_id,
            "key_check": self.key_check,
            "scheme": self.scheme,
            "audit_public": b64e(self.audit_public),
            "threshold": self.threshold,
            "custodians": [c.fingerprint for c in self.custodians],
        }

    def policy(self) -> tuple:
        """What all epochs of one escrow share: scheme, threshold, custodians, KMS key."""
        return self.scheme, self.threshold, self.custodians, self.key_arn

    def share_aad(self, fingerprint: str) -> bytes:
        """AAD of the share sealed to the custodian with ``fingerprint``."""
        return canonical_json({"escrow": self.header(), "fingerprint": fingerprint})

    def kms_context(self) -> dict[str, str]:
        """EncryptionContext of the KMS-wrapped master key."""
        return {
            "faceveil:job_id": self.job_id,
            "faceveil:escrow_id": self.escrow_id,
            "faceveil:purpose": "master-key",
            "faceveil:audit_key": key_id(self.audit_public),
        }

    def to_json(self) -> dict:
        """The epoch's entry of ``escrow.json`` (the policy is stored once, outside it)."""
        doc: dict = {
            "escrow_id": self.escrow_id,
            "key_check": self.key_check,
            "audit_key": {"public": b64e(self.audit_public), "sealed": b64e(self.audit_sealed)},
        }
        if self.scheme == "shamir":
            doc["shares"] = [
                {"fingerprint": c.fingerprint, "sealed": b64e(s)}
                for c, s in zip(self.custodians, self.shares, strict=True)
            ]
        else:
            doc["wrapped_key"] = b64e(self.wrapped_key)
        return doc

    def check(self, master: MasterKey) -> None:
        """Raise EscrowError unless ``master`` is this epoch's key (by its key-check value)."""
        if not secrets.compare_digest(master.check_value(self.job_id), self.key_check):
            raise EscrowError(
                f"the recovered key does not match the key-check value of epoch "
                f"{self.escrow_id} (wrong, stale or too few shares)"
            )

    def open_share(self, custodian: CustodianPrivate) -> shamir.Share:
        """Decrypt this epoch's share sealed to ``custodian``."""
        if self.scheme != "shamir":
            raise EscrowError("this escrow is not a Shamir escrow")
        fp = custodian.public().fingerprint
        fingerprints = [c.fingerprint for c in self.custodians]
        if fp not in fingerprints:
            raise EscrowError(f"custodian {custodian.name!r} holds no share of this escrow")
        index = fingerprints.index(fp)
        raw = open_sealed(custodian.x25519, self.shares[index], SHARE_CONTEXT, self.share_aad(fp))
        share = shamir.Share.from_bytes(raw)
        if share.x != index + 1:
            raise EscrowError("sealed share has the wrong x-coordinate for its custodian")
        return share

    def recover(self, shares: Sequence[shamir.Share]) -> MasterKey:
        """Combine at least ``threshold`` distinct shares of this epoch and check the result."""
        if self.scheme != "shamir":
            raise EscrowError("this escrow is not a Shamir escrow")
        if len(shares) < self.threshold:
            raise EscrowError(f"{len(shares)} shares given; this escrow needs {self.threshold}")
        try:
            secret = shamir.combine(shares)
        except ShareError as exc:
            raise EscrowError(f"shares do not combine: {exc}") from None
        master = MasterKey(secret)
        self.check(master)
        return master

    def unwrap_kms(self, kms: KmsClient) -> MasterKey:
        """Ask KMS to unwrap this epoch's master key (needs kms:Decrypt on ``key_arn``)."""
        if self.scheme != "kms":
            raise EscrowError("this escrow is not a KMS escrow")
        reply = kms_call(
            kms,
            "decrypt",
            CiphertextBlob=self.wrapped_key,
            KeyId=self.key_arn,
            EncryptionContext=self.kms_context(),
        )
        try:
            master = MasterKey(reply["Plaintext"])
        except (KeyError, ValueError):
            raise EscrowError("KMS returned no usable key") from None
        self.check(master)
        return master

    def audit_signing_key(self, master: MasterKey) -> Ed25519PrivateKey:
        """This epoch's job signing key, unsealed with its (already checked) master key."""
        wrap = master.derive(self.job_id.encode(), _AUDIT_WRAP_INFO)
        aad = _audit_aad(self.job_id, self.audit_public)
        try:
            seed = AESGCM(wrap).decrypt(self.audit_sealed[:12], self.audit_sealed[12:], aad)
        except InvalidTag:
            raise EscrowError("the job signing key does not open under this master key") from None
        key = Ed25519PrivateKey.from_private_bytes(seed)
        if key.public_key().public_bytes_raw() != self.audit_public:
            raise EscrowError("the sealed job signing key does not match its public key")
        return key


@dataclass(frozen=True)
class Escrow(EpochList):
    """A parsed ``escrow.json``: the job's key epochs, in order, under one policy.

    ``epochs[0]`` is the job's first epoch; its job signing key is the job's long-lived one.
    Recovered master keys travel as a mapping ``escrow_id -> MasterKey`` (every epoch).
    """

    job_id: str
    revision: str
    epochs: tuple[Epoch, ...]

    def __post_init__(self) -> None:
        self.check_epochs(self.job_id)
        if any(e.policy() != self.epochs[0].policy() for e in self.epochs):
            raise EscrowError("every key epoch of an escrow must have the same policy")

    @property
    def scheme(self) -> str:
        """``shamir`` or ``kms`` (all epochs alike)."""
        return self.epochs[0].scheme

    @property
    def threshold(self) -> int:
        """M, for a Shamir escrow."""
        return self.epochs[0].threshold

    @property
    def custodians(self) -> tuple[CustodianPublic, ...]:
        """The custodians of a Shamir escrow, in share order."""
        return self.epochs[0].custodians

    @property
    def key_arn(self) -> str:
        """The KMS key of a KMS escrow."""
        return self.epochs[0].key_arn

    def custodian(self, fingerprint: str) -> CustodianPublic:
        """The custodian with ``fingerprint``; EscrowError if it is not in this escrow."""
        for c in self.custodians:
            if c.fingerprint == fingerprint:
                return c
        raise EscrowError(f"no custodian with fingerprint {fingerprint[:16]}... in this escrow")

    def audit_keys(self) -> dict[str, bytes]:
        """Job signing key id -> Ed25519 public key, one per epoch, first epoch first."""
        return {key_id(e.audit_public): e.audit_public for e in self.epochs}

    def signers(self) -> dict[str, bytes]:
        """Audit signer id -> Ed25519 public key: every epoch's job signing key, every custodian."""
        keys = self.audit_keys()
        keys.update({key_id(c.ed25519): c.ed25519 for c in self.custodians})
        return keys

    def open_shares(self, custodian: CustodianPrivate) -> dict[str, shamir.Share]:
        """The custodian's share of every epoch, by escrow id."""
        return {e.escrow_id: e.open_share(custodian) for e in self.epochs}

    def recover(self, shares: Mapping[str, Sequence[shamir.Share]]) -> dict[str, MasterKey]:
        """Every epoch's checked master key from its shares (``escrow_id -> shares``)."""
        missing = [e.escrow_id for e in self.epochs if e.escrow_id not in shares]
        if missing:
            raise EscrowError(f"no shares given for key epoch {missing[0]}")
        return {e.escrow_id: e.recover(shares[e.escrow_id]) for e in self.epochs}

    def unwrap_kms(self, kms: KmsClient) -> dict[str, MasterKey]:
        """Every epoch's master key, unwrapped by KMS (needs kms:Decrypt on ``key_arn``)."""
        return {e.escrow_id: e.unwrap_kms(kms) for e in self.epochs}

    def check(self, masters: Mapping[str, MasterKey]) -> None:
        """EscrowError unless ``masters`` holds every epoch's key (by key-check value)."""
        for epoch in self.epochs:
            if epoch.escrow_id not in masters:
                raise EscrowError(f"no master key given for key epoch {epoch.escrow_id}")
            epoch.check(masters[epoch.escrow_id])

    def audit_signing_key(self, masters: Mapping[str, MasterKey]) -> Ed25519PrivateKey:
        """The job's long-lived signing key: the first epoch's, unsealed with its master key."""
        first = self.epochs[0]
        if first.escrow_id not in masters:
            raise EscrowError(f"no master key given for key epoch {first.escrow_id}")
        return first.audit_signing_key(masters[first.escrow_id])

    def to_json(self) -> dict:
        """The ``escrow.json`` document."""
        doc: dict = {
            "format": ESCROW_FORMAT,
            "job_id": self.job_id,
            "revision": self.revision,
            "scheme": self.scheme,
        }
        if self.scheme == "shamir":
            doc["threshold"] = self.threshold
            doc["custodians"] = [
                {k: v for k, v in c.to_json().items() if k != "format"} for c in self.custodians
            ]
        else:
            doc["key_arn"] = self.key_arn
        doc["epochs"] = [e.to_json() for e in self.epochs]
        return doc

    @classmethod
    def loads(cls, data: bytes | str) -> Escrow:
        """Parse ``escrow.json`` bytes; EscrowError on anything malformed."""
        try:
            doc = json.loads(data)
            return _from_json(doc)
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            CustodianKeyError,
            EscrowError,
        ) as exc:
            raise EscrowError(f"invalid escrow.json: {exc}") from None


def _from_json(doc: dict) -> Escrow:
    job_id, revision = escrow_header(doc, ESCROW_FORMAT)
    policy: dict = {"scheme": doc["scheme"]}
    if doc["scheme"] == "kms":
        policy["key_arn"] = str(doc["key_arn"])
    elif doc["scheme"] == "shamir":
        policy["custodians"] = tuple(CustodianPublic.from_json(c) for c in doc["custodians"])
        policy["threshold"] = int(doc["threshold"])
        _check_policy(policy["custodians"], policy["threshold"])
    else:
        raise ValueError(f"unknown scheme {doc['scheme']!r}")
    if not isinstance(doc["epochs"], list):
        raise ValueError("epochs must be a list")
    epochs = tuple(_epoch_from_json(job_id, policy, e) for e in doc["epochs"])
    return Escrow(job_id, revision, epochs)


def _epoch_from_json(job_id: str, policy: dict, doc: dict) -> Epoch:
    escrow_id = str(doc["escrow_id"])
    if not _ID.fullmatch(escrow_id):
        raise ValueError("an epoch's escrow_id must be 32 hex characters")
    common = dict(
        job_id=job_id,
        escrow_id=escrow_id,
        key_check=str(doc["key_check"]),
        audit_public=b64d(doc["audit_key"]["public"], "audit public key", 32),
        audit_sealed=b64d(doc["audit_key"]["sealed"], "sealed audit key"),
        **policy,
    )
    if policy["scheme"] == "kms":
        return Epoch(**common, wrapped_key=b64d(doc["wrapped_key"], "wrapped key"))
    entries = doc["shares"]
    if [e["fingerprint"] for e in entries] != [c.fingerprint for c in policy["custodians"]]:
        raise ValueError(f"the shares of epoch {escrow_id} do not match the custodian list")
    return Epoch(**common, shares=tuple(b64d(e["sealed"], "sealed share") for e in entries))


def _check_policy(custodians: Sequence[CustodianPublic], threshold: int) -> None:
    n = len(custodians)
    if not 2 <= threshold <= n <= shamir.MAX_SHARES:
        raise EscrowError(f"need 2 <= threshold ({threshold}) <= custodians ({n}) <= 255")
    if len({c.fingerprint for c in custodians}) != n or len({c.name for c in custodians}) != n:
        raise EscrowError("custodians must be distinct (by name and by key)")


def _audit_aad(job_id: str, public: bytes) -> bytes:
    return canonical_json({"job_id": job_id, "audit_public": b64e(public), "v": 1})
