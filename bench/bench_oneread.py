"""Issue 12 part 6's benchmark: the surrogate job with and without one read of each image's faces.

Run from the repository root: ``python -m bench.bench_oneread`` (``--images 200`` distinct
lfw_dev photos in shards of ``--shard-size 50``, 2 rounds). The photos are linked into a scratch
folder under non-identifying names, with no replicas (a repeated image would find its twin's
record by its pixels and flatter the reuse). ``faceveil run --method surrogate --no-escrow`` (the
real CLI's arguments, a local Ray, one new team key) runs over them twice per round, the order
alternating: "on" is the job's default, where the second pass takes the detections, 68
landmarks and embeddings the first pass made of the same pixels; "off" sets the job config's
internal ``reuse_first_pass`` to False, which has no CLI option, so this script is also the
job's entry point (``python -m bench.bench_oneread --job run ... [--no-reuse]``).

Figures per run and as means: wall and CPU seconds of the whole command (Ray start, planning,
both passes, publishing: every process of its tree), images per CPU-second, and on / off
ratios; the images the "on" run's second pass reused and detected again (job.json); and
whether the two runs of each round wrote the same ``data/`` bytes. Target: images per
CPU-second roughly doubles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import (
    JobTimer,
    format_table,
    job_bench_parser,
    machine_info,
    replicate_dataset,
    source_images,
    versions,
)

CHOICES = ("off", "on")
NO_REUSE = "--no-reuse"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_bench_parser("bench_oneread", __doc__, rounds=2)
    p.add_argument("--images", type=int, default=200, help="distinct photos (at most lfw_dev's)")
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--run-args", default="", help="extra `faceveil run` options, quoted")
    return p.parse_args(argv)


def job(argv: list[str]) -> int:
    """``faceveil run`` with the config's ``reuse_first_pass`` off when ``--no-reuse`` is
    among ``argv`` (this script's own flag, taken out before the CLI parses the rest)."""
    from faceveil.jobs.cli import build_parser
    from faceveil.jobs.progress import configure_logging
    from faceveil.jobs.run import run_job
    from faceveil.jobs.run_cli import job_config

    reuse = NO_REUSE not in argv
    args = build_parser().parse_args([a for a in argv if a != NO_REUSE])
    configure_logging(args.log_format)
    config = job_config(args)
    config = replace(config, surrogate=replace(config.surrogate, reuse_first_pass=reuse))
    print(run_job(config).line())
    return 0


def _spread(paths: list[Path], count: int, per_folder: int = 3) -> list[Path]:
    """``count`` of ``paths``, at most ``per_folder`` from each folder (one person's photos in
    lfw_dev) in sorted order, so the first pass sees many people."""
    taken: dict[Path, int] = {}
    chosen = []
    for path in paths:
        if taken.get(path.parent, 0) < per_folder and len(chosen) < count:
            taken[path.parent] = taken.get(path.parent, 0) + 1
            chosen.append(path)
    if len(chosen) < count:
        raise SystemExit(f"--images {count}: only {len(chosen)} photos at {per_folder} a person")
    return chosen


def _data_digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((out / "data").iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _second_pass(out: Path) -> dict:
    return json.loads((out / "job.json").read_text())["surrogate"].get("second_pass", {})


def report(results: dict[str, list[tuple]], images: int) -> str:
    """Per-round and mean figures of each choice, and on / off ratios."""
    rows, per_cpu, walls = [], {}, {}
    for choice, runs in results.items():
        if any(count != images for _, _, count in runs):
            raise SystemExit(f"{choice}: a run did not read {images} samples")
        for r, (wall, cpu, _) in enumerate(runs):
            rows.append([f"reuse {choice} (round {r})", f"{wall:.1f}", f"{cpu:.1f}",
                         f"{images / cpu:.3f}"])  # fmt: skip
        walls[choice], cpu = JobTimer.mean(runs)
        per_cpu[choice] = images / cpu
        rows.append([f"reuse {choice}, mean", f"{walls[choice]:.1f}", f"{cpu:.1f}",
                     f"{per_cpu[choice]:.3f}"])  # fmt: skip
    table = format_table(["run", "wall s", "CPU s", "images per CPU-s"], rows)
    ratio = per_cpu["on"] / per_cpu["off"]
    return "\n".join([
        table,
        f"images per CPU-s, on / off: {ratio:.2f} (target: about 2)",
        f"wall time, off / on: {walls['off'] / walls['on']:.2f}",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--job"]:
        return job(argv[1:])
    args = parse_args(argv)
    print(json.dumps({**machine_info(), **versions(["ray", "onnxruntime", "dlib-bin"])}))
    sources = _spread(source_images(args.source), args.images)
    results: dict[str, list[tuple]] = {c: [] for c in CHOICES}
    digests: dict[int, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-oneread-") as tmp:
        from faceveil.jobs.keyfile import new_key_file

        work = Path(tmp)
        photos = work / "photos"
        replicate_dataset(sources[: args.images], photos, args.images)
        key = new_key_file(work / "team.key")
        timer = JobTimer(work, method="surrogate", entry=("-m", "bench.bench_oneread", "--job"))
        options = ["--key-file", str(key), "--no-escrow", "--shard-size", str(args.shard_size),
                   *args.run_args.split()]  # fmt: skip
        for r, choice in timer.alternated(CHOICES, args.rounds):
            out = work / f"out-{choice}-{r}"
            extra = [NO_REUSE] if choice == "off" else []
            results[choice].append(timer.run(photos, out, [*options, *extra]))
            digests.setdefault(r, {})[choice] = _data_digest(out)
            if choice == "on":
                print(f"round {r}, reuse on, second pass: {json.dumps(_second_pass(out))}")
    print(f"== {args.images} images, --method surrogate, shards of {args.shard_size}, "
          f"rounds {args.rounds}")  # fmt: skip
    print(report(results, args.images))
    same = all(d["on"] == d["off"] for d in digests.values())
    print(f"data/ bytes identical with reuse on and off: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
