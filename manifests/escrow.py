"""The job's ``escrow.json`` (format 3): per key epoch, an escrow *public* key whose private
scalar exists only as M-of-N custodian shares, or a KMS key that wraps per-shard data keys.

No key that opens anything is ever rebuilt: a restore gets, per approved sample, M custodians'
partial decryptions of that sample's wrapped data key (:mod:`manifests.threshold`), so approvals
of one request open exactly the samples it lists (:mod:`manifests.restore`).

Policy (held once, for every epoch): :class:`ShamirPolicy` (threshold M, custodians in share
order) or :class:`KmsPolicy` (a KMS key ARN).

Key epochs
    Each run of a job (first run and every ``--resume``) gets its own epoch, named by a random
    ``escrow_id``, because nobody can (or may) rebuild an earlier epoch's key to go on sealing
    under it. ``revision`` (random hex) changes with every change of the file; requests are
    bound to it.

The document::

    {"format": "faceveil-escrow/3", "job_id": J, "revision": hex, "scheme": "shamir",
     "threshold": M, "custodians": [{name, fingerprint, x25519, ed25519}],
     "epochs": [{"escrow_id": hex, "public_key": b64, "public_shares": [b64, ...],
                 "shares": [{"fingerprint": F, "parts": [{"source": S, "sealed": b64}]}]}]}
    -- or --  "scheme": "kms", "key_arn": ARN, "epochs": [{"escrow_id": hex}]

A custodian's share of an epoch is the sum of its *parts*, each a scalar sealed to the
custodian's X25519 key (context ``escrow-share/v3``, AAD: the epoch header and the part's
fingerprint and source). A freshly split epoch has one part per custodian (``source`` 0,
coefficient 1). An epoch reshared by custodians (who never rebuild the key) has one part per
old custodian ``i`` who took part, ``source = i``; the part's coefficient is the Lagrange
coefficient at 0 of ``i`` among the sources (:func:`manifests.threshold.lagrange`). Opening a
share checks it against its public share, and loading checks that every public share lies on
one polynomial through the public key.

KMS: no epoch key. Each shard's data key is a separate KMS data key (``GenerateDataKey``) with
encryption context ``faceveil:job_id``, ``faceveil:escrow_id`` and ``faceveil:shard``; its
ciphertext blob sits in that shard's key manifest, so a restore decrypts only the shards it
needs and KMS logs each one.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from faceveil.manifests import threshold
from faceveil.manifests.canonical import JsonFile, canonical_json
from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    b64d,
    b64e,
    open_sealed,
    seal_to,
)
from faceveil.manifests.errors import CustodianKeyError, EscrowError

log = logging.getLogger(__name__)

ESCROW_FORMAT = "faceveil-escrow/3"
EPOCH_FORMAT = "faceveil-escrow-epoch/3"
LABEL_FORMAT = "faceveil-sample-label/1"
SHARE_CONTEXT = "escrow-share/v3"
_ARN = re.compile(r"arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/.+")
_ID = re.compile(r"[0-9a-f]{32}")
SHARD_NAME = re.compile(r"shard-\d{6,}")  # a shard, without extension


class KmsClient(Protocol):
    """The calls of a boto3 KMS client that escrow uses."""

    def generate_data_key(self, **kwargs: Any) -> dict:
        """``kms:GenerateDataKey`` -> {"Plaintext", "CiphertextBlob"}."""
        ...

    def decrypt(self, **kwargs: Any) -> dict:
        """``kms:Decrypt`` (CiphertextBlob, KeyId, EncryptionContext) -> {"Plaintext": ...}."""
        ...


def escrow_header(doc: dict, escrow_format: str) -> tuple[str, str]:
    """The ``job_id`` and ``revision`` of an ``escrow.json`` document of ``escrow_format``;
    ValueError if it is of another format or they are malformed (both escrow formats)."""
    if doc.get("format") != escrow_format:
        raise ValueError(f"unknown format (expected {escrow_format})")
    job_id, revision = str(doc["job_id"]), str(doc["revision"])
    if not job_id or not _ID.fullmatch(revision):
        raise ValueError("job_id must be non-empty and revision 32 hex characters")
    return job_id, revision


class EpochList(JsonFile):
    """An escrow's key epochs by id (both escrow formats: ``epochs``, first epoch first), and
    the ``escrow.json`` bytes of its ``to_json()``."""

    epochs: tuple[Any, ...]

    def check_epochs(self, job_id: str) -> None:
        """EscrowError unless there is at least one epoch, no two share an id and every one is
        of the job ``job_id``."""
        if not self.epochs:
            raise EscrowError("an escrow holds at least one key epoch")
        if len(set(self.escrow_ids)) != len(self.epochs):
            raise EscrowError("two key epochs of the escrow have the same escrow_id")
        if any(e.job_id != job_id for e in self.epochs):
            raise EscrowError("every key epoch must belong to the job")

    @property
    def escrow_ids(self) -> tuple[str, ...]:
        """The epochs' ids, first epoch first."""
        return tuple(e.escrow_id for e in self.epochs)

    def epoch(self, escrow_id: str | None) -> Any:
        """The epoch ``escrow_id``; EscrowError if this escrow holds none such."""
        for epoch in self.epochs:
            if epoch.escrow_id == escrow_id:
                return epoch
        raise EscrowError(f"escrow.json holds no key epoch {escrow_id!r}")


