"""The ``faceveil`` command line: a thin layer that fills configs and calls the jobs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from faceveil.anon_core import methods
from faceveil.cluster.local import add_cluster_command
from faceveil.jobs.evaluate.cli import add_eval_command
from faceveil.jobs.exitcodes import ExitCode, FaceveilParser, refused
from faceveil.jobs.keyfile import KeyFileError
from faceveil.jobs.keys_cli import add_key_commands
from faceveil.jobs.lookup_cli import add_lookup_command
from faceveil.jobs.progress import configure_logging
from faceveil.jobs.residual_cli import add_audit_faces_command
from faceveil.jobs.run_cli import add_max_file_bytes_arg, add_run_command
from faceveil.manifests.errors import KeyLibraryError

log = logging.getLogger("faceveil")


def _add_shard(sub) -> None:
    p = sub.add_parser("shard", help="list and key input images into tar shards")
    p.add_argument("input", help="folder, glob, s3:// prefix, or a folder of .tar files")
    p.add_argument("output", help="where shard-NNNNNN.tar and shards.json go")
    p.add_argument("--shard-size", type=int, default=1000)
    add_max_file_bytes_arg(p)
    p.add_argument("--secret-file", help="32-byte secret the sample ids are keyed with (default "
                   "~/.faceveil/secret.key; either is created on first use)")  # fmt: skip
    p.set_defaults(handler=_shard)


def _shard(args: argparse.Namespace) -> int:
    from faceveil.jobs.keyfile import load_secret
    from faceveil.jobs.shard import ReadOptions, write_shards

    secret = load_secret(args.secret_file)
    reading = ReadOptions(max_member_bytes=args.max_file_bytes)
    entries = write_shards(args.input, args.output, secret, args.shard_size, reading)
    total = sum(e.samples for e in entries)
    print(f"wrote {len(entries)} shards ({total} samples) and shards.json to {args.output}")
    return ExitCode.OK


def _demo(args: argparse.Namespace) -> int:
    from faceveil.jobs.demo import run_demo

    for line in run_demo(args):
        print(line)
    return ExitCode.OK


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build a sample dataset from bundled images and run a job")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--method", default="blur", choices=[m for m in methods.available()
                   if m != "surrogate"], help="surrogate needs a dataset of many people: use "
                   "faceveil run")  # fmt: skip
    p.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = FaceveilParser(prog="faceveil", description=__doc__)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and Ray's "
                        "own console lines (off by default)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_shard, add_run_command, _add_demo, add_eval_command,
                add_cluster_command, add_lookup_command):  # fmt: skip
        add(sub)
    add_audit_faces_command(add_key_commands(sub))
    return parser


EXPECTED_ERRORS = (OSError, ValueError, RuntimeError, KeyFileError, KeyLibraryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``faceveil`` command; returns its ExitCode (argparse exits 2 on a usage error)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except EXPECTED_ERRORS as exc:
        return refused(exc)


if __name__ == "__main__":
    sys.exit(main())
