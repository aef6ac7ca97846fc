"""The ``faceveil`` key subcommands: custodian keygen and audit verify here; restore and escrow
in :mod:`jobs.restore_cli`.

:func:`add_key_commands` adds them all to the top-level subparsers; every handler is set as
``handler`` (and ``func``), takes the parsed ``args`` and returns an exit code: 0 done, 1 a
refused operation (one ``error: ...`` line on stderr), 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys

from faceveil.jobs.auditlog import append as append_audit
from faceveil.jobs.auditlog import verify_tree
from faceveil.jobs.cli_io import kdf_arg, passphrase, passphrase_arg, refusals
from faceveil.jobs.exitcodes import ExitCode, FaceveilParser
from faceveil.jobs.keyfile import KEY_BYTES, new_key_file
from faceveil.jobs.restore_cli import add_restore_commands
from faceveil.jobs.storage import Location
from faceveil.manifests.audit import AuditTail
from faceveil.manifests.custodian import CustodianPublic, ScryptParams, keygen

log = logging.getLogger(__name__)

__all__ = ["add_key_commands", "append_audit", "main"]


@refusals
def cmd_custodian_keygen(args: argparse.Namespace) -> int:
    """``faceveil custodian keygen --name NAME --out DIR``."""
    secret = passphrase(args.passphrase_file, f"Passphrase for {args.name}'s key: ", confirm=True)
    pub, key = keygen(args.name, args.out, secret, ScryptParams(n=2**args.kdf_work))
    print(
        f"public key:  {pub}\nprivate key: {key} (mode 0600)\n"
        f"fingerprint: {CustodianPublic.load(pub).fingerprint}"
    )
    return ExitCode.OK


def _entry_line(entry: dict) -> str:
    details = entry["details"] if isinstance(entry["details"], dict) else {}
    about = f" request {details['request_id']}" if "request_id" in details else ""
    return f"{entry['seq']:>5} {entry['time']} {entry['action']:<16} {entry['actor']}{about}"


@refusals
def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``faceveil audit verify OUT``: the log's chain, signatures and signer roles, then its
    anchor (see :mod:`jobs.auditlog`); lists the entries. Exit 0 also for an unanchored log,
    whose possible truncation the output states."""
    expected = AuditTail.parse(args.expect_tail) if args.expect_tail else None
    _refuse_missing_log(Location(args.out_tree))
    result = verify_tree(args.out_tree, args.job_key, args.anchor, expected)
    print("\n".join(result.summary()))
    if not args.quiet:
        print("\n".join(_entry_line(e) for e in result.report.entries))
    return ExitCode.OK


def _refuse_missing_log(out: Location) -> None:
    """A ValueError saying why OUT has no audit.jsonl (a --no-escrow job writes none)."""
    if out.exists("audit.jsonl"):
        return
    if not out.exists():
        raise ValueError(f"{out.uri} does not exist")
    if not out.exists("job.json"):
        raise ValueError(f"{out.uri} is not a faceveil output: it has no job.json")
    if out.read_json("job.json").get("escrow_mode") == "none":
        raise ValueError(
            f"{out.uri} has no audit log because its job ran with --no-escrow: nothing was "
            "sealed, so there are no key operations to log"
        )
    raise ValueError(f"{out.uri} has no audit log (audit.jsonl): it was removed, or the job "
                     "stopped before its first entry")  # fmt: skip


def cmd_key_new(args: argparse.Namespace) -> int:
    """``faceveil key new PATH``: a new random key file (a pseudonym key or a job secret)."""
    path = new_key_file(args.path)
    print(f"wrote a new {KEY_BYTES * 8}-bit key to {path} (mode 0600); back it up safely")
    return ExitCode.OK


def _add_key(sub: argparse._SubParsersAction) -> None:
    key = sub.add_parser("key", help="manage pseudonym keys")
    actions = key.add_subparsers(dest="key_command", required=True)
    new = actions.add_parser("new", help="create a new random key file (mode 0600)")
    new.add_argument("path")
    new.set_defaults(handler=cmd_key_new, func=cmd_key_new)


def _add_custodian(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("custodian", help="custodian keys").add_subparsers(
        dest="custodian_command", required=True
    )
    p = group.add_parser("keygen", help="make an X25519 + Ed25519 key pair for a custodian")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    passphrase_arg(p)
    kdf_arg(p)
    p.set_defaults(func=cmd_custodian_keygen, handler=cmd_custodian_keygen)


def _add_audit(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    audit = sub.add_parser("audit", help="audit log and output audits").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit.add_parser("verify", help="verify OUT/audit.jsonl and list its entries")
    p.add_argument("out_tree", metavar="OUT")
    p.add_argument("--expect-tail", metavar="SEQ:SHA256", help="the tail recorded out of band")
    p.add_argument(
        "--job-key",
        metavar="ID",
        action="append",
        help="pin a job signing key id (ed25519:...); repeat for every run: a job key the log "
        "declares that is not pinned, or a pinned one it does not declare, fails",
    )
    p.add_argument(
        "--anchor",
        metavar="URL",
        help="the audit anchor (fsspec URL); must equal the one the log's start entry names",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not list the entries")
    p.set_defaults(func=cmd_audit_verify, handler=cmd_audit_verify)
    return audit


def add_key_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``key``, ``custodian``, ``restore``, ``audit`` and ``escrow`` to the CLI's
    subparsers; returns the ``audit`` subcommands so that other audits can join them."""
    _add_key(subparsers)
    _add_custodian(subparsers)
    add_restore_commands(subparsers)
    return _add_audit(subparsers)


def main(argv: list[str] | None = None) -> int:
    """Run the key subcommands alone (``python -m jobs.keys_cli``)."""
    parser = FaceveilParser(prog="faceveil")
    add_key_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