@dataclass(frozen=True)
class ShamirPolicy:
    """M-of-N custodians; ``custodians`` in share order (custodian i holds share i + 1)."""

    threshold: int
    custodians: tuple[CustodianPublic, ...]
    scheme = "shamir"

    def __post_init__(self) -> None:
        object.__setattr__(self, "custodians", tuple(self.custodians))
        n = len(self.custodians)
        if not 2 <= self.threshold <= n <= threshold.MAX_SHARES:
            raise EscrowError(f"need 2 <= threshold ({self.threshold}) <= custodians ({n}) <= 255")
        if (
            len({c.fingerprint for c in self.custodians}) != n
            or len({c.name for c in self.custodians}) != n
        ):
            raise EscrowError("custodians must be distinct (by name and by key)")

    def index_of(self, fingerprint: str) -> int:
        """The share index (1..N) of the custodian with ``fingerprint``; EscrowError if none."""
        for i, c in enumerate(self.custodians, start=1):
            if c.fingerprint == fingerprint:
                return i
        raise EscrowError(f"no custodian with fingerprint {fingerprint[:16]}... in this escrow")

    def custodian(self, fingerprint: str) -> CustodianPublic:
        """The custodian with ``fingerprint``."""
        return self.custodians[self.index_of(fingerprint) - 1]

    def to_json(self) -> dict:
        """The policy's fields of ``escrow.json`` (and of audit entries and requests)."""
        return {
            "scheme": self.scheme,
            "threshold": self.threshold,
            "custodians": [
                {k: v for k, v in c.to_json().items() if k != "format"} for c in self.custodians
            ],
        }

    def describe(self) -> str:
        """``2 of 3 custodians (alice, bob, carol)``."""
        names = ", ".join(c.name for c in self.custodians)
        return f"{self.threshold} of {len(self.custodians)} custodians ({names})"


@dataclass(frozen=True)
class KmsPolicy:
    """Per-shard data keys from one KMS key."""

    key_arn: str
    scheme = "kms"

    def __post_init__(self) -> None:
        if not _ARN.fullmatch(self.key_arn):
            raise EscrowError("expected a KMS key ARN: arn:aws:kms:REGION:ACCOUNT:key/ID")

    def to_json(self) -> dict:
        """The policy's fields of ``escrow.json``."""
        return {"scheme": self.scheme, "key_arn": self.key_arn}

    def describe(self) -> str:
        """``KMS key ARN``."""
        return f"KMS key {self.key_arn}"


Policy = ShamirPolicy | KmsPolicy


def policy_from_json(doc: dict) -> Policy:
    """Parse the policy fields of ``escrow.json``, a request or an audit entry."""
    try:
        if doc["scheme"] == "kms":
            return KmsPolicy(str(doc["key_arn"]))
        if doc["scheme"] == "shamir":
            custodians = tuple(CustodianPublic.from_json(c) for c in doc["custodians"])
            return ShamirPolicy(int(doc["threshold"]), custodians)
    except (KeyError, TypeError, ValueError, CustodianKeyError) as exc:
        raise EscrowError(f"invalid escrow policy: {exc}") from None
    raise EscrowError(f"unknown escrow scheme {doc.get('scheme')!r}")


def sample_label(job_id: str, escrow_id: str, shard: str, sample_id: str) -> bytes:
    """What a sample's wrapped data key is bound to (and what a custodian approves)."""
    doc = {"v": LABEL_FORMAT, "job_id": job_id, "escrow_id": escrow_id, "shard": shard}
    return canonical_json(doc | {"key": sample_id})


