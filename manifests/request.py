"""A restore, reshare or rekey request: what it names, its signature, its requester key file.

A request (``req.json``, public, signed) holds ``request_id`` (32 hex), ``job_id``, ``revision``
(of ``escrow.json``), ``purpose`` (``restore``, ``reshare`` or ``rekey``), ``samples`` (each
``{shard, key, escrow_id, wrapped}``: the sample's wrapped data key as its manifest holds it; for
a restore, only the samples asked for; for a rekey, every sample), ``new_policy`` (the custodians
and threshold, or KMS key, a reshare or rekey moves to; absent for a restore), ``reason``,
``requester``, ``created``, ``expires``, ``log_tail`` (the audit log's tail when the request was
made), ``ephemeral_x25519`` and ``requester_ed25519`` (public halves of two keys made for this
request only), ``escrow`` (a copy of ``escrow.json``, so custodians can approve offline), and
``signature`` (Ed25519 by the requester key over ``"faceveil/request/v4|"`` + canonical JSON of
every other field). The private halves go to a passphrase-protected requester key file. The
request's identity is the sha256 of its canonical JSON, signature included. What approvals do
with a request is :mod:`manifests.restore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from faceveil.manifests import signed
from faceveil.manifests.audit import utc_now
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import (
    ScryptParams,
    b64d,
    b64e,
)
from faceveil.manifests.errors import CustodianKeyError, RestoreError
from faceveil.manifests.escrow import (
    SHARD_NAME,
    Escrow,
    Policy,
    ShamirPolicy,
    policy_from_json,
)
from faceveil.manifests.signed import (
    REQUEST_ID,
    RequestFile,
    new_request_fields,
    open_request_key_file,
    request_key_file,
)

log = logging.getLogger(__name__)

REQUEST_FORMAT = "faceveil-restore-request/4"
REQUEST_KEY_FORMAT = "faceveil-request-key/2"
PURPOSES = ("restore", "reshare", "rekey")
_REQUEST_LABEL = b"faceveil/request/v4|"
_SAMPLE = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class SampleRef:
    """One sample a request names: where it is, its key epoch, and its wrapped data key
    (empty for a KMS escrow)."""

    shard: str
    sample_id: str
    escrow_id: str
    wrapped: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not SHARD_NAME.fullmatch(self.shard) or not _SAMPLE.fullmatch(self.sample_id):
            raise RestoreError("a requested sample has a malformed shard or sample id")

    def to_json(self) -> dict:
        """The sample's entry in a request."""
        return {
            "shard": self.shard,
            "key": self.sample_id,
            "escrow_id": self.escrow_id,
            "wrapped": b64e(self.wrapped),
        }

    @classmethod
    def from_json(cls, doc: dict) -> SampleRef:
        """Parse :meth:`to_json`."""
        return cls(
            str(doc["shard"]), str(doc["key"]), str(doc["escrow_id"]), b64d(doc["wrapped"], "wrap")
        )


@dataclass(frozen=True)
class RestoreRequest(RequestFile):
    """A signed request (see the module docstring)."""

    request_id: str
    job_id: str
    revision: str
    purpose: str
    samples: tuple[SampleRef, ...]
    new_policy: Policy | None
    reason: str
    requester: str
    created: str
    expires: str
    log_tail: str | None
    ephemeral_x25519: bytes = field(repr=False)
    requester_ed25519: bytes = field(repr=False)
    escrow: Escrow = field(repr=False)
    signature: bytes = field(default=b"", repr=False)
    FORMAT: ClassVar[str] = REQUEST_FORMAT

    def __post_init__(self) -> None:
        if not REQUEST_ID.fullmatch(self.request_id):
            raise RestoreError("a request_id is 32 lowercase hex characters")
        if self.purpose not in PURPOSES:
            raise RestoreError(f"purpose must be one of {PURPOSES}")
        if (self.job_id, self.revision) != (self.escrow.job_id, self.escrow.revision):
            raise RestoreError("the request's escrow copy is not of its job or revision")
        if (self.purpose == "restore") == (self.new_policy is not None):
            raise RestoreError("a reshare or rekey names its new policy; a restore names none")
        if self.purpose == "reshare" and not isinstance(self.new_policy, ShamirPolicy):
            raise RestoreError("a reshare moves the key to custodians (a new Shamir policy)")
        if self.purpose == "restore" and not self.samples:
            raise RestoreError("a restore request names at least one sample")
        keys = [(s.shard, s.sample_id) for s in self.samples]
        if len(set(keys)) != len(keys) or len({s.sample_id for s in self.samples}) != len(keys):
            raise RestoreError("a request names each sample once")
        for ref in self.samples:
            self.escrow.epoch(ref.escrow_id)

    def unsigned_doc(self) -> dict:
        """Every field but the signature."""
        return self.head() | {
            "purpose": self.purpose,
            "samples": [s.to_json() for s in self.samples],
            "new_policy": None if self.new_policy is None else self.new_policy.to_json(),
            "reason": self.reason,
            "requester": self.requester,
            "created": self.created,
            "expires": self.expires,
            "log_tail": self.log_tail,
            "ephemeral_x25519": b64e(self.ephemeral_x25519),
            "requester_ed25519": b64e(self.requester_ed25519),
            "escrow": self.escrow.to_json(),
        }

    def to_json(self) -> dict:
        """The ``req.json`` document."""
        return self.unsigned_doc() | {"signature": b64e(self.signature)}

    def samples_sha256(self) -> str:
        """sha256 over the (shard, key) list, as audit entries record it."""
        listed = sorted([s.shard, s.sample_id] for s in self.samples)
        return hashlib.sha256(canonical_json(listed)).hexdigest()

    def check_signature(self) -> None:
        """RestoreError unless the requester key signed this request."""
        try:
            Ed25519PublicKey.from_public_bytes(self.requester_ed25519).verify(
                self.signature, _REQUEST_LABEL + canonical_json(self.unsigned_doc())
            )
        except (InvalidSignature, ValueError):
            raise RestoreError(
                "the request's signature does not verify: an altered request"
            ) from None

    @classmethod
    def loads(cls, data: bytes | str) -> RestoreRequest:
        """Parse and signature-check ``req.json``; RestoreError if malformed or altered."""
        request = cls._from_file(data, _request_fields)
        request.check_signature()
        return request


