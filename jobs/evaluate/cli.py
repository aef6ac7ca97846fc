"""CLI hook: ``faceveil eval`` (the top-level parser, ``jobs.cli``, calls it)."""

from __future__ import annotations

import argparse
import sys

from faceveil.anon_core.config import from_args
from faceveil.jobs.evaluate.config import (
    ATTACKS,
    DEFAULT_ATTACKS,
    JUDGES,
    AttackBudget,
    EvalConfig,
    PixelBudget,
    RecallConfig,
    parse_attacks,
    parse_methods,
)


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
    p.add_argument("--no-dlib-attacker", action="store_true",
                   help="do not add dlib's ResNet to the --attacker-model recognizers")  # fmt: skip
    add_attack_options(p)
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


def add_attack_options(
    p: argparse.ArgumentParser,
    attacks: tuple[str, ...] = DEFAULT_ATTACKS,
    recall_by: str | None = None,
) -> None:
    """The options of the attacks, their budget and the recall measurement, the same for
    ``faceveil eval`` and ``bench.bench_attacks`` (whose defaults are every attack and
    utkface_dev's labels): read back with :func:`attack_fields`."""
    p.add_argument("--attacks", default=",".join(attacks),
                   help=f"comma list of {','.join(ATTACKS)} (aligned always runs)")  # fmt: skip
    p.add_argument("--attack-epochs", type=int, default=AttackBudget.epochs,
                   help="parrot head training epochs (the same for every method)")  # fmt: skip
    p.add_argument("--finetune-steps", type=int, default=AttackBudget.finetune_steps,
                   help="parrot-finetune last-block steps (the same for every method)")  # fmt: skip
    p.add_argument("--pixel-steps", type=int, default=PixelBudget.steps,
                   help="inversion-pixels U-Net steps (the same for every method)")  # fmt: skip
    p.add_argument("--attack-seed", type=int, default=AttackBudget.seed,
                   help="which identities train the learning attackers and their start (another "
                        "seed: another split, to see how far a figure moves)")  # fmt: skip
    p.add_argument("--attack-splits", type=int, default=AttackBudget.splits,
                   help="run the learning attackers on this many identity splits (seeds "
                        "--attack-seed and on) of the same output and pool them")  # fmt: skip
    p.add_argument("--recall-by", default=recall_by,
                   help="labels CSV (UTKFace style): recall per gender, race, age")  # fmt: skip
    p.add_argument("--small-faces", type=int, default=RecallConfig.small_faces,
                   help="labelled faces composited into scenes at 16-48 px (0: none)")  # fmt: skip


def attack_fields(args: argparse.Namespace) -> dict:
    """The EvalConfig fields that :func:`add_attack_options`' options describe."""
    return {
        "attacks": parse_attacks(args.attacks),
        "budget": AttackBudget(
            epochs=args.attack_epochs,
            finetune_steps=args.finetune_steps,
            pixels=PixelBudget(steps=args.pixel_steps),
            seed=args.attack_seed,
            splits=args.attack_splits,
        ),
        "recall": RecallConfig(labels=args.recall_by, small_faces=args.small_faces),
    }


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig that ``faceveil eval`` arguments describe (options named as its fields are
    taken as they are)."""
    return from_args(
        EvalConfig,
        args,
        report_dir=args.report,
        methods=parse_methods(args.methods),
        attacker_models=tuple(args.attacker_model),
        dlib_attacker=not args.no_dlib_attacker,
        **attack_fields(args),
        utility=not args.no_utility,
        progress=not args.no_progress,
    )


def eval_command(args: argparse.Namespace) -> int:
    """Run ``faceveil eval``; 0 on success, 1 (one ``error:`` line) on bad input."""
    from faceveil.jobs.evaluate.report import text_table, write_eval_report
    from faceveil.jobs.evaluate.runner import run_eval

    try:
        config = eval_config(args)
        result = run_eval(config)
    except (ValueError, FileNotFoundError) as exc:
        # the one error line and ExitCode.REFUSED of jobs.exitcodes (evaluate imports only
        # anon_core)
        print(f"error: eval: {exc}", file=sys.stderr)
        return 1
    write_eval_report(result, config.report_dir)
    print(text_table(result.report))
    print(f"report: {config.report_dir.rstrip('/')}/index.html")
    return 0