def kms_context(job_id: str, escrow_id: str, shard: str) -> dict[str, str]:
    """The KMS encryption context of one shard's data key."""
    return {"faceveil:job_id": job_id, "faceveil:escrow_id": escrow_id, "faceveil:shard": shard}


@dataclass(frozen=True)
class SealedPart:
    """One sealed scalar of a custodian's share: ``source`` 0 (fresh split) or an old index."""

    source: int
    sealed: bytes


@dataclass(frozen=True)
class Epoch:
    """One key epoch: its public key, public shares and sealed shares (Shamir), or its id (KMS)."""

    job_id: str
    escrow_id: str
    policy: Policy
    public_key: bytes = b""
    public_shares: tuple[bytes, ...] = ()
    shares: tuple[tuple[SealedPart, ...], ...] = ()
    origin: str = ""

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.escrow_id):
            raise EscrowError("an epoch's escrow_id must be 32 hex characters")
        if isinstance(self.policy, ShamirPolicy):
            n = len(self.policy.custodians)
            if len(self.public_shares) != n or len(self.shares) != n:
                raise EscrowError(f"epoch {self.escrow_id} does not hold one share per custodian")
            try:
                threshold.check_public_shares(
                    self.public_key, self.public_shares, self.policy.threshold
                )
            except threshold.ThresholdError as exc:
                raise EscrowError(f"epoch {self.escrow_id}: {exc}") from None

    def header(self) -> dict:
        """The fields every sealed part of this epoch is bound to."""
        doc = {"format": EPOCH_FORMAT, "job_id": self.job_id, "escrow_id": self.escrow_id}
        doc |= self.policy.to_json()
        if isinstance(self.policy, ShamirPolicy):
            doc["public_key"] = b64e(self.public_key)
            doc["public_shares"] = [b64e(p) for p in self.public_shares]
        return doc

    def part_aad(self, fingerprint: str, source: int) -> bytes:
        """AAD of the part from ``source`` sealed to the custodian with ``fingerprint``.

        A fresh split binds the whole epoch header. A reshared epoch's parts were sealed by old
        custodians before its public shares existed: they bind the job, epoch, public key, new
        policy and the reshare request (``origin``, its sha256) instead.
        """
        if source == 0:
            return canonical_json({"epoch": self.header(), "fingerprint": fingerprint, "source": 0})
        target = ReshareTarget(
            self.job_id, self.escrow_id, self.public_key, self.policy, self.origin
        )
        return target.part_aad(fingerprint, source)

    def label(self, shard: str, sample_id: str) -> bytes:
        """The label of sample ``sample_id`` of ``shard`` sealed in this epoch."""
        return sample_label(self.job_id, self.escrow_id, shard, sample_id)

    def open_share(self, custodian: CustodianPrivate) -> threshold.ScalarShare:
        """The custodian's share of this epoch, checked against its public share."""
        if not isinstance(self.policy, ShamirPolicy):
            raise EscrowError("this escrow is not a Shamir escrow")
        fp = custodian.public().fingerprint
        index = self.policy.index_of(fp)
        parts = self.shares[index - 1]
        sources = [p.source for p in parts]
        coefficients = {0: threshold.scalar_from_int(1)}
        if sources != [0]:
            coefficients = threshold.lagrange(sources)
        total = bytes(threshold.SCALAR_SIZE)
        for part in parts:
            raw = open_sealed(
                custodian.x25519, part.sealed, SHARE_CONTEXT, self.part_aad(fp, part.source)
            )
            value = threshold.ScalarShare.from_bytes(raw).value
            total = threshold.scalar_add(
                total, threshold.scalar_mul(coefficients[part.source], value)
            )
        share = threshold.ScalarShare(index, total)
        if share.public() != self.public_shares[index - 1]:
            raise EscrowError(
                f"the share of {custodian.name!r} in epoch {self.escrow_id} does not match its "
                "public share (a tampered or foreign escrow.json)"
            )
        return share

    def to_json(self) -> dict:
        """The epoch's entry of ``escrow.json`` (the policy is stored once, outside it)."""
        doc: dict = {"escrow_id": self.escrow_id}
        if self.origin:
            doc["reshare_request"] = self.origin
        if isinstance(self.policy, ShamirPolicy):
            doc["public_key"] = b64e(self.public_key)
            doc["public_shares"] = [b64e(p) for p in self.public_shares]
            doc["shares"] = [
                {
                    "fingerprint": c.fingerprint,
                    "parts": [{"source": p.source, "sealed": b64e(p.sealed)} for p in parts],
                }
                for c, parts in zip(self.policy.custodians, self.shares, strict=True)
            ]
        return doc


