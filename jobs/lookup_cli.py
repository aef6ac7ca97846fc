"""``faceveil lookup OUT --secret-file FILE FILE_OR_URI...``: parse, call jobs.lookup, print."""

from __future__ import annotations

import argparse

from faceveil.jobs.exitcodes import ExitCode
from faceveil.jobs.lookup import LookupStatus, lookup


def _lookup(args: argparse.Namespace) -> int:
    from faceveil.jobs.keyfile import load_secret
    from faceveil.jobs.storage import Location

    results = lookup(Location(args.out), load_secret(args.secret_file, create=False), args.sources)
    for r in results:
        where = f"{r.status} ({r.shard})" if r.shard else r.status
        if r.status == LookupStatus.QUARANTINED:
            where += f": {r.stage}: {r.reason}"
        print(f"{r.given}\t{r.sample_id}\t{where}")
    absent = any(r.status == LookupStatus.ABSENT for r in results)
    return ExitCode.REFUSED if absent else ExitCode.OK


def add_lookup_command(sub) -> None:
    """``faceveil lookup``: exit 0 when every sample is in the job, 1 when some are not."""
    p = sub.add_parser(
        "lookup",
        help="subject access: the sample id of each file or URI and where it is in OUT",
        description="Prints, per FILE_OR_URI, its pseudonymous sample id and whether that "
        "sample is in data/ (anonymized), in quarantine/ (with its reason) or not in this job. "
        "Exit status: 0 all found, 1 some not in this job (or OUT cannot be read), 2 usage error.",
    )
    p.add_argument("out", metavar="OUT", help="the job's output tree (path or s3:// URL)")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="FILE_OR_URI",
        help="a source file or URI as the job read it; TAR#MEMBER for a member of an input tar",
    )
    p.add_argument("--secret-file", required=True, help="the job secret (--secret-file of the run)")
    p.set_defaults(handler=_lookup)
