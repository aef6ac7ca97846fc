"""``faceveil restore request | approve | apply`` on outputs of the earlier master-key escrow
(format 2): the handlers :mod:`faceveil.jobs.restore_cli` hands such outputs to. Each says,
before it acts, that approvals of that format release every sample of the job; the engine is
:mod:`faceveil.jobs.restore_legacy`.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from faceveil.jobs.auditlog import append as append_audit
from faceveil.jobs.cli_io import (
    ask_tty,
    emit,
    passphrase,
    recovery_inputs,
    request_key_path,
    requested_samples,
    requester_name,
    say,
)
from faceveil.jobs.exitcodes import ExitCode
from faceveil.jobs.restore import restore_into
from faceveil.jobs.restore_legacy import WARNING, read_escrow, restore_to
from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditWriter, key_id
from faceveil.manifests.custodian import CustodianPrivate, ScryptParams, b64e
from faceveil.manifests.errors import EscrowError
from faceveil.manifests.escrow import make_kms_client
from faceveil.manifests.files import write_private_file
from faceveil.manifests.restore_v2 import (
    Approval,
    RequestSpec,
    RestoreRequest,
    approve,
    check_request,
    create_request,
    load_request_key,
    recover_masters,
)
from faceveil.manifests.signed import ApprovedRequest


def _warn() -> None:
    say(WARNING)


def cmd_request(args: argparse.Namespace) -> int:
    """``restore request`` on a format-2 output (restore of named samples or all)."""

    _warn()
    if args.purpose != "restore":
        raise EscrowError(
            "this output has the earlier master-key escrow: only restores are offered"
        )
    escrow = read_escrow(Location(args.out_tree))
    secret = passphrase(args.passphrase_file, "New passphrase for the request key: ", confirm=True)
    spec = RequestSpec(
        "restore", requested_samples(args), args.reason, requester_name(args),
        valid_for=timedelta(days=args.valid_days),
    )  # fmt: skip
    request, key_file = create_request(
        escrow, spec, secret, params=ScryptParams(n=2**args.kdf_work)
    )
    key_out = Path(args.key_out or f"{request.request_id}.key")
    write_private_file(key_out, key_file)
    where = emit(request.dumps(), args.out)
    say(f"request {request.request_id} written to {where}\nrequest key: {key_out} (mode 0600)")
    return ExitCode.OK


def cmd_approve(
    args: argparse.Namespace, out_tree: str | None, request_path: str, identity: str
) -> int:
    """``restore approve`` of a format-2 request: the custodian's share of every master key."""

    _warn()
    request = RestoreRequest.loads(Path(request_path).read_bytes())
    if out_tree:
        check_request(read_escrow(Location(out_tree)), request, request.purpose)
    check_request(request.escrow, request, request.purpose)
    count = "all samples" if request.samples is None else f"{len(request.samples)} sample(s)"
    text = (
        f"Request {request.request_id}\nRequester: {request.requester}\nReason: {request.reason}\n"
        f"Restore of {count}. {WARNING}\nApprove this request? [y/N] "
    )
    if not args.yes and ask_tty(text).strip().lower() not in ("y", "yes"):
        say("not approved")
        return ExitCode.REFUSED
    custodian = CustodianPrivate.load(identity, passphrase(args.passphrase_file, "Passphrase: "))
    approval = approve(request.escrow, request, custodian)
    where = emit(approval.dumps(), args.out)
    say(f"approval of request {request.request_id} by {custodian.name} written to {where}")
    return ExitCode.OK


def cmd_apply(args: argparse.Namespace) -> int:
    """``restore apply`` on a format-2 output (recovers every epoch's master key)."""

    _warn()
    out = Location(args.out_tree)
    escrow = read_escrow(out)
    request_path, approval_paths = recovery_inputs(args)
    request = RestoreRequest.loads(Path(request_path).read_bytes())
    approvals = [Approval.loads(Path(p).read_bytes()) for p in approval_paths]
    check_request(escrow, request, "restore")
    if escrow.scheme == "kms":
        masters = escrow.unwrap_kms(make_kms_client(escrow.key_arn, args.kms_endpoint))
    else:
        key_path = request_key_path(args, request.request_id, request_path)
        secret = passphrase(args.passphrase_file, "Passphrase of the request key: ")
        request_key = load_request_key(request, key_path.read_bytes(), secret)
        approved = ApprovedRequest(request, request_key, approvals)
        masters = recover_masters(escrow, approved, "restore")
    writer = AuditWriter(escrow.audit_signing_key(masters), f"requester:{request.requester}")
    details = {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "format": 2,
        "approvals": [{"custodian": a.custodian, "approval_sha256": a.sha256()} for a in approvals],
        "job_key_id": key_id(writer.public_key),
        "signer_key": b64e(writer.public_key),
    }
    wanted = None if request.samples is None else set(request.samples)

    def record(count: int):
        return append_audit(out, writer, "restore.apply", details | {"restored": count})

    def stage(staging: Path) -> dict:
        return restore_to(out, masters, escrow.job_id, wanted, staging)

    count, tail = restore_into(Path(args.dest), request.request_id, stage, record)
    print(f"restored {count} sample(s) into {args.dest} (index: restored.json)\naudit tail: {tail}")
    return ExitCode.OK