@dataclass(frozen=True)
class Escrow(EpochList):
    """A parsed ``escrow.json``: the job's key epochs, in order, under one policy."""

    job_id: str
    revision: str
    policy: Policy
    epochs: tuple[Epoch, ...]

    def __post_init__(self) -> None:
        self.check_epochs(self.job_id)
        if any(e.policy != self.policy for e in self.epochs):
            raise EscrowError("every key epoch of an escrow must have its policy")

    @property
    def scheme(self) -> str:
        """``shamir`` or ``kms``."""
        return self.policy.scheme

    def with_epoch(self, epoch: Epoch) -> Escrow:
        """This escrow with ``epoch`` appended and a new revision."""
        return Escrow(self.job_id, secrets.token_hex(16), self.policy, (*self.epochs, epoch))

    def to_json(self) -> dict:
        """The ``escrow.json`` document."""
        doc = {"format": ESCROW_FORMAT, "job_id": self.job_id, "revision": self.revision}
        return doc | self.policy.to_json() | {"epochs": [e.to_json() for e in self.epochs]}

    @classmethod
    def loads(cls, data: bytes | str) -> Escrow:
        """Parse ``escrow.json``; EscrowError on anything malformed (format 2: see
        :func:`escrow_format`)."""
        try:
            doc = json.loads(data)
            job_id, revision = escrow_header(doc, ESCROW_FORMAT)
            policy = policy_from_json(doc)
            epochs = tuple(_epoch_from_json(job_id, policy, e) for e in doc["epochs"])
            return cls(job_id, revision, policy, epochs)
        except (ValueError, KeyError, TypeError, AttributeError, EscrowError) as exc:
            raise EscrowError(f"invalid escrow.json: {exc}") from None


@dataclass(frozen=True)
class ReshareTarget:
    """Where a reshare moves an epoch: the same job, epoch and public key, a new custodian
    ``policy``, under the reshare request ``request_sha256``."""

    job_id: str
    escrow_id: str
    public_key: bytes
    policy: Policy
    request_sha256: str

    def part_aad(self, fingerprint: str, source: int) -> bytes:
        """AAD of the part old custodian ``source`` seals to the new one with ``fingerprint``."""
        return canonical_json(
            {
                "format": EPOCH_FORMAT,
                "job_id": self.job_id,
                "escrow_id": self.escrow_id,
                "public_key": b64e(self.public_key),
                "policy": self.policy.to_json(),
                "reshare_request": self.request_sha256,
                "fingerprint": fingerprint,
                "source": source,
            }
        )


def escrow_format(data: bytes | str) -> str:
    """The ``format`` of an ``escrow.json`` (format 2 is the master-key escrow of earlier
    releases, read by :mod:`manifests.escrow_v2`)."""
    try:
        return str(json.loads(data)["format"])
    except (ValueError, KeyError, TypeError):
        raise EscrowError("escrow.json is not a faceveil escrow") from None


def _epoch_from_json(job_id: str, policy: Policy, doc: dict) -> Epoch:
    escrow_id = str(doc["escrow_id"])
    if isinstance(policy, KmsPolicy):
        return Epoch(job_id, escrow_id, policy)
    entries = doc["shares"]
    if [e["fingerprint"] for e in entries] != [c.fingerprint for c in policy.custodians]:
        raise ValueError(f"the shares of epoch {escrow_id} do not match the custodian list")
    shares = tuple(
        tuple(SealedPart(int(p["source"]), b64d(p["sealed"], "sealed share")) for p in e["parts"])
        for e in entries
    )
    public_shares = tuple(b64d(p, "public share", 32) for p in doc["public_shares"])
    public_key = b64d(doc["public_key"], "public key", 32)
    origin = str(doc.get("reshare_request", ""))
    return Epoch(job_id, escrow_id, policy, public_key, public_shares, shares, origin)


