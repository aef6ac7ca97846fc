"""``faceveil run``: its options, the ``JobConfig`` they describe, and the handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from faceveil.anon_core import methods
from faceveil.anon_core.detectors import NAMES as DETECTORS
from faceveil.anon_core.imageio import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from faceveil.anon_core.pipeline import AnonConfig
from faceveil.anon_core.surrogate.synthesis import DEFAULT_PRIVACY
from faceveil.jobs.config import (
    AuditConfig,
    DataConfig,
    EscrowConfig,
    JobConfig,
    PoolConfig,
    SurrogateConfig,
)
from faceveil.jobs.datawriter import OutputFormat
from faceveil.jobs.exitcodes import ExitCode
from faceveil.jobs.parquetin import InputColumns


def add_max_file_bytes_arg(p) -> None:
    """``--max-file-bytes``, shared by ``shard`` and ``run``."""
    p.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, metavar="N",
                   help="larger image files and tar members are quarantined unread "
                   "(default 256 MiB)")  # fmt: skip


def _add_run_options(p) -> None:
    p.add_argument("--method", default="blur", choices=methods.available())
    p.add_argument("--detector", default="centerface", choices=DETECTORS)
    p.add_argument("--model-root", help="folder with InsightFace ONNX models (for scrfd)")
    p.add_argument("--det-threshold", type=float, help="detector score threshold (default: "
                   "low, favouring recall)")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    add_max_file_bytes_arg(p)
    p.add_argument("--num-actors", type=int, help="(default: as many as the cluster's resources "
                   "allow, one CPU left free)")  # fmt: skip
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--resume", action="store_true", help="skip shards already done")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--secret-file", help="32-byte secret the sample ids are keyed with (default "
                   "~/.faceveil/secret.key; either is created on first use)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    sur = p.add_argument_group("surrogate (--method surrogate)")
    sur.add_argument("--key-file", help="the team's pseudonym key (faceveil key new)")
    sur.add_argument("--privacy", type=float, help="0..1: how far face shape moves toward the "
                     f"donors' (default {DEFAULT_PRIVACY})")  # fmt: skip
    sur.add_argument("--donors", type=int, help="people averaged into one surrogate (>= 4, "
                     "default 6)")  # fmt: skip
    sur.add_argument("--linkage", choices=("person", "none"), help="person: one surrogate "
                     "and pseudonym per person across the dataset (pseudonymous); none: a fresh "
                     "surrogate per face, nothing links two photos of one person (default: "
                     "person)")  # fmt: skip
    sur.add_argument("--recognizer", help="InsightFace recognition ONNX (a path, or a file in "
                     "--model-root) for identity clusters (default: dlib's ResNet)")  # fmt: skip
    sur.add_argument("--first-pass-shards", type=int, help="shards sampled for identities "
                     "and donors (default: all)")  # fmt: skip
    sur.add_argument(
        "--max-donor-faces",
        type=int,
        default=1024,
        help="donor candidates held in memory (default 1024)",
    )
    sur.add_argument("--attributes", metavar="LABELS_CSV", help="your labelled faces (path, "
                     "age, gender 0/1, race): donors then share gender and age")  # fmt: skip
    escrow = p.add_argument_group("escrow (choose one)")
    escrow.add_argument("--custodians", nargs="+", default=[], metavar="PUB",
                        help="custodian public key files (faceveil custodian keygen)")  # fmt: skip
    escrow.add_argument("--threshold", type=int, default=0, metavar="M",
                        help="approvals needed to restore (M of the N custodians)")  # fmt: skip
    escrow.add_argument("--kms", metavar="aws-kms:KEY_ARN", help="wrap the master key with KMS")
    escrow.add_argument("--no-escrow", action="store_true",
                        help="seal nothing: the originals become unrecoverable")  # fmt: skip
    p.add_argument("--audit-anchor", metavar="URL", help="also write every tail of the audit log "
                   "here, each as a new object (a path or s3://bucket/prefix, ideally with S3 "
                   "Object Lock), so that `faceveil audit verify` detects a cut log")  # fmt: skip


def _add_privacy_sample_options(p) -> None:
    g = p.add_argument_group("in-job privacy sample (writes OUT/report/)")
    g.add_argument(
        "--audit-sample", type=float, default=0.0, metavar="F",
        help="measure a random fraction F of faces inside the workers (0: off)",
    )  # fmt: skip
    g.add_argument("--audit-seed", default="0", help="seed of the sample's face selection")
    g.add_argument(
        "--audit-attacker", help="recognition ONNX for the sample (default: dlib's recognizer)"
    )
    g.add_argument(
        "--report-originals", action="store_true",
        help="keep and show original face crops beside anonymized ones in the sample's report",
    )  # fmt: skip


def _add_data_options(p) -> None:
    g = p.add_argument_group("dataset formats (Parquet in and out, known boxes)")
    g.add_argument("--image-column", default="image", metavar="NAME",
                   help="Parquet input: the column with the image, raw bytes or a Hugging Face "
                   "image struct {bytes, path} (its path is dropped); also the image column of "
                   "a Parquet output (default: %(default)s)")  # fmt: skip
    g.add_argument("--drop-columns", default="", metavar="A,B",
                   help="Parquet input columns not carried to a Parquet output, e.g. ones that "
                   "may identify people (url, caption); every other column is carried unchanged "
                   "(default: none)")  # fmt: skip
    g.add_argument("--boxes-column", metavar="NAME",
                   help="known face boxes, anonymized in addition to what the detector finds: "
                   "a Parquet column, or a field of each WebDataset sample's .json; a list of "
                   "[x1, y1, x2, y2] per image (default: none)")  # fmt: skip
    g.add_argument("--boxes-units", choices=("normalized", "pixels"), default="normalized",
                   help="normalized: fractions 0..1 of the width and height, as LAION/DataComp "
                   "face_bboxes; pixels: pixel coordinates (default: %(default)s)")  # fmt: skip
    g.add_argument("--output-format", choices=[str(f) for f in OutputFormat],
                   default=str(OutputFormat.WEBDATASET),
                   help="data/ as WebDataset tars (KEY.jpg + KEY.json) or Parquet shards with a "
                   "Hugging Face image column (default: %(default)s)")  # fmt: skip
    g.add_argument("--output-image-format", choices=("jpg", "png"),
                   help="the one image format of every output image (default: png when every "
                   "input image is lossless (png, bmp, tiff, gif), else jpg)")  # fmt: skip


def _data_config(args: argparse.Namespace) -> DataConfig:
    columns = InputColumns(
        image_column=args.image_column,
        boxes_column=args.boxes_column,
        boxes_normalized=args.boxes_units == "normalized",
        drop_columns=tuple(c.strip() for c in args.drop_columns.split(",") if c.strip()),
    )
    return DataConfig(columns, OutputFormat(args.output_format), args.output_image_format)


def add_run_command(sub) -> None:
    """Add ``run`` to the ``faceveil`` subcommands."""
    p = sub.add_parser("run", help="anonymize a dataset into OUT on a Ray actor pool")
    p.add_argument(
        "input",
        help="sharded input (with shards.json), loose images or raw tars "
        "(read in place), or Parquet files (a file, glob, folder or s3:// prefix)",
    )
    p.add_argument("output")
    _add_run_options(p)
    _add_data_options(p)
    _add_privacy_sample_options(p)
    p.set_defaults(handler=_run)


def _surrogate_options(args: argparse.Namespace) -> dict:
    """Method options from --privacy/--donors/--linkage; refused with any method but surrogate."""
    flags = (("privacy", args.privacy), ("donors", args.donors), ("linkage", args.linkage))
    given = {k: v for k, v in flags if v is not None}
    strays = [f"--{k}" for k in given] + [
        flag
        for flag, v in (("--recognizer", args.recognizer), ("--attributes", args.attributes))
        if v
    ]
    if args.method != "surrogate" and strays:
        raise ValueError(f"{', '.join(strays)} apply to --method surrogate only")
    if args.method != "surrogate":
        return {}
    options = {"privacy": DEFAULT_PRIVACY, "donors": 6, "linkage": "person", **given}
    if not 0.0 <= options["privacy"] <= 1.0:
        raise ValueError(f"--privacy must be in [0, 1], got {options['privacy']}")
    if options["donors"] < 4:
        raise ValueError(f"--donors must be at least 4 (k-Same), got {options['donors']}")
    return options


def _recognizer(args: argparse.Namespace) -> str | None:
    """--recognizer as given, or as a file name inside --model-root."""
    if not args.recognizer or Path(args.recognizer).is_file() or not args.model_root:
        return args.recognizer
    inside = Path(args.model_root) / args.recognizer
    return str(inside) if inside.is_file() else args.recognizer


def job_config(args: argparse.Namespace) -> JobConfig:
    """The JobConfig described by parsed ``run`` arguments."""
    anon = AnonConfig(
        method=args.method,
        method_options=_surrogate_options(args),
        detector=args.detector,
        model_root=args.model_root,
        threshold=args.det_threshold,
        max_pixels=args.max_pixels,
        max_file_bytes=args.max_file_bytes,
        recognizer=_recognizer(args),
    )
    pool = PoolConfig(args.num_actors, args.cpus_per_actor, args.gpus_per_actor, args.batch_size)
    escrow = EscrowConfig(tuple(args.custodians), args.threshold, args.kms, args.no_escrow)
    audit = AuditConfig(args.audit_sample, args.audit_seed, args.audit_attacker,
                        args.report_originals, args.audit_anchor)  # fmt: skip
    return JobConfig(
        input=args.input,
        output=args.output,
        anon=anon,
        pool=pool,
        escrow=escrow,
        audit=audit,
        surrogate=SurrogateConfig(
            args.key_file, args.first_pass_shards, args.max_donor_faces, args.attributes
        ),
        data=_data_config(args),
        shard_size=args.shard_size,
        resume=args.resume,
        address=args.address,
        secret_file=args.secret_file,
        progress=not args.no_progress and sys.stderr.isatty(),
        log_format=args.log_format,
    )


def _run(args: argparse.Namespace) -> int:
    from faceveil.jobs.run import run_job

    summary = run_job(job_config(args))
    print(summary.line())
    if summary.audit_key_id:
        print(f"audit: job signing key {summary.audit_key_id}, tail {summary.audit_tail} "
              "(record both outside OUT: faceveil audit verify OUT --job-key ID)")  # fmt: skip
    return ExitCode.OK
