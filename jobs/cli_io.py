"""What the key and restore commands share on the terminal: the error policy, passphrases,
confirmations, where documents go, and the request and approval files a recovering command reads.

Every handler wrapped by :func:`refusals` prints one ``error: ...`` line on stderr and returns 1
for a refused operation; argparse returns 2 for a usage error (:mod:`jobs.exitcodes`).
Passphrases come from ``--passphrase-file`` or the terminal, never from stdin or the command
line; confirmations are asked on ``/dev/tty``; messages go to stderr wherever stdout carries a
document.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from faceveil.jobs.exitcodes import ExitCode, refused
from faceveil.manifests.custodian import read_passphrase
from faceveil.manifests.errors import KeyLibraryError


def refusals(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the library's errors into one ``error:`` line on stderr and ExitCode.REFUSED."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int | ExitCode:
        try:
            return func(args)
        except (KeyLibraryError, OSError, ValueError, KeyError) as exc:
            return refused(exc)

    return run


def say(text: str) -> None:
    print(text, file=sys.stderr)


def emit(data: bytes, out: str | None) -> str:
    """Write ``data`` to the file ``out``, or to stdout without one; returns where it went."""
    if out:
        Path(out).write_bytes(data)
        return out
    sys.stdout.write(data.decode("utf-8"))
    sys.stdout.flush()
    return "stdout"


def has_tty() -> bool:
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def passphrase(path: str | None, prompt: str, confirm: bool = False) -> str:
    """A passphrase from ``--passphrase-file`` or the terminal; never from stdin."""
    if path is None and not has_tty():
        raise ValueError("no terminal to ask for the passphrase on: pass --passphrase-file FILE")
    return read_passphrase(path, prompt, confirm)


def ask_tty(text: str) -> str:
    """Show ``text`` on the controlling terminal and read one answer line from it."""
    try:
        with open("/dev/tty", "r+", encoding="utf-8") as tty:
            tty.write(text)
            tty.flush()
            return tty.readline()
    except OSError:
        raise ValueError(
            "no terminal to confirm on: read the request, then approve it with --yes"
        ) from None


def requested_samples(args: argparse.Namespace) -> list[str] | None:
    samples = list(args.samples or [])
    if args.samples_file:
        lines = Path(args.samples_file).read_text(encoding="utf-8").splitlines()
        samples += [line.strip() for line in lines if line.strip()]
    if args.purpose != "restore":
        if samples or args.all:
            raise ValueError(f"a {args.purpose} request covers the whole job: name no samples")
        return None
    if args.all:
        return None
    if not samples:
        raise ValueError("name samples (--key SAMPLEKEY, --samples-file FILE) or ask for --all")
    return samples


def requester_name(args: argparse.Namespace) -> str:
    if args.requester:
        return args.requester
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ValueError("cannot tell the OS user name: pass --requester NAME") from None


def recovery_inputs(args: argparse.Namespace) -> tuple[str, list[str]]:
    if args.request_pos and args.request_opt:
        raise ValueError("give the request once: as REQUEST or as --request, not both")
    if args.approvals_pos and args.approvals_opt:
        raise ValueError("give the approvals once: after REQUEST or after --approvals, not both")
    request = args.request_pos or args.request_opt
    if not request:
        raise ValueError("the request file is needed: OUT REQUEST APPROVAL... or --request")
    return request, list(args.approvals_pos or args.approvals_opt)


def request_key_path(args: argparse.Namespace, request_id: str, request_path: str) -> Path:
    """--request-key, else ./ID.key, else ID.key or REQ.key beside the request."""
    if args.request_key:
        return Path(args.request_key)
    beside = Path(request_path)
    for path in (
        Path(f"{request_id}.key"),
        beside.with_name(f"{request_id}.key"),
        beside.with_suffix(".key"),
    ):
        if path.is_file():
            return path
    raise ValueError(
        f"no request key file ({request_id}.key in this folder or beside {request_path}); "
        "pass --request-key FILE"
    )


def passphrase_arg(parser: argparse.ArgumentParser) -> None:
    """``--passphrase-file``."""
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="read the passphrase from the first line of FILE instead of a prompt",
    )


def kdf_arg(parser: argparse.ArgumentParser) -> None:
    """``--kdf-work`` (scrypt cost, log2 N)."""
    parser.add_argument(
        "--kdf-work", type=int, choices=range(15, 23), default=17, metavar="LOG2N",
        help="scrypt cost as log2(N) (default: %(default)s = 128 MiB; 15..22, 15 is the floor)",
    )  # fmt: skip
