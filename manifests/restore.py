"""Approvals and release: M custodian approvals of a request (:mod:`manifests.request`), then
exactly what the request names (escrow format 3, :mod:`manifests.escrow`).

1. *Approval* (``NAME.approval``): the custodian checks the request's signature and expiry,
   opens their share of each epoch involved, and for each listed sample checks that the wrap was
   made for *that* sample (its label proof) before computing their partial decryption with a
   proof (:mod:`manifests.threshold`). The partials are sealed to the request's X25519 key
   (context ``restore-partials``, AAD: request sha256 and custodian fingerprint). For a reshare,
   the custodian instead splits their share of every epoch again for the ``new_policy`` named
   in the request, seals each new part to its new custodian, and publishes the parts' public
   values. The custodian signs a *statement* (``"faceveil/approval/v4|"`` + canonical JSON of
   every field, the sealed partials replaced by their sha256): it names the request, the log
   tail seen and what was released.
2. *Apply*: the request must be for this job and revision, with an escrow copy identical to
   ``escrow.json``, the expected purpose, unexpired, signed by its requester key
   (:func:`manifests.request.check_request`); M approvals of *that* request from distinct
   custodians of the escrow with good signatures; every partial's proof checks against the
   custodian's public share (a bad one names its custodian); M good partials per sample combine
   into that sample's data key, and nothing else. No function here returns a key that opens a
   sample the request does not list.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from faceveil.manifests import threshold
from faceveil.manifests.audit import utc_now
from faceveil.manifests.canonical import canonical_json
from faceveil.manifests.custodian import (
    CustodianPrivate,
    b64d,
    b64e,
    open_sealed,
    seal_to,
)
from faceveil.manifests.errors import DecryptionError, RestoreError
from faceveil.manifests.escrow import (
    SHARE_CONTEXT,
    Escrow,
    ReshareTarget,
    SealedPart,
    ShamirPolicy,
    reshared_epoch,
)
from faceveil.manifests.request import (
    RequestKeys,
    RestoreRequest,
    SampleRef,
    check_request,
)
from faceveil.manifests.signed import ApprovedRequest, SignedApproval, iso_time, verify_signed

log = logging.getLogger(__name__)

APPROVAL_FORMAT = "faceveil-restore-approval/4"
PARTIALS_CONTEXT = "restore-partials"
_APPROVAL_LABEL = b"faceveil/approval/v4|"


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
class Approval(SignedApproval):
    """One custodian's signed approval of one request."""

    LABEL: ClassVar[bytes] = _APPROVAL_LABEL
    FORMAT: ClassVar[str] = APPROVAL_FORMAT

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

    @classmethod
    def loads(cls, data: bytes | str) -> Approval:
        """Parse an ``.approval`` file; RestoreError if malformed."""

        def fields(doc: dict) -> dict:
            doc["sealed_partials"] = b64d(doc["sealed_partials"], "sealed partials")
            doc["reshare"] = tuple(ReshareEpoch.from_json(r) for r in doc["reshare"])
            return doc

        return cls._from_file(data, fields)


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
        time=iso_time(clock()),
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
        return threshold.partial_decrypt(
            share, wrapped, epoch.label(ref.shard, ref.sample_id), randbytes
        )
    except threshold.ThresholdError as exc:
        raise RestoreError(
            f"sample {ref.sample_id!r} of {ref.shard}: its wrapped key was not made for that "
            f"sample ({exc}); not approving"
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
    expected = {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "job_id": escrow.job_id,
        "revision": escrow.revision,
        "purpose": request.purpose,
    }
    verify_signed(approvals, expected, escrow.policy.custodian, escrow.policy.threshold)
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
    approved: ApprovedRequest[RestoreRequest, RequestKeys],
    purpose: str,
    now: datetime | None = None,
) -> dict[tuple[str, str], bytes]:
    """``(shard, sample id) -> data key`` for exactly the request's samples.

    Every partial is checked against its custodian's public share; a bad one is named. Each
    sample needs M good partials.
    """
    request = approved.request
    check_request(escrow, request, purpose, now)
    policy = escrow.policy
    approvals = verify_approvals(escrow, request, approved.approvals)
    opened = {ap.fingerprint: (ap, _open_partials(request, approved.keys, ap)) for ap in approvals}
    out: dict[tuple[str, str], bytes] = {}
    for n, ref in enumerate(request.samples):
        epoch = escrow.epoch(ref.escrow_id)
        label = epoch.label(ref.shard, ref.sample_id)
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
                    f"{ref.sample_id!r}: its proof does not verify (a faulty or dishonest approval)"
                )
            good.append(partial)
        shared = threshold.combine_partials(good, policy.threshold)
        try:
            out[(ref.shard, ref.sample_id)] = threshold.unwrap(
                epoch.public_key, wrapped, label, shared
            )
        except threshold.ThresholdError:
            raise RestoreError(f"sample {ref.sample_id!r}: its data key did not open") from None
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
