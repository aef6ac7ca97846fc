"""Restore, reshare and rekey as a workflow: a signed request, M custodian approvals, then the
release of exactly what the request names (escrow format 3, :mod:`manifests.escrow`).

1. *Request* (``req.json``, public, signed): ``request_id`` (32 hex), ``job_id``, ``revision``
   (of ``escrow.json``), ``purpose`` (``restore``, ``reshare`` or ``rekey``), ``samples`` (each
   ``{shard, key, escrow_id, wrapped}``: the sample's wrapped data key as its manifest holds it;
   for a restore, only the samples asked for; for a rekey, every sample), ``new_policy`` (the
   custodians and threshold, or KMS key, a reshare or rekey moves to; absent for a restore),
   ``reason``, ``requester``, ``created``, ``expires``, ``log_tail`` (the audit log's tail when
   the request was made), ``ephemeral_x25519`` and ``requester_ed25519`` (public halves of two
   keys made for this request only), ``escrow`` (a copy of ``escrow.json``, so custodians can
   approve offline), and ``signature`` (Ed25519 by the requester key over
   ``"faceveil/request/v4|"`` + canonical JSON of every other field). The private halves go to
   a passphrase-protected requester key file. The request's identity is the sha256 of its
   canonical JSON, signature included.
2. *Approval* (``NAME.approval``): the custodian checks the request's signature and expiry,
   opens their share of each epoch involved, and for each listed sample checks that the wrap was
   made for *that* sample (its label proof) before computing their partial decryption with a
   proof (:mod:`manifests.threshold`). The partials are sealed to the request's X25519 key
   (context ``restore-partials``, AAD: request sha256 and custodian fingerprint). For a reshare,
   the custodian instead splits their share of every epoch again for the ``new_policy`` named
   in the request, seals each new part to its new custodian, and publishes the parts' public
   values. The custodian signs a *statement* (``"faceveil/approval/v4|"`` + canonical JSON of
   every field, the sealed partials replaced by their sha256): it names the request, the log
   tail seen and what was released.
3. *Apply*: the request must be for this job and revision, with an escrow copy identical to
   ``escrow.json``, the expected purpose, unexpired, signed by its requester key; M approvals of
   *that* request from distinct custodians of the escrow with good signatures; every partial's
   proof checks against the custodian's public share (a bad one names its custodian); M good
   partials per sample combine into that sample's data key, and nothing else. No function here
   returns a key that opens a sample the request does not list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from faceveil.manifests import threshold
from faceveil.manifests.audit import utc_now
from faceveil.manifests.custodian import (
    CustodianPrivate,
    ScryptParams,
    b64d,
    b64e,
    canonical_json,
    open_sealed,
    passphrase_open,
    passphrase_seal,
    seal_to,
)
from faceveil.manifests.errors import CustodianKeyError, DecryptionError, EscrowError, RestoreError
from faceveil.manifests.escrow import (
    SHARE_CONTEXT,
    Escrow,
    Policy,
    ReshareTarget,
    SealedPart,
    ShamirPolicy,
    policy_from_json,
    reshared_epoch,
)

log = logging.getLogger(__name__)

REQUEST_FORMAT = "faceveil-restore-request/4"
APPROVAL_FORMAT = "faceveil-restore-approval/4"
REQUEST_KEY_FORMAT = "faceveil-request-key/2"
PURPOSES = ("restore", "reshare", "rekey")
PARTIALS_CONTEXT = "restore-partials"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_REQUEST_LABEL = b"faceveil/request/v4|"
_APPROVAL_LABEL = b"faceveil/approval/v4|"
_SHARD = re.compile(r"shard-\d{6,}")
_SAMPLE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class SampleRef:
    """One sample a request names: where it is, its key epoch, and its wrapped data key
    (empty for a KMS escrow)."""

    shard: str
    key: str
    escrow_id: str
    wrapped: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not _SHARD.fullmatch(self.shard) or not _SAMPLE.fullmatch(self.key):
            raise RestoreError("a requested sample has a malformed shard or sample key")

    def to_json(self) -> dict:
        """The sample's entry in a request."""
        return {
            "shard": self.shard,
            "key": self.key,
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
class RestoreRequest:
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
        keys = [(s.shard, s.key) for s in self.samples]
        if len(set(keys)) != len(keys) or len({s.key for s in self.samples}) != len(keys):
            raise RestoreError("a request names each sample once")
        for ref in self.samples:
            self.escrow.epoch(ref.escrow_id)

    def unsigned_doc(self) -> dict:
        """Every field but the signature."""
        return {
            "format": REQUEST_FORMAT,
            "request_id": self.request_id,
            "job_id": self.job_id,
            "revision": self.revision,
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

    def sha256(self) -> str:
        """The request's identity: sha256 hex of its canonical JSON."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    def samples_sha256(self) -> str:
        """sha256 over the (shard, key) list, as audit entries record it."""
        listed = sorted([s.shard, s.key] for s in self.samples)
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

    def dumps(self) -> bytes:
        """``req.json`` bytes."""
        return json.dumps(self.to_json(), indent=1).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes | str) -> RestoreRequest:
        """Parse and signature-check ``req.json``; RestoreError if malformed or altered."""
        try:
            doc = json.loads(data)
            if doc.pop("format") != REQUEST_FORMAT:
                raise ValueError("not a faceveil restore request of format 4")
            request_id = doc["request_id"]
            if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
                raise ValueError("request_id must be 32 lowercase hex characters")
            doc["samples"] = tuple(SampleRef.from_json(s) for s in doc["samples"])
            policy = doc["new_policy"]
            doc["new_policy"] = None if policy is None else policy_from_json(policy)
            doc["ephemeral_x25519"] = b64d(doc["ephemeral_x25519"], "ephemeral key", 32)
            doc["requester_ed25519"] = b64d(doc["requester_ed25519"], "requester key", 32)
            doc["signature"] = b64d(doc["signature"], "signature", 64)
            doc["escrow"] = Escrow.loads(json.dumps(doc["escrow"]))
            request = cls(**doc)
        except (ValueError, KeyError, TypeError, AttributeError, EscrowError) as exc:
            raise RestoreError(f"invalid restore request: {exc}") from None
        request.check_signature()
        return request


@dataclass(frozen=True)
class RequestKeys:
    """The requester's private keys of one request: X25519 (opens partials), Ed25519 (signs)."""

    x25519: X25519PrivateKey = field(repr=False)
    ed25519: Ed25519PrivateKey = field(repr=False)


@dataclass(frozen=True)
class RequestSpec:
    """What a request asks for (see :class:`RestoreRequest`)."""

    purpose: str
    samples: tuple[SampleRef, ...]
    reason: str
    requester: str
    new_policy: Policy | None = None
    log_tail: str | None = None
    valid_for: timedelta = timedelta(days=7)


def create_request(
    escrow: Escrow,
    spec: RequestSpec,
    passphrase: str,
    clock: Callable[[], datetime] = utc_now,
    params: ScryptParams | None = None,
) -> tuple[RestoreRequest, bytes]:
    """A new signed request and its requester key file (bytes; write with mode 0600)."""
    if not spec.reason.strip() or not spec.requester.strip():
        raise ValueError("a request needs a reason and a requester")
    keys = RequestKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
    now = clock()
    unsigned = RestoreRequest(
        request_id=secrets.token_hex(16),
        job_id=escrow.job_id,
        revision=escrow.revision,
        purpose=spec.purpose,
        samples=tuple(spec.samples),
        new_policy=spec.new_policy,
        reason=spec.reason,
        requester=spec.requester,
        created=_iso(now),
        expires=_iso(now + spec.valid_for),
        log_tail=spec.log_tail,
        ephemeral_x25519=keys.x25519.public_key().public_bytes_raw(),
        requester_ed25519=keys.ed25519.public_key().public_bytes_raw(),
        escrow=escrow,
    )
    signature = keys.ed25519.sign(_REQUEST_LABEL + canonical_json(unsigned.unsigned_doc()))
    request = replace(unsigned, signature=signature)
    header = {
        "format": REQUEST_KEY_FORMAT,
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
    }
    secret = keys.x25519.private_bytes_raw() + keys.ed25519.private_bytes_raw()
    doc = passphrase_seal(header, secret, passphrase, params)
    log.info(
        "request %s created (%s, %d samples)", request.request_id, spec.purpose, len(spec.samples)
    )
    return request, json.dumps(doc, indent=1).encode()


def load_request_key(request: RestoreRequest, key_file: bytes, passphrase: str) -> RequestKeys:
    """Decrypt the requester key file of ``request``."""
    try:
        doc = json.loads(key_file)
    except ValueError:
        raise CustodianKeyError("the requester key file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("request_sha256") != request.sha256():
        raise RestoreError("the requester key file belongs to another request")
    secret = passphrase_open(doc, passphrase, REQUEST_KEY_FORMAT)
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


# ---- approvals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReshareEpoch:
    """One old custodian's contribution to resharing one epoch: the public values of their new
    parts (one per new custodian, in the new policy's order) and the parts, each sealed to its
    new custodian."""

    escrow_id: str
    public_parts: tuple[bytes, ...]
    sealed_parts: tuple[bytes, ...] = field(repr=False)

    def to_json(self) -> dict:
        """The contribution's entry in an approval."""
        return {
            "escrow_id": self.escrow_id,
            "public_parts": [b64e(p) for p in self.public_parts],
            "sealed_parts": [b64e(p) for p in self.sealed_parts],
        }

    @classmethod
    def from_json(cls, doc: dict) -> ReshareEpoch:
        """Parse :meth:`to_json`."""
        return cls(
            str(doc["escrow_id"]),
            tuple(b64d(p, "public part", 32) for p in doc["public_parts"]),
            tuple(b64d(p, "sealed part") for p in doc["sealed_parts"]),
        )


@dataclass(frozen=True)
class Approval:
    """One custodian's signed approval of one request."""

    request_id: str
    request_sha256: str
    job_id: str
    revision: str
    purpose: str
    custodian: str
    fingerprint: str
    time: str
    log_tail: str | None
    samples_sha256: str
    sealed_partials: bytes = field(default=b"", repr=False)
    reshare: tuple[ReshareEpoch, ...] = field(default=(), repr=False)
    signature: bytes = field(default=b"", repr=False)

    def signed_doc(self) -> dict:
        """Every field but the signature (the file's content)."""
        doc = asdict(self)
        del doc["signature"]
        doc["format"] = APPROVAL_FORMAT
        doc["sealed_partials"] = b64e(self.sealed_partials)
        doc["reshare"] = [r.to_json() for r in self.reshare]
        return doc

    def statement(self) -> dict:
        """What the custodian signs: :meth:`signed_doc` with the sealed partials and the
        reshare block replaced by their sha256, small enough for the audit log."""
        doc = self.signed_doc()
        doc["sealed_partials"] = hashlib.sha256(self.sealed_partials).hexdigest()
        doc["reshare"] = hashlib.sha256(canonical_json(doc["reshare"])).hexdigest()
        return doc

    def signing_bytes(self) -> bytes:
        """The bytes the custodian's Ed25519 signature covers."""
        return _APPROVAL_LABEL + canonical_json(self.statement())

    def sha256(self) -> str:
        """sha256 hex of the approval file's bytes."""
        return hashlib.sha256(self.dumps()).hexdigest()

    def dumps(self) -> bytes:
        """The ``.approval`` file bytes."""
        doc = self.signed_doc() | {"signature": b64e(self.signature)}
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def loads(cls, data: bytes | str) -> Approval:
        """Parse an ``.approval`` file; RestoreError if malformed."""
        try:
            doc = json.loads(data)
            if doc.pop("format") != APPROVAL_FORMAT:
                raise ValueError("not a faceveil approval of format 4")
            doc["sealed_partials"] = b64d(doc["sealed_partials"], "sealed partials")
            doc["reshare"] = tuple(ReshareEpoch.from_json(r) for r in doc["reshare"])
            doc["signature"] = b64d(doc["signature"], "signature", 64)
            return cls(**doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RestoreError(f"invalid approval: {exc}") from None


def check_statement(statement: dict, signature: bytes, ed25519_public: bytes) -> None:
    """RestoreError unless ``signature`` is the custodian's over an approval ``statement``
    (as recorded in a ``restore.approve`` audit entry)."""
    try:
        Ed25519PublicKey.from_public_bytes(ed25519_public).verify(
            signature, _APPROVAL_LABEL + canonical_json(dict(statement))
        )
    except (InvalidSignature, ValueError, TypeError):
        raise RestoreError("the approval statement's signature does not verify") from None


def _partials_aad(request: RestoreRequest, fingerprint: str) -> bytes:
    return canonical_json({"request_sha256": request.sha256(), "fingerprint": fingerprint})


def check_request(
    escrow: Escrow, request: RestoreRequest, purpose: str, now: datetime | None = None
) -> None:
    """RestoreError unless ``request`` is signed, for this job, escrow revision and purpose,
    unexpired, and its escrow copy is ``escrow`` exactly."""
    request.check_signature()
    if (request.job_id, request.revision) != (escrow.job_id, escrow.revision):
        raise RestoreError(
            "the request was made for another job or another escrow (or the escrow changed "
            "since: a new key epoch, a reshare or a rekey); make a new request"
        )
    if canonical_json(request.escrow.to_json()) != canonical_json(escrow.to_json()):
        raise RestoreError(
            "the request's copy of escrow.json differs from the job's escrow.json (same "
            "revision, other policy or shares): a forged or altered request"
        )
    if request.purpose != purpose:
        raise RestoreError(f"the request is for {request.purpose!r}, not {purpose!r}")
    if (now or utc_now()) > _parse_time(request.expires):
        raise RestoreError(f"the request expired at {request.expires}")


def approve(
    request: RestoreRequest,
    custodian: CustodianPrivate,
    log_tail: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    randbytes: threshold.RandBytes | None = None,
) -> Approval:
    """The custodian's approval of ``request``: partials for exactly its samples (restore,
    rekey) or new parts for exactly its new custodians (reshare)."""
    escrow = request.escrow
    check_request(escrow, request, request.purpose, clock())
    if not isinstance(escrow.policy, ShamirPolicy):
        raise RestoreError("custodian approvals apply to Shamir escrows only")
    fp = custodian.public().fingerprint
    escrow.policy.index_of(fp)
    shares = {e.escrow_id: e.open_share(custodian) for e in escrow.epochs}
    sealed, reshare = b"", ()
    if request.purpose == "reshare":
        reshare = tuple(
            _reshare_epoch(request, e.escrow_id, shares[e.escrow_id], randbytes)
            for e in escrow.epochs
        )
    else:
        partials = b"".join(
            _partial(request, ref, shares[ref.escrow_id], randbytes).to_bytes()
            for ref in request.samples
        )
        sealed = seal_to(
            request.ephemeral_x25519, partials, PARTIALS_CONTEXT, _partials_aad(request, fp)
        )
    unsigned = Approval(
        request_id=request.request_id,
        request_sha256=request.sha256(),
        job_id=escrow.job_id,
        revision=escrow.revision,
        purpose=request.purpose,
        custodian=custodian.name,
        fingerprint=fp,
        time=_iso(clock()),
        log_tail=log_tail if log_tail is not None else request.log_tail,
        samples_sha256=request.samples_sha256(),
        sealed_partials=sealed,
        reshare=reshare,
    )
    log.info("custodian %s approved request %s", custodian.name, request.request_id)
    return replace(unsigned, signature=custodian.sign(unsigned.signing_bytes()))


def _partial(
    request: RestoreRequest,
    ref: SampleRef,
    share: threshold.ScalarShare,
    randbytes: threshold.RandBytes | None,
) -> threshold.Partial:
    epoch = request.escrow.epoch(ref.escrow_id)
    try:
        wrapped = threshold.WrappedKey.from_bytes(ref.wrapped)
        return threshold.partial_decrypt(share, wrapped, epoch.label(ref.shard, ref.key), randbytes)
    except threshold.ThresholdError as exc:
        raise RestoreError(
            f"sample {ref.key!r} of {ref.shard}: its wrapped key was not made for that sample "
            f"({exc}); not approving"
        ) from None


def _reshare_epoch(
    request: RestoreRequest,
    escrow_id: str,
    share: threshold.ScalarShare,
    randbytes: threshold.RandBytes | None,
) -> ReshareEpoch:
    policy = request.new_policy
    assert isinstance(policy, ShamirPolicy)
    epoch = request.escrow.epoch(escrow_id)
    parts = threshold.split_scalar(share.value, len(policy.custodians), policy.threshold, randbytes)
    target = ReshareTarget(epoch.job_id, escrow_id, epoch.public_key, policy, request.sha256())
    sealed = tuple(
        seal_to(
            c.x25519,
            part.to_bytes(),
            SHARE_CONTEXT,
            target.part_aad(c.fingerprint, share.index),
        )
        for c, part in zip(policy.custodians, parts, strict=True)
    )
    return ReshareEpoch(escrow_id, tuple(p.public() for p in parts), sealed)


def verify_approvals(
    escrow: Escrow, request: RestoreRequest, approvals: Sequence[Approval]
) -> list[Approval]:
    """The approvals if at least M distinct, signed approvals of ``request``; else RestoreError."""
    if not isinstance(escrow.policy, ShamirPolicy):
        raise RestoreError("custodian approvals apply to Shamir escrows only")
    seen: set[str] = set()
    for i, ap in enumerate(approvals, start=1):
        if (ap.request_id, ap.request_sha256, ap.job_id, ap.revision, ap.purpose) != (
            request.request_id,
            request.sha256(),
            escrow.job_id,
            escrow.revision,
            request.purpose,
        ):
            raise RestoreError(f"approval {i} (by {ap.custodian!r}) is for another request")
        try:
            custodian = escrow.policy.custodian(ap.fingerprint)
        except EscrowError:
            raise RestoreError(
                f"approval {i} is from {ap.custodian!r}, who is not a custodian of this escrow"
            ) from None
        try:
            Ed25519PublicKey.from_public_bytes(custodian.ed25519).verify(
                ap.signature, ap.signing_bytes()
            )
        except InvalidSignature:
            raise RestoreError(
                f"approval {i} (by {custodian.name!r}) has a bad signature"
            ) from None
        if ap.fingerprint in seen:
            raise RestoreError(
                f"approval {i} duplicates the approval of {custodian.name!r}: each custodian "
                "counts once"
            )
        seen.add(ap.fingerprint)
    if len(seen) < escrow.policy.threshold:
        raise RestoreError(
            f"{len(seen)} valid approval(s) from distinct custodians; this escrow "
            f"needs {escrow.policy.threshold}"
        )
    return list(approvals)


def _open_partials(
    request: RestoreRequest, keys: RequestKeys, ap: Approval
) -> list[threshold.Partial]:
    try:
        raw = open_sealed(
            keys.x25519,
            ap.sealed_partials,
            PARTIALS_CONTEXT,
            _partials_aad(request, ap.fingerprint),
        )
    except DecryptionError:
        raise RestoreError(
            f"the approval by {ap.custodian!r} does not open with this request's key (made "
            "for another request, or tampered)"
        ) from None
    size = 1 + threshold.POINT_SIZE + threshold.PROOF_SIZE
    if len(raw) != size * len(request.samples):
        raise RestoreError(f"the approval by {ap.custodian!r} does not cover the request's samples")
    try:
        return [threshold.Partial.from_bytes(raw[i : i + size]) for i in range(0, len(raw), size)]
    except threshold.ThresholdError:
        raise RestoreError(f"the approval by {ap.custodian!r} holds a malformed partial") from None


def recover_data_keys(
    escrow: Escrow,
    request: RestoreRequest,
    keys: RequestKeys,
    approvals: Sequence[Approval],
    purpose: str,
    now: datetime | None = None,
) -> dict[tuple[str, str], bytes]:
    """``(shard, sample key) -> data key`` for exactly the request's samples.

    Every partial is checked against its custodian's public share; a bad one is named. Each
    sample needs M good partials.
    """
    check_request(escrow, request, purpose, now)
    policy = escrow.policy
    approvals = verify_approvals(escrow, request, approvals)
    opened = {ap.fingerprint: (ap, _open_partials(request, keys, ap)) for ap in approvals}
    out: dict[tuple[str, str], bytes] = {}
    for n, ref in enumerate(request.samples):
        epoch = escrow.epoch(ref.escrow_id)
        label = epoch.label(ref.shard, ref.key)
        wrapped = threshold.WrappedKey.from_bytes(ref.wrapped)
        good = []
        for fp, (ap, partials) in opened.items():
            index = policy.index_of(fp)
            partial = partials[n]
            if partial.index != index or not threshold.verify_partial(
                epoch.public_shares[index - 1], wrapped, label, partial
            ):
                raise RestoreError(
                    f"custodian {ap.custodian!r} sent a bad partial decryption for sample "
                    f"{ref.key!r}: its proof does not verify (a faulty or dishonest approval)"
                )
            good.append(partial)
        shared = threshold.combine_partials(good, policy.threshold)
        try:
            out[(ref.shard, ref.key)] = threshold.unwrap(epoch.public_key, wrapped, label, shared)
        except threshold.ThresholdError:
            raise RestoreError(f"sample {ref.key!r}: its data key did not open") from None
    log.info("data keys of %d sample(s) released for request %s", len(out), request.request_id)
    return out


def assemble_reshare(
    escrow: Escrow,
    request: RestoreRequest,
    approvals: Sequence[Approval],
    now: datetime | None = None,
) -> Escrow:
    """The escrow moved to the request's new custodians, from M old custodians' contributions.

    Each contribution must re-split its custodian's public share (checked against the epoch);
    the new public shares are their Lagrange combination. The key itself is never rebuilt.
    """
    check_request(escrow, request, "reshare", now)
    policy = request.new_policy
    assert isinstance(policy, ShamirPolicy)
    chosen = verify_approvals(escrow, request, approvals)[: escrow.policy.threshold]
    sources = [escrow.policy.index_of(ap.fingerprint) for ap in chosen]
    epochs = []
    for epoch in escrow.epochs:
        contributions = {}
        for ap, source in zip(chosen, sources, strict=True):
            block = {r.escrow_id: r for r in ap.reshare}.get(epoch.escrow_id)
            if block is None or len(block.public_parts) != len(policy.custodians):
                raise RestoreError(
                    f"the approval by {ap.custodian!r} does not reshare epoch {epoch.escrow_id}"
                )
            try:
                threshold.check_public_shares(
                    epoch.public_shares[source - 1], block.public_parts, policy.threshold
                )
            except threshold.ThresholdError:
                raise RestoreError(
                    f"the approval by {ap.custodian!r} does not re-split their share of epoch "
                    f"{epoch.escrow_id}"
                ) from None
            contributions[source] = block
        public_shares = [
            threshold.interpolate({s: b.public_parts[j] for s, b in contributions.items()})
            for j in range(len(policy.custodians))
        ]
        parts = tuple(
            tuple(SealedPart(s, b.sealed_parts[j]) for s, b in contributions.items())
            for j in range(len(policy.custodians))
        )
        epochs.append(reshared_epoch(epoch, policy, request.sha256(), public_shares, parts))
    return Escrow(escrow.job_id, secrets.token_hex(16), policy, tuple(epochs))
