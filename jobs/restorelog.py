"""What the restore, reshare and rekey commands record in the audit log, and how.

Entries of a request's life are signed by its requester key (declared in ``restore.request``);
a custodian's approval is recorded with their signed statement, so ``audit verify`` checks the
custodian's signature whoever appends it (:mod:`manifests.audit` for the roles).
"""

from __future__ import annotations

from faceveil.jobs.auditlog import append as append_audit
from faceveil.jobs.auditlog import verify_tree
from faceveil.jobs.restore import log_entries
from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditWriter, key_id
from faceveil.manifests.custodian import CustodianPublic, b64e
from faceveil.manifests.escrow import Escrow, ShamirPolicy
from faceveil.manifests.jobkeys import policy_details
from faceveil.manifests.request import RequestKeys, RestoreRequest
from faceveil.manifests.restore import Approval


def request_details(request: RestoreRequest) -> dict:
    """``restore.request`` details: who asks, for what, with which key."""
    new = None if request.new_policy is None else request.new_policy.to_json()
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "requester_key": b64e(request.requester_ed25519),
        "requester_key_id": key_id(request.requester_ed25519),
        "purpose": request.purpose,
        "requester": request.requester,
        "reason": request.reason,
        "created": request.created,
        "expires": request.expires,
        "revision": request.revision,
        "samples": len(request.samples),
        "samples_sha256": request.samples_sha256(),
        "new_policy": new,
        "log_tail": request.log_tail,
    }


def requester_writer(request: RestoreRequest, keys: RequestKeys) -> AuditWriter:
    return AuditWriter(keys.ed25519, f"requester:{request.requester}")


def record_request(out: Location, request: RestoreRequest, keys: RequestKeys) -> str:
    """Append ``restore.request`` unless the log has it; returns the tail."""
    for entry in log_entries(out):
        if (
            entry["action"] == "restore.request"
            and entry["details"].get("request_sha256") == request.sha256()
        ):
            return "(request already recorded)"
    return str(
        append_audit(
            out, requester_writer(request, keys), "restore.request", request_details(request)
        )
    )


def approval_details(
    request: RestoreRequest, approval: Approval, custodian: CustodianPublic
) -> dict:
    """``restore.approve`` details: the custodian's signed statement (no partials) and
    signature, which ``audit verify`` checks."""
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "custodian": approval.custodian,
        "fingerprint": approval.fingerprint,
        "custodian_key_id": key_id(custodian.ed25519),
        "approval_sha256": approval.sha256(),
        "statement": approval.statement(),
        "custodian_signature": b64e(approval.signature),
    }


def record_approvals(
    out: Location,
    escrow: Escrow,
    request: RestoreRequest,
    keys: RequestKeys,
    approvals: list[Approval],
) -> None:
    """Record the request and each approval (signed by the requester key; each carries its
    custodian's signed statement) unless the log has them already."""
    record_request(out, request, keys)
    seen = {
        e["details"].get("approval_sha256")
        for e in log_entries(out)
        if e["action"] == "restore.approve"
    }
    assert isinstance(escrow.policy, ShamirPolicy)
    for approval in approvals:
        if approval.sha256() not in seen:
            custodian = escrow.policy.custodian(approval.fingerprint)
            details = approval_details(request, approval, custodian)
            append_audit(out, requester_writer(request, keys), "restore.approve", details)


def apply_details(request: RestoreRequest, approvals: list[Approval]) -> dict:
    """What ``restore.apply``, ``restore.failed``, ``escrow.reshare`` and ``escrow.rekey`` record
    of the request and its approvals."""
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "purpose": request.purpose,
        "revision": request.revision,
        "samples": len(request.samples),
        "samples_sha256": request.samples_sha256(),
        "approvals": [
            {"custodian": a.custodian, "fingerprint": a.fingerprint, "approval_sha256": a.sha256()}
            for a in approvals
        ],
    }


def policy_entry(request: RestoreRequest, old: Escrow, new: Escrow) -> dict:
    """What ``escrow.reshare`` and ``escrow.rekey`` record of the move."""
    return {
        "old_revision": old.revision,
        "old_epochs": list(old.escrow_ids),
        "new_revision": new.revision,
        "new_epochs": list(new.escrow_ids),
        **policy_details(new.policy),
    }


def verified_entries(out: Location) -> list[dict]:
    """The audit log's entries once it verifies (roles, approvals, anchor)."""
    return list(verify_tree(out).report.entries)
