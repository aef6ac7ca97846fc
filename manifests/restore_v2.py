"""Restore as a workflow: a request, M custodian approvals, then key recovery for that request.

A job's escrow holds one master key per key epoch (see :mod:`manifests.escrow`); a request
covers every epoch, and recovery yields every epoch's master key (``escrow_id -> MasterKey``).

1. *Request* (``req.json``, public): ``request_id``, ``job_id``, ``revision`` (of
   ``escrow.json``), ``epochs`` (the escrow ids of every epoch, in order), ``purpose``
   (``restore``, ``reshare`` or ``rekey``), ``samples`` (a list of sample ids, or ``"all"``),
   ``reason``, ``requester``, ``created``, ``expires``, ``ephemeral_x25519``: the public half
   of a key pair made for this request only, and ``escrow``: a full copy of ``escrow.json`` as
   it was when the request was made (policy, custodians and every epoch's sealed shares; sealed
   shares reveal nothing), so that a custodian can approve offline, without the output tree.
   The private half of the ephemeral key goes to a separate requester key file, passphrase-
   protected exactly like a custodian key (scrypt + AES-GCM, mode 0600), and is needed to
   apply. The request's identity is ``sha256(canonical JSON)``, escrow copy included.
2. *Approval* (``NAME.approval``): a custodian opens their share of *every* epoch from the
   request's escrow copy with their private key, seals each again to the request's ephemeral
   key (context ``restore-share``, AAD = canonical JSON of request sha256, custodian
   fingerprint and the epoch's escrow id) into ``sealed_shares`` (``[{escrow_id, sealed}]``),
   and signs the approval's *statement* (Ed25519, over ``"faceveil/approval/v2|"`` + canonical
   JSON of every field but the signature, with each sealed share replaced by its sha256:
   :meth:`Approval.statement`). The statement and signature can be copied into the audit log
   and checked there without the sealed shares. Approvals can travel over any channel: only the
   holder of the request key and passphrase can open them.
3. *Apply*: :func:`recover_masters` checks that the request belongs to this job and to this
   revision of the escrow (same epochs, and an escrow copy identical to ``escrow.json``: a
   forged copy cannot make custodians open shares that are then used on another escrow), has
   the expected purpose and has not expired, then that there are at least M approvals of
   *that* request from distinct custodians of the escrow with valid signatures, each carrying a
   share for exactly the request's epochs; only then it opens the shares, combines them per
   epoch, and checks each result against its epoch's key-check value. Each failure is one
   :class:`RestoreError` (or :class:`EscrowError` for a key that does not match), raised
   before any master key is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from faceveil.manifests.audit import utc_now
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
    b64d,
    b64e,
    open_sealed,
    seal_to,
)
from faceveil.manifests.envelope import MasterKey
from faceveil.manifests.errors import DecryptionError, RestoreError
from faceveil.manifests.escrow_v2 import Escrow
from faceveil.manifests.shamir import Share
from faceveil.manifests.signed import (
    STALE_REQUEST,
    ApprovedRequest,
    RequestFile,
    RequestSpec,
    SignedApproval,
    iso_time,
    new_request_fields,
    open_request_key_file,
    request_key_file,
    verify_signed,
)

log = logging.getLogger(__name__)

REQUEST_FORMAT = "faceveil-restore-request/3"
APPROVAL_FORMAT = "faceveil-restore-approval/3"
REQUEST_KEY_FORMAT = "faceveil-request-key/1"
PURPOSES = ("restore", "reshare", "rekey")
RESTORE_SHARE_CONTEXT = "restore-share"
_APPROVAL_LABEL = b"faceveil/approval/v2|"


@dataclass(frozen=True)
class RestoreRequest(RequestFile):
    """A request to recover the master key for one purpose (see the module docstring).

    ``escrow`` is the copy of ``escrow.json`` the request was made against.
    """

    request_id: str
    job_id: str
    revision: str
    epochs: tuple[str, ...]
    purpose: str
    samples: tuple[str, ...] | None
    reason: str
    requester: str
    created: str
    expires: str
    ephemeral_x25519: bytes = field(repr=False)
    escrow: Escrow = field(repr=False)
    FORMAT: ClassVar[str] = REQUEST_FORMAT

    def __post_init__(self) -> None:
        if (self.job_id, self.revision, self.epochs) != (
            self.escrow.job_id,
            self.escrow.revision,
            self.escrow.escrow_ids,
        ):
            raise RestoreError("the request's escrow copy is not of its job, revision or epochs")

    def to_json(self) -> dict:
        """The ``req.json`` document."""
        return self.head() | {
            "epochs": list(self.epochs),
            "purpose": self.purpose,
            "samples": "all" if self.samples is None else list(self.samples),
            "reason": self.reason,
            "requester": self.requester,
            "created": self.created,
            "expires": self.expires,
            "ephemeral_x25519": b64e(self.ephemeral_x25519),
            "escrow": self.escrow.to_json(),
        }

    @classmethod
    def loads(cls, data: bytes | str) -> RestoreRequest:
        """Parse ``req.json``; RestoreError if malformed."""
        return cls._from_file(data, _request_fields)


def _request_fields(doc: dict) -> dict:
    if doc["purpose"] not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    epochs = tuple(str(e) for e in doc["epochs"])
    if not epochs:
        raise ValueError("a request covers at least one key epoch")
    samples = doc["samples"]
    return doc | {
        "samples": None if samples == "all" else tuple(str(s) for s in samples),
        "epochs": epochs,
        "ephemeral_x25519": b64d(doc["ephemeral_x25519"], "ephemeral key", 32),
        "escrow": Escrow.loads(json.dumps(doc["escrow"])),
    }


def create_request(
    escrow: Escrow,
    spec: RequestSpec,
    passphrase: str,
    clock: Callable[[], datetime] = utc_now,
    params: ScryptParams | None = None,
) -> tuple[RestoreRequest, bytes]:
    """A new request and its requester key file (bytes; write with mode 0600). ``spec``'s
    samples are sample ids, or None for every sample (only a restore names samples)."""
    purpose, samples = spec.purpose, spec.samples
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    if purpose != "restore":
        samples = None
    eph = X25519PrivateKey.generate()
    request = RestoreRequest(
        **new_request_fields(escrow, spec, clock()),
        epochs=escrow.escrow_ids,
        purpose=purpose,
        samples=None if samples is None else tuple(samples),
        ephemeral_x25519=eph.public_key().public_bytes_raw(),
        escrow=escrow,
    )
    key_file = request_key_file(
        REQUEST_KEY_FORMAT, request, eph.private_bytes_raw(), passphrase, params
    )
    log.info("restore request %s created (purpose %s)", request.request_id, purpose)
    return request, key_file


def load_request_key(request: RestoreRequest, key_file: bytes, passphrase: str) -> X25519PrivateKey:
    """Decrypt the requester key file of ``request``."""
    secret = open_request_key_file(REQUEST_KEY_FORMAT, request, key_file, passphrase)
    key = X25519PrivateKey.from_private_bytes(secret)
    if key.public_key().public_bytes_raw() != request.ephemeral_x25519:
        raise RestoreError("the requester key file does not match the request")
    return key


@dataclass(frozen=True)
class Approval(SignedApproval):
    """One custodian's signed approval of one request, with their share of every key epoch.

    ``sealed_shares`` maps escrow id -> that epoch's share re-sealed to the request.
    """

    request_id: str
    request_sha256: str
    job_id: str
    revision: str
    custodian: str
    fingerprint: str
    time: str
    sealed_shares: Mapping[str, bytes] = field(repr=False)
    signature: bytes = field(repr=False)
    LABEL: ClassVar[bytes] = _APPROVAL_LABEL
    FORMAT: ClassVar[str] = APPROVAL_FORMAT

    def signed_doc(self) -> dict:
        """Every field but the signature (the file's content, sealed shares included)."""
        doc = asdict(self)
        del doc["signature"]
        doc["format"] = APPROVAL_FORMAT
        doc["sealed_shares"] = [
            {"escrow_id": eid, "sealed": b64e(sealed)} for eid, sealed in self.sealed_shares.items()
        ]
        return doc

    def statement(self) -> dict:
        """What the custodian signs: :meth:`signed_doc` with each sealed share replaced by its
        sha256, so that it can be recorded (and checked) in the audit log without the shares."""
        doc = self.signed_doc()
        doc["sealed_shares"] = [
            {"escrow_id": eid, "sha256": hashlib.sha256(sealed).hexdigest()}
            for eid, sealed in self.sealed_shares.items()
        ]
        return doc

    @classmethod
    def loads(cls, data: bytes | str) -> Approval:
        """Parse an ``.approval`` file; RestoreError if malformed."""

        def fields(doc: dict) -> dict:
            return doc | {"sealed_shares": _parse_sealed_shares(doc["sealed_shares"])}

        return cls._from_file(data, fields)


def _parse_sealed_shares(entries: list) -> dict[str, bytes]:
    shares = {str(e["escrow_id"]): b64d(e["sealed"], "sealed share") for e in entries}
    if len(shares) != len(entries):
        raise ValueError("two sealed shares for one key epoch")
    return shares


def _share_aad(request: RestoreRequest, fingerprint: str, escrow_id: str) -> bytes:
    return canonical_json(
        {"request_sha256": request.sha256(), "fingerprint": fingerprint, "escrow_id": escrow_id}
    )


def check_request(
    escrow: Escrow, request: RestoreRequest, purpose: str, now: datetime | None = None
) -> None:
    """RestoreError unless ``request`` is for this job, escrow revision and purpose, unexpired,
    and its escrow copy is ``escrow`` exactly (same policy and sealed shares)."""
    if request.epochs != escrow.escrow_ids:
        raise RestoreError(STALE_REQUEST)
    request.check_scope(escrow, purpose, now)


def approve(
    escrow: Escrow,
    request: RestoreRequest,
    custodian: CustodianPrivate,
    clock: Callable[[], datetime] = utc_now,
) -> Approval:
    """The custodian's approval of ``request``: their share of every epoch re-sealed to it."""
    check_request(escrow, request, request.purpose, clock())
    fp = custodian.public().fingerprint
    sealed = {
        eid: seal_to(
            request.ephemeral_x25519,
            share.to_bytes(),
            RESTORE_SHARE_CONTEXT,
            _share_aad(request, fp, eid),
        )
        for eid, share in escrow.open_shares(custodian).items()
    }
    unsigned = Approval(
        request.request_id,
        request.sha256(),
        escrow.job_id,
        escrow.revision,
        custodian.name,
        fp,
        iso_time(clock()),
        sealed,
        b"",
    )
    signature = custodian.sign(unsigned.signing_bytes())
    log.info("custodian %s approved request %s", custodian.name, request.request_id)
    return Approval(**{**asdict(unsigned), "signature": signature})


def verify_approvals(
    escrow: Escrow, request: RestoreRequest, approvals: Sequence[Approval]
) -> list[Approval]:
    """The approvals if at least M distinct, valid ones of ``request``; else RestoreError.

    Each approval must carry a share for exactly the request's key epochs.
    """
    expected = {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "job_id": escrow.job_id,
        "revision": escrow.revision,
    }

    def covers(i: int, custodian: CustodianPublic, ap: Approval) -> None:
        _check_coverage(i, custodian.name, ap, request)

    verify_signed(approvals, expected, escrow.custodian, escrow.threshold, covers)
    return list(approvals)


def _check_coverage(i: int, name: str, ap: Approval, request: RestoreRequest) -> None:
    for n, eid in enumerate(request.epochs, start=1):
        if eid not in ap.sealed_shares:
            raise RestoreError(
                f"approval {i} (by {name!r}) carries no share for key epoch {eid} "
                f"({n} of {len(request.epochs)}); ask {name!r} to approve again"
            )
    if set(ap.sealed_shares) - set(request.epochs):
        raise RestoreError(
            f"approval {i} (by {name!r}) carries a share for a key epoch that the "
            "request does not cover"
        )


Approved = ApprovedRequest[RestoreRequest, X25519PrivateKey]  # keys: the request's X25519 key


def _open_share(approved: Approved, i: int, ap: Approval, escrow_id: str, x: int) -> Share:
    aad = _share_aad(approved.request, ap.fingerprint, escrow_id)
    sealed = ap.sealed_shares[escrow_id]
    try:
        raw = open_sealed(approved.keys, sealed, RESTORE_SHARE_CONTEXT, aad)
    except DecryptionError:
        raise RestoreError(
            f"approval {i} (by {ap.custodian!r}): its share of key epoch {escrow_id} does not "
            "open with this request's key (sealed to another request or epoch, or tampered)"
        ) from None
    share = Share.from_bytes(raw)
    if share.x != x:
        raise RestoreError(f"approval {i} (by {ap.custodian!r}) carries another custodian's share")
    return share


def recover_masters(
    escrow: Escrow, approved: Approved, purpose: str, now: datetime | None = None
) -> dict[str, MasterKey]:
    """Verify the approvals of the request and rebuild every epoch's checked master key.

    Returns ``escrow_id -> MasterKey`` for every epoch of ``escrow``, first epoch first.
    """
    request, approvals = approved.request, approved.approvals
    if escrow.scheme != "shamir":
        raise RestoreError("custodian approvals apply to Shamir escrows only")
    check_request(escrow, request, purpose, now)
    fingerprints = [c.fingerprint for c in escrow.custodians]
    shares: dict[str, list[Share]] = {eid: [] for eid in escrow.escrow_ids}
    for i, ap in enumerate(verify_approvals(escrow, request, approvals), start=1):
        x = fingerprints.index(ap.fingerprint) + 1
        for eid in escrow.escrow_ids:
            shares[eid].append(_open_share(approved, i, ap, eid, x))
    masters = escrow.recover(shares)
    log.info(
        "master keys of %d key epoch(s) recovered for request %s from %d approvals",
        len(masters),
        request.request_id,
        len(approvals),
    )
    return masters
