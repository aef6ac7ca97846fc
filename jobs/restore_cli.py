"""The ``faceveil restore`` and ``faceveil escrow`` subcommands: parsers and handlers only.

The workflow as a user runs it (every command also runs from a script: ``--passphrase-file``,
``--yes``)::

    faceveil restore request OUT --sample-id ID... --reason R > req.json      # signed request
    faceveil restore approve req.json --identity alice.key > alice.approval       # offline
    faceveil restore apply OUT req.json alice.approval bob.approval --dest restored/
    faceveil restore request OUT --purpose reshare --custodians a.pub b.pub d.pub --threshold 2 ...
    faceveil escrow reshare OUT --request req.json --approvals a.approval b.approval

The engines are :mod:`manifests.restore` (requests, approvals, partials), :mod:`jobs.restore`
and :mod:`jobs.rekey`; outputs of the earlier master-key format go to :mod:`jobs.legacy_cli`.
Handlers print one ``error: ...`` line and return 1 for a refused operation; argparse returns 2
for a usage error. Messages go to stderr wherever stdout carries a document.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import timedelta
from pathlib import Path

from faceveil.jobs import cli_io, legacy_cli
from faceveil.jobs.auditlog import append as append_audit
from faceveil.jobs.auditlog import verify_tree
from faceveil.jobs.cli_io import (
    emit,
    kdf_arg,
    passphrase,
    passphrase_arg,
    recovery_inputs,
    refusals,
    request_key_path,
    requested_samples,
    requester_name,
    say,
)
from faceveil.jobs.exitcodes import ExitCode
from faceveil.jobs.rekey import mark_complete, publish_rekey, stage_rekey
from faceveil.jobs.restore import (
    REKEY_DIR,
    RestoreContext,
    is_legacy,
    kms_data_keys,
    read_escrow,
    refuse_pending_rekey,
    restore_into,
    restore_samples,
    sample_refs,
    signed_commitments,
)
from faceveil.jobs.restorelog import (
    apply_details,
    approval_details,
    policy_entry,
    record_approvals,
    record_request,
    requester_writer,
    verified_entries,
)
from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditWriter, key_id
from faceveil.manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
)
from faceveil.manifests.errors import EscrowError, KeyLibraryError, RestoreError
from faceveil.manifests.escrow import (
    Escrow,
    KmsPolicy,
    Policy,
    ShamirPolicy,
    create_escrow,
    make_kms_client,
)
from faceveil.manifests.files import write_private_file
from faceveil.manifests.jobkeys import parse_kms_spec
from faceveil.manifests.request import (
    REQUEST_FORMAT,
    RequestSpec,
    RestoreRequest,
    check_request,
    create_request,
    load_request_key,
)
from faceveil.manifests.restore import (
    Approval,
    approve,
    assemble_reshare,
    recover_data_keys,
)
from faceveil.manifests.signed import ApprovedRequest

log = logging.getLogger(__name__)


def _request_format(path: str) -> str:
    try:
        return str(json.loads(Path(path).read_bytes()).get("format"))
    except (ValueError, AttributeError):
        raise RestoreError(f"{path} is not a faceveil request") from None


# ---- request -----------------------------------------------------------------------------------


def _new_policy(args: argparse.Namespace, escrow: Escrow) -> Policy | None:
    """The policy a reshare or rekey request names (a rekey defaults to the current one)."""
    if args.purpose == "restore":
        if args.custodians or args.kms or args.threshold:
            raise ValueError("a restore request names no new policy (--custodians, --kms)")
        return None
    if args.kms:
        if args.purpose == "reshare":
            raise ValueError("a reshare moves the key to custodians; rekey to move it to KMS")
        return KmsPolicy(parse_kms_spec(args.kms))
    if args.custodians:
        if not args.threshold:
            raise ValueError("--custodians needs --threshold M")
        return ShamirPolicy(args.threshold, tuple(CustodianPublic.load(p) for p in args.custodians))
    if args.purpose == "reshare":
        raise ValueError(
            "a reshare request names the new custodians: --custodians PUB... --threshold M"
        )
    return escrow.policy


@refusals
def cmd_restore_request(args: argparse.Namespace) -> int:
    """``faceveil restore request OUT --sample-id ID... | --all --reason R``: a signed request
    (to ``--out`` or stdout) and its key file (``--key-out`` or ``./REQUEST_ID.key``); the
    request is recorded in OUT/audit.jsonl, signed by its requester key."""
    out = Location(args.out_tree)
    refuse_pending_rekey(out)
    if is_legacy(out):
        return legacy_cli.cmd_request(args)
    escrow = read_escrow(out)
    verified = verify_tree(out)
    commitments = signed_commitments(verified.report.entries)
    wanted = requested_samples(args)
    new_policy = _new_policy(args, escrow)
    refs = [] if args.purpose == "reshare" else sample_refs(out, escrow, wanted, commitments)
    secret = passphrase(args.passphrase_file, "New passphrase for the request key: ", confirm=True)
    spec = RequestSpec(
        args.purpose, tuple(refs), args.reason, requester_name(args), new_policy=new_policy,
        log_tail=str(verified.report.tail), valid_for=timedelta(days=args.valid_days),
    )  # fmt: skip
    params = ScryptParams(n=2**args.kdf_work)
    request, key_file = create_request(escrow, spec, secret, params=params)
    key_out = Path(args.key_out or f"{request.request_id}.key")
    write_private_file(key_out, key_file)
    keys = load_request_key(request, key_file, secret)
    tail = record_request(out, request, keys)
    where = emit(request.dumps(), args.out)
    say(
        f"request {request.request_id} ({request.purpose} of {len(refs)} sample(s)) written to "
        f"{where}\nrequest sha256: {request.sha256()}\n"
        f"request key: {key_out} (mode 0600; keep it: 'restore apply' needs it)\naudit tail: {tail}"
    )
    return ExitCode.OK


# ---- approve -----------------------------------------------------------------------------------


def describe_request(request: RestoreRequest) -> str:
    """What a custodian is shown before approving: purpose, samples, reason, requester, policy."""
    escrow = request.escrow
    if request.purpose == "reshare":
        what = f"reshare of the escrow key to {request.new_policy.describe()}"
    elif request.purpose == "rekey":
        what = f"rekey of all {len(request.samples)} sample(s) to {request.new_policy.describe()}"
    else:
        shown = ", ".join(f"{s.sample_id} ({s.shard})" for s in request.samples[:10])
        more = f" and {len(request.samples) - 10} more" if len(request.samples) > 10 else ""
        what = f"restore of {len(request.samples)} sample(s): {shown}{more}"
    return (
        f"Request {request.request_id} (sha256 {request.sha256()[:16]}...)\n"
        f"Requester: {request.requester} (key {key_id(request.requester_ed25519)})\n"
        f"Reason: {request.reason}\nPurpose: {what}\n"
        f"Job {escrow.job_id}, escrow revision {escrow.revision} ({escrow.policy.describe()}), "
        f"{len(escrow.epochs)} key epoch(s)\n"
        f"Audit log tail when requested: {request.log_tail}\n"
        f"Created {request.created}, expires {request.expires}\n"
    )


@refusals
def cmd_restore_approve(args: argparse.Namespace) -> int:
    """``faceveil restore approve REQUEST --identity NAME.key``: offline, from the request alone.
    With ``--out-tree OUT`` the request is also checked against OUT and the approval recorded
    in OUT/audit.jsonl, signed by the custodian."""
    identity = args.identity or args.legacy_identity
    if not identity:
        raise ValueError("the custodian's private key file is needed: --identity NAME.key")
    out_tree, request_path = (
        (args.request, args.legacy_request)
        if args.legacy_request
        else (args.out_tree, args.request)
    )
    if _request_format(request_path) != REQUEST_FORMAT:
        return legacy_cli.cmd_approve(args, out_tree, request_path, identity)
    request = RestoreRequest.loads(Path(request_path).read_bytes())
    out = Location(out_tree) if out_tree else None
    tail = None
    if out is not None:
        check_request(read_escrow(out), request, request.purpose)
        tail = str(verify_tree(out).report.tail)
    if not args.yes and cli_io.ask_tty(
        describe_request(request) + "Approve this request? [y/N] "
    ).strip().lower() not in ("y", "yes"):
        say("not approved")
        return ExitCode.REFUSED
    secret = passphrase(args.passphrase_file, f"Passphrase for {Path(identity).stem}'s key: ")
    custodian = CustodianPrivate.load(identity, secret)
    approval = approve(request, custodian, log_tail=tail)
    if out is not None and not args.no_audit:
        writer = AuditWriter(custodian.ed25519, f"custodian:{custodian.name}")
        details = approval_details(request, approval, custodian.public())
        say(f"audit tail: {append_audit(out, writer, 'restore.approve', details)}")
    where = emit(approval.dumps(), args.out)
    say(f"approval of request {request.request_id} by {custodian.name} written to {where}")
    return ExitCode.OK


# ---- apply, reshare, rekey ---------------------------------------------------------------------


def _open_request(args: argparse.Namespace, out: Location, purpose: str):
    """(escrow, request, requester keys, approvals) for a recovering command, all checked."""
    request_path, approval_paths = recovery_inputs(args)
    escrow = read_escrow(out)
    request = RestoreRequest.loads(Path(request_path).read_bytes())
    check_request(escrow, request, purpose)
    key_path = request_key_path(args, request.request_id, request_path)
    secret = passphrase(args.passphrase_file, "Passphrase of the request key: ")
    keys = load_request_key(request, key_path.read_bytes(), secret)
    approvals = [Approval.loads(Path(p).read_bytes()) for p in approval_paths]
    if escrow.scheme == "kms" and approvals:
        log.warning("KMS escrow: approvals are not used; access is the KMS key's policy")
    return escrow, request, keys, approvals


def _data_keys(args, ctx: RestoreContext, request, keys, approvals):
    escrow = ctx.escrow
    if escrow.scheme == "kms":
        client = make_kms_client(escrow.policy.key_arn, args.kms_endpoint)
        return kms_data_keys(ctx.out, escrow, request.samples, client), []
    return recover_data_keys(
        escrow, ApprovedRequest(request, keys, approvals), request.purpose
    ), approvals


@refusals
def cmd_restore_apply(args: argparse.Namespace) -> int:
    """``faceveil restore apply OUT REQUEST APPROVAL... --dest DIR``: opens exactly the samples
    the request lists. Nothing is left in ``--dest`` when anything fails."""
    out = Location(args.out_tree)
    refuse_pending_rekey(out)
    if is_legacy(out):
        return legacy_cli.cmd_apply(args)
    commitments = signed_commitments(verified_entries(out))
    escrow, request, keys, approvals = _open_request(args, out, "restore")
    ctx = RestoreContext(out, escrow, commitments)
    data_keys, used = _data_keys(args, ctx, request, keys, approvals)
    if used:
        record_approvals(out, escrow, request, keys, used)
    else:
        record_request(out, request, keys)
    writer, details = requester_writer(request, keys), apply_details(request, used)

    def record(count: int):
        return append_audit(out, writer, "restore.apply", details | {"restored": count})

    def rebuild(staging: Path) -> dict:
        return restore_samples(ctx, list(request.samples), data_keys, staging)

    try:
        count, tail = restore_into(Path(args.dest), request.request_id, rebuild, record)
    except KeyLibraryError as exc:
        append_audit(out, writer, "restore.failed", details | {"error": str(exc)})
        raise
    print(f"restored {count} sample(s) into {args.dest} (index: restored.json)\naudit tail: {tail}")
    return ExitCode.OK


def _check_named_policy(args: argparse.Namespace, request: RestoreRequest) -> None:
    """A policy given on the command line must be the one the request names."""
    given = None
    if getattr(args, "kms", None):
        given = KmsPolicy(parse_kms_spec(args.kms))
    elif args.custodians:
        given = ShamirPolicy(
            args.threshold or 0, tuple(CustodianPublic.load(p) for p in args.custodians)
        )
    if given is not None and given != request.new_policy:
        raise RestoreError(
            f"the approved request moves the escrow to {request.new_policy.describe()}, not to "
            f"{given.describe()}: approvals authorize only what their request names"
        )


@refusals
def cmd_escrow_reshare(args: argparse.Namespace) -> int:
    """``faceveil escrow reshare OUT --request REQ --approvals A...``: the escrow key moves to the
    custodians the request names; nobody rebuilds it."""
    out = Location(args.out_tree)
    refuse_pending_rekey(out)
    if is_legacy(out):
        raise EscrowError("this output has the earlier master-key escrow: reshare is not supported")
    verified_entries(out)
    escrow, request, keys, approvals = _open_request(args, out, "reshare")
    _check_named_policy(args, request)
    new = assemble_reshare(escrow, request, approvals)
    record_approvals(out, escrow, request, keys, approvals)
    details = apply_details(request, approvals) | policy_entry(request, escrow, new)
    tail = append_audit(out, requester_writer(request, keys), "escrow.reshare", details)
    out.publish_bytes(new.dumps(), "escrow.json")
    print(
        f"escrow reshared to {new.policy.describe()} ({len(new.epochs)} key epoch(s), "
        f"revision {new.revision})\naudit tail: {tail}"
    )
    return ExitCode.OK


@refusals
def cmd_escrow_rekey(args: argparse.Namespace) -> int:
    """``faceveil escrow rekey OUT --request REQ --approvals A...``: every sample gets a new data
    key under one new epoch of the policy the request names; every manifest is re-sealed."""
    out = Location(args.out_tree)
    staged = out.exists(REKEY_DIR, "COMPLETE")
    if args.finish or staged:
        if not (args.finish and staged):
            raise EscrowError(
                "an interrupted rekey is pending: rerun with --finish" if staged
                else "--finish: no staged rekey to publish"
            )  # fmt: skip
        print(f"published the staged rekey ({publish_rekey(out)} manifests)")
        return ExitCode.OK
    if is_legacy(out):
        raise EscrowError("this output has the earlier master-key escrow: rekey is not supported")
    commitments = signed_commitments(verified_entries(out))
    escrow, request, keys, approvals = _open_request(args, out, "rekey")
    _check_named_policy(args, request)
    ctx = RestoreContext(out, escrow, commitments)
    data_keys, used = _data_keys(args, ctx, request, keys, approvals)
    new_escrow = create_escrow(escrow.job_id, request.new_policy)
    kms = (
        make_kms_client(new_escrow.policy.key_arn, args.kms_endpoint)
        if isinstance(new_escrow.policy, KmsPolicy)
        else None
    )
    plan = stage_rekey(ctx, data_keys, new_escrow, kms)
    if used:
        record_approvals(out, escrow, request, keys, used)
    else:
        record_request(out, request, keys)
    details = apply_details(request, used) | policy_entry(request, escrow, new_escrow)
    details["manifests"] = {shard: e["commitment"] for shard, e in plan["manifests"].items()}
    tail = append_audit(out, requester_writer(request, keys), "escrow.rekey", details)
    mark_complete(out, plan)
    count = publish_rekey(out)
    print(
        f"rekeyed: {count} manifests re-sealed under key epoch {new_escrow.escrow_ids[0]} "
        f"({new_escrow.policy.describe()})\naudit tail: {tail}"
    )
    return ExitCode.OK


# ---- parsers -----------------------------------------------------------------------------------


def _policy_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--custodians", nargs="+", metavar="PUB", help=f"the new custodians ({what})"
    )
    parser.add_argument("--threshold", type=int, metavar="M", help="approvals the new policy needs")
    parser.add_argument("--kms", metavar="aws-kms:ARN", help="rekey to this KMS key")


def _recovery_args(parser: argparse.ArgumentParser, positional_help: bool = True) -> None:
    parser.add_argument("out_tree", metavar="OUT", help="job output tree (path or s3:// URL)")
    shown = positional_help or None
    parser.add_argument(
        "request_pos",
        metavar="REQUEST",
        nargs="?",
        help="the request file (req.json)" if shown else argparse.SUPPRESS,
    )
    parser.add_argument("approvals_pos", metavar="APPROVAL", nargs="*",
                        help="custodian approvals" if shown else argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--request", dest="request_opt", metavar="REQUEST", help="the request")
    parser.add_argument(
        "--approvals", dest="approvals_opt", nargs="+", default=[], metavar="APPROVAL"
    )
    parser.add_argument(
        "--request-key",
        metavar="FILE",
        help="the request key file (default: ./REQUEST_ID.key, or beside REQUEST)",
    )
    parser.add_argument("--kms-endpoint", metavar="URL", help="KMS endpoint URL (KMS escrows)")
    passphrase_arg(parser)


def _add_request(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("request", help="ask custodians to release samples (or move the key)")
    p.add_argument("out_tree", metavar="OUT")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sample-id",
        "--samples",
        "--key",
        dest="samples",
        action="extend",
        nargs="+",
        metavar="SAMPLE_ID",
        help="a sample id (the __key__ of a sample) to restore; repeat or list several "
        "(--key is the same option under its old name)",
    )
    which.add_argument("--samples-file", metavar="FILE", help="one sample id per line")
    which.add_argument("--all", action="store_true", help="every sample of the job")
    p.add_argument(
        "--purpose",
        choices=("restore", "reshare", "rekey"),
        default="restore",
        help="default: %(default)s",
    )
    _policy_args(p, "reshare or rekey")
    p.add_argument("--reason", required=True)
    p.add_argument("--requester", metavar="NAME", help="who asks (default: the OS user name)")
    p.add_argument("--valid-days", type=float, default=7.0, help="default: %(default)s")
    p.add_argument("--out", metavar="FILE", help="write the request here (default: stdout)")
    p.add_argument("--key-out", metavar="FILE", help="request key file (default: ./REQUEST_ID.key)")
    passphrase_arg(p)
    kdf_arg(p)
    p.set_defaults(func=cmd_restore_request, handler=cmd_restore_request)  # fmt: skip


def _add_approve(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("approve", help="approve a request as one custodian (offline)")
    p.add_argument("request", metavar="REQUEST", help="the request file")
    p.add_argument("legacy_request", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--identity", metavar="KEYFILE", help="your custodian key file (NAME.key)")
    p.add_argument("--key", dest="legacy_identity", help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="FILE", help="write the approval here (default: stdout)")
    p.add_argument(
        "--out-tree",
        metavar="OUT",
        help="also check the request against OUT and record the approval in "
        "OUT/audit.jsonl now (otherwise 'restore apply' records it)",
    )
    p.add_argument("--no-audit", action="store_true", help="with --out-tree: record nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    passphrase_arg(p)
    p.set_defaults(func=cmd_restore_approve, handler=cmd_restore_approve)  # fmt: skip


def add_restore_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``restore`` (request, approve, apply) and ``escrow`` (reshare, rekey)."""
    group = sub.add_parser("restore", help="restore originals with M-of-N approval")
    actions = group.add_subparsers(dest="restore_command", required=True)
    _add_request(actions)
    _add_approve(actions)
    p = actions.add_parser("apply", help="open the approved samples and write their originals")
    _recovery_args(p)
    p.add_argument("--dest", required=True, metavar="DIR")
    p.set_defaults(func=cmd_restore_apply, handler=cmd_restore_apply)
    escrow = sub.add_parser("escrow", help="escrow maintenance").add_subparsers(
        dest="escrow_command", required=True
    )
    p = escrow.add_parser("reshare", help="the same escrow key, moved to the request's custodians")
    _recovery_args(p, positional_help=False)
    _policy_args(p, "must be the request's, if given")
    p.set_defaults(func=cmd_escrow_reshare, handler=cmd_escrow_reshare)
    p = escrow.add_parser(
        "rekey", help="new data keys under the request's policy; manifests re-sealed"
    )
    _recovery_args(p, positional_help=False)
    _policy_args(p, "must be the request's, if given")
    p.add_argument("--finish", action="store_true", help="publish an interrupted rekey")
    p.set_defaults(func=cmd_escrow_rekey, handler=cmd_escrow_rekey)
