"""``faceveil audit faces``: parse, run the residual-face check (``jobs.residual``), print."""

from __future__ import annotations

import argparse

from faceveil.anon_core.config import from_args
from faceveil.jobs.exitcodes import ExitCode, refused


def add_audit_faces_command(
    audit_subparsers: argparse._SubParsersAction,
) -> argparse.ArgumentParser:
    """Add ``faces`` under ``faceveil audit``; its handler is ``args.handler(args) -> int``."""
    p = audit_subparsers.add_parser(
        "faces",
        help="look for faces the job left un-anonymized, with a different detector",
        description="Run a second detector over OUT/data/shard-*.tar and list every face it finds "
        "outside the face regions the job recorded. Exit 0 if none, 1 if any (or if a sample "
        "could not be checked, or OUT cannot be read), 2 on a usage error. Writes "
        "OUT/report/residual_faces.json.",
    )
    p.add_argument("out", help="job output (local path or fsspec URL such as s3://bucket/out)")
    p.add_argument("--detector", default="scrfd", choices=["centerface", "scrfd"])
    p.add_argument("--model-root", help="directory with SCRFD weights")
    p.add_argument("--threshold", type=float, help="detector score threshold")
    p.add_argument("--min-iou", type=float, default=0.3, help="IoU with a recorded box that covers")
    p.add_argument(
        "--min-cover",
        type=float,
        default=0.5,
        help="share of a detection inside a region that covers",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=audit_faces_command)
    return p


def audit_faces_command(args: argparse.Namespace) -> int:
    """Run ``faceveil audit faces``."""
    from faceveil.jobs.residual import ResidualConfig, find_residual_faces, write_residual_report

    config = from_args(ResidualConfig, args, progress=not args.no_progress)
    try:
        report = find_residual_faces(config)
    except (ValueError, FileNotFoundError) as exc:
        return refused(f"audit faces: {exc}")
    where = write_residual_report(config, report)
    print(f"{report.samples} samples in {report.shards} shards checked with {config.detector}")
    if report.leaks:
        print(f"{'shard':<20} {'sample id':<34} {'score':>6}  bbox")
        for r in report.leaks:
            print(f"{r.shard:<20} {r.sample_id:<34} {r.score:>6.3f}  {r.bbox}")
    for u in report.unchecked:
        print(f"unchecked: {u['shard']} {u['key']}: {u['reason']}")
    samples = {(r.shard, r.sample_id) for r in report.leaks}
    print(f"{len(report.leaks)} residual faces in {len(samples)} samples; report: {where}")
    return ExitCode.OK if report.clean else ExitCode.REFUSED