def _request_fields(doc: dict) -> dict:
    policy = doc["new_policy"]
    return doc | {
        "samples": tuple(SampleRef.from_json(s) for s in doc["samples"]),
        "new_policy": None if policy is None else policy_from_json(policy),
        "ephemeral_x25519": b64d(doc["ephemeral_x25519"], "ephemeral key", 32),
        "requester_ed25519": b64d(doc["requester_ed25519"], "requester key", 32),
        "signature": b64d(doc["signature"], "signature", 64),
        "escrow": Escrow.loads(json.dumps(doc["escrow"])),
    }


@dataclass(frozen=True)
class RequestKeys:
    """The requester's private keys of one request: X25519 (opens partials), Ed25519 (signs)."""

    x25519: X25519PrivateKey = field(repr=False)
    ed25519: Ed25519PrivateKey = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class RequestSpec(signed.RequestSpec):
    """What a request asks for (see :class:`RestoreRequest`): ``samples`` are
    :class:`SampleRef`; a reshare or rekey also names its ``new_policy`` (by keyword)."""

    new_policy: Policy | None = None
    log_tail: str | None = None


def create_request(
    escrow: Escrow,
    spec: RequestSpec,
    passphrase: str,
    clock: Callable[[], datetime] = utc_now,
    params: ScryptParams | None = None,
) -> tuple[RestoreRequest, bytes]:
    """A new signed request and its requester key file (bytes; write with mode 0600)."""
    keys = RequestKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
    unsigned = RestoreRequest(
        **new_request_fields(escrow, spec, clock()),
        purpose=spec.purpose,
        samples=tuple(spec.samples),
        new_policy=spec.new_policy,
        log_tail=spec.log_tail,
        ephemeral_x25519=keys.x25519.public_key().public_bytes_raw(),
        requester_ed25519=keys.ed25519.public_key().public_bytes_raw(),
        escrow=escrow,
    )
    signature = keys.ed25519.sign(_REQUEST_LABEL + canonical_json(unsigned.unsigned_doc()))
    request = replace(unsigned, signature=signature)
    secret = keys.x25519.private_bytes_raw() + keys.ed25519.private_bytes_raw()
    key_file = request_key_file(REQUEST_KEY_FORMAT, request, secret, passphrase, params)
    log.info(
        "request %s created (%s, %d samples)", request.request_id, spec.purpose, len(spec.samples)
    )
    return request, key_file


def load_request_key(request: RestoreRequest, key_file: bytes, passphrase: str) -> RequestKeys:
    """Decrypt the requester key file of ``request``."""
    secret = open_request_key_file(REQUEST_KEY_FORMAT, request, key_file, passphrase)
    if len(secret) != 64:
        raise CustodianKeyError("wrong passphrase or damaged key file")
    keys = RequestKeys(
        X25519PrivateKey.from_private_bytes(secret[:32]),
        Ed25519PrivateKey.from_private_bytes(secret[32:]),
    )
    pair = (
        keys.x25519.public_key().public_bytes_raw(),
        keys.ed25519.public_key().public_bytes_raw(),
    )
    if pair != (request.ephemeral_x25519, request.requester_ed25519):
        raise RestoreError("the requester key file does not match the request")
    return keys


def check_request(
    escrow: Escrow, request: RestoreRequest, purpose: str, now: datetime | None = None
) -> None:
    """RestoreError unless ``request`` is signed, for this job, escrow revision and purpose,
    unexpired, and its escrow copy is ``escrow`` exactly."""
    request.check_signature()
    request.check_scope(escrow, purpose, now)
