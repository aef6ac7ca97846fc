"""CLI hooks: ``faceveil eval`` and ``faceveil audit faces`` (the lead's parser calls these)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from jobs.evaluate.config import JUDGES, EvalConfig, parse_methods

if TYPE_CHECKING:
    from jobs.evaluate.audit import AuditSampler


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``faceveil`` subcommands (handler: ``args.handler(args) -> int``)."""
    p = subparsers.add_parser(
        "eval",
        help="privacy / utility / recall / throughput report of anonymization methods",
        description="Anonymize a labelled face set with each method in-process and write a "
        "report (report.json + index.html) of re-identification, utility, recall and speed.",
    )
    p.add_argument("--images", required=True, help="root of the labelled images")
    p.add_argument("--identities", required=True, help="manifest CSV with path,identity")
    p.add_argument("--attributes", help="attribute labels CSV (UTKFace style) for attribute probes")
    p.add_argument("--methods", default="blur,pixelate,mask", help="comma list; name:key=value")
    p.add_argument(
        "--attacker-model",
        action="append",
        default=[],
        help="recognition ONNX (repeatable); default: dlib's recognizer",
    )
    p.add_argument("--report", required=True, help="output directory (path or fsspec URL)")
    p.add_argument("--detector", default="centerface", choices=["centerface", "scrfd"])
    p.add_argument("--second-detector", choices=["centerface", "scrfd"])
    p.add_argument("--model-root", help="directory with SCRFD weights")
    p.add_argument("--limit-identities", type=int, help="first N identities with 2+ images")
    p.add_argument("--far", type=float, default=1e-3, help="false accept rate for TAR")
    p.add_argument("--examples", type=int, default=6, help="before/after examples in the page")
    p.add_argument("--no-utility", action="store_true", help="privacy and throughput only")
    p.add_argument(
        "--attribute-faces", type=int, default=200, help="faces per method for attribute agreement"
    )
    p.add_argument("--attribute-judge", default="dlib", choices=JUDGES,
                   help="embeddings the attribute probes read (attacker: the first "
                   "--attacker-model; both: dlib's and the attacker's)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=eval_command)
    return p


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig that ``faceveil eval`` arguments describe."""
    return EvalConfig(
        images=args.images,
        identities=args.identities,
        report_dir=args.report,
        methods=parse_methods(args.methods),
        attacker_models=tuple(args.attacker_model),
        attributes=args.attributes,
        detector=args.detector,
        second_detector=args.second_detector,
        model_root=args.model_root,
        limit_identities=args.limit_identities,
        utility=not args.no_utility,
        attribute_faces=args.attribute_faces,
        attribute_judge=args.attribute_judge,
        far=args.far,
        examples=args.examples,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )


def eval_command(args: argparse.Namespace) -> int:
    """Run ``faceveil eval``; 0 on success, 2 on bad input."""
    from jobs.evaluate.report import text_table, write_eval_report
    from jobs.evaluate.runner import run_eval

    try:
        config = eval_config(args)
        result = run_eval(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"faceveil eval: {exc}", file=sys.stderr)
        return 2
    write_eval_report(result, config.report_dir)
    print(text_table(result.report))
    print(f"report: {config.report_dir.rstrip('/')}/index.html")
    return 0


def add_audit_faces_command(
    audit_subparsers: argparse._SubParsersAction,
) -> argparse.ArgumentParser:
    """Add ``faces`` under ``faceveil audit``; its handler is ``args.handler(args) -> int``."""
    p = audit_subparsers.add_parser(
        "faces",
        help="look for faces the job left un-anonymized, with a different detector",
        description="Run a second detector over OUT/data/shard-*.tar and list every face it finds "
        "outside the face regions the job recorded. Exit 0 if none, 1 if any (or if a sample "
        "could not be checked), 2 on bad input. Writes OUT/report/residual_faces.json.",
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
    from jobs.evaluate.residual import ResidualConfig, find_residual_faces, write_residual_report

    config = ResidualConfig(
        out=args.out,
        detector=args.detector,
        model_root=args.model_root,
        threshold=args.threshold,
        min_iou=args.min_iou,
        min_cover=args.min_cover,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    try:
        report = find_residual_faces(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"faceveil audit faces: {exc}", file=sys.stderr)
        return 2
    where = write_residual_report(config, report)
    print(f"{report.samples} samples in {report.shards} shards checked with {config.detector}")
    if report.leaks:
        print(f"{'shard':<20} {'key':<34} {'score':>6}  bbox")
        for r in report.leaks:
            print(f"{r.shard:<20} {r.key:<34} {r.score:>6.3f}  {r.bbox}")
    for u in report.unchecked:
        print(f"unchecked: {u['shard']} {u['key']}: {u['reason']}")
    keys = {(r.shard, r.key) for r in report.leaks}
    print(f"{len(report.leaks)} residual faces in {len(keys)} samples; report: {where}")
    return 0 if report.clean else 1


def add_audit_run_options(run_parser: argparse.ArgumentParser) -> None:
    """Add the in-job audit options to ``faceveil run`` (see ``audit_sampler_from_args``)."""
    g = run_parser.add_argument_group("in-job audit (writes OUT/report/)")
    g.add_argument(
        "--audit-sample", type=float, default=0.0, metavar="F",
        help="measure a random fraction F of faces inside the workers (0: off)",
    )  # fmt: skip
    g.add_argument("--audit-seed", default="0", help="seed of the audit's face selection")
    g.add_argument(
        "--audit-attacker", help="recognition ONNX for the audit (default: dlib's recognizer)"
    )
    g.add_argument(
        "--report-originals", action="store_true",
        help="keep and show original face crops beside anonymized ones in the audit report",
    )  # fmt: skip


def audit_sampler_from_args(
    args: argparse.Namespace, model_root: str | None = None
) -> AuditSampler | None:
    """The ``AuditSampler`` that ``faceveil run`` options ask for, or None when auditing is off."""
    from jobs.evaluate.audit import AuditSampler

    if not getattr(args, "audit_sample", 0.0):
        return None
    return AuditSampler(
        args.audit_sample,
        seed=args.audit_seed,
        attacker=args.audit_attacker,
        model_root=model_root,
        keep_originals=args.report_originals,
    )