def new_epoch(
    job_id: str,
    policy: Policy,
    escrow_id: str | None = None,
    randbytes: threshold.RandBytes | None = None,
) -> Epoch:
    """A new key epoch under ``policy``; for Shamir a fresh escrow key, split and sealed to the
    custodians, its private scalar gone when this returns."""
    escrow_id = escrow_id or secrets.token_hex(16)
    if isinstance(policy, KmsPolicy):
        return Epoch(job_id, escrow_id, policy)
    key = threshold.split_new_key(len(policy.custodians), policy.threshold, randbytes)
    base = Epoch(job_id, escrow_id, policy, key.public, key.public_shares, _blank(policy))
    sealed = tuple(
        (
            SealedPart(
                0, seal_to(c.x25519, s.to_bytes(), SHARE_CONTEXT, base.part_aad(c.fingerprint, 0))
            ),
        )
        for c, s in zip(policy.custodians, key.shares, strict=True)
    )
    log.info("key epoch %s: escrow key split %s", escrow_id, policy.describe())
    return replace(base, shares=sealed)


def _blank(policy: ShamirPolicy) -> tuple[tuple[SealedPart, ...], ...]:
    return tuple((SealedPart(0, b""),) for _ in policy.custodians)


def create_escrow(
    job_id: str, policy: Policy, randbytes: threshold.RandBytes | None = None
) -> Escrow:
    """A one-epoch escrow under ``policy``."""
    return Escrow(
        job_id, secrets.token_hex(16), policy, (new_epoch(job_id, policy, None, randbytes),)
    )


def add_epoch(escrow: Escrow) -> Escrow:
    """``escrow`` plus a new epoch under the same policy (a resumed run)."""
    return escrow.with_epoch(new_epoch(escrow.job_id, escrow.policy))


def make_kms_client(key_arn: str, endpoint_url: str | None = None) -> KmsClient:
    """A boto3 KMS client in the ARN's region (``endpoint_url`` or boto3's env settings)."""
    import boto3

    match = _ARN.fullmatch(key_arn)
    if not match:
        raise EscrowError("expected a KMS key ARN: arn:aws:kms:REGION:ACCOUNT:key/ID")
    return boto3.client("kms", region_name=match.group(1), endpoint_url=endpoint_url)


def kms_call(kms: KmsClient, op: str, **kwargs: Any) -> dict:
    """One KMS call; its errors become one EscrowError naming the operation and error code."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return getattr(kms, op)(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise EscrowError(f"KMS {op} failed: {code}") from None
    except BotoCoreError as exc:
        raise EscrowError(f"KMS {op} failed: {type(exc).__name__}") from None


@dataclass(frozen=True)
class ShardRef:
    """One shard of one key epoch of a job: what a KMS shard key is bound to."""

    job_id: str
    escrow_id: str
    shard: str

    def __post_init__(self) -> None:
        if not SHARD_NAME.fullmatch(self.shard):
            raise ValueError("a shard name is shard-NNNNNN")

    def context(self) -> dict[str, str]:
        """The KMS encryption context of this shard's data key."""
        return kms_context(self.job_id, self.escrow_id, self.shard)


def kms_shard_key(kms: KmsClient, policy: KmsPolicy, ref: ShardRef) -> tuple[bytes, bytes]:
    """A new data key for the shard ``ref``: (plaintext, KMS ciphertext blob)."""
    reply = kms_call(
        kms,
        "generate_data_key",
        KeyId=policy.key_arn,
        NumberOfBytes=32,
        EncryptionContext=ref.context(),
    )
    return bytes(reply["Plaintext"]), bytes(reply["CiphertextBlob"])


def kms_open_shard_key(kms: KmsClient, policy: KmsPolicy, ref: ShardRef, blob: bytes) -> bytes:
    """The data key of the shard ``ref`` from its KMS blob (needs kms:Decrypt on the key)."""
    reply = kms_call(
        kms,
        "decrypt",
        CiphertextBlob=blob,
        KeyId=policy.key_arn,
        EncryptionContext=ref.context(),
    )
    key = reply.get("Plaintext", b"")
    if len(key) != 32:
        raise EscrowError("KMS returned no usable data key")
    return bytes(key)


def reshared_epoch(
    epoch: Epoch,
    policy: ShamirPolicy,
    request_sha256: str,
    public_shares: Sequence[bytes],
    parts: Sequence[tuple[SealedPart, ...]],
) -> Epoch:
    """``epoch`` under a new custodian ``policy``: the same escrow id and public key, the new
    public shares and sealed parts (see :func:`manifests.restore.assemble_reshare`)."""
    return Epoch(
        epoch.job_id,
        epoch.escrow_id,
        policy,
        epoch.public_key,
        tuple(public_shares),
        tuple(parts),
        request_sha256,
    )
