"""Issue 6's benchmark: does a job's memory stay flat as the dataset grows?

Run from the repository root: ``python -m bench.bench_memory`` (1x = 40 images; 1x, 5x, 20x).
Each size is one ``faceveil run`` (a local Ray, ``--no-escrow``) on replicas of the same images;
the whole process tree (driver, Ray's GCS and raylet, every worker) is sampled from /proc, and its
peak summed RSS and PSS are printed with throughput. The figure that matters is the ratio of
the largest run's peak to the 1x peak (target <= 1.2): memory must not grow with images or shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import (
    format_table,
    machine_info,
    mib,
    replicate_dataset,
    run_measured,
    run_summary,
    shared_root,
    source_images,
)

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_memory", description=__doc__)
    p.add_argument("--images", type=int, default=40, help="images at 1x")
    p.add_argument("--scales", default="1,5,20", help="dataset sizes, as multiples of --images")
    p.add_argument("--shard-size", type=int, default=20, help="images per shard")
    p.add_argument("--source", type=Path, help="folder of images to replicate (default: "
                   "../shared/data/lfw_dev/images, else the bundled photos at 250 px)")  # fmt: skip
    p.add_argument("--faceveil-args", default="", help="extra `faceveil run` options, quoted")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.scales = sorted({int(s) for s in args.scales.split(",")})
    if args.images < 1 or args.shard_size < 1 or args.scales[0] < 1:
        p.error("--images, --shard-size and every scale must be at least 1")
    return args


def source_folder(args: argparse.Namespace, work: Path) -> Path:
    """--source, else LFW from ../shared, else 250-pixel crops of the bundled photos."""
    if args.source:
        return args.source
    lfw = shared_root() / "data" / "lfw_dev" / "images"
    if lfw.is_dir():
        return lfw
    from faceveil.jobs.demo import sample_images

    folder = work / "source"
    folder.mkdir(parents=True)
    for i, (name, data) in enumerate(sample_images(10, side=250)):
        (folder / f"src_{i:02d}{Path(name).suffix}").write_bytes(data)
    return folder


def run_one(data: Path, work: Path, args: argparse.Namespace) -> dict:
    """``faceveil run`` on ``data`` into a fresh OUT, its process tree sampled."""
    faceveil = Path(sys.executable).with_name("faceveil")
    command = [str(faceveil), "--log-format", "json", "run", str(data), str(work / "out"),
               "--no-escrow",
               "--no-progress", "--shard-size", str(args.shard_size),
               *args.faceveil_args.split()]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["FACEVEIL_SECRET"] = str(work.parent / "secret.key")
    env["FACEVEIL_RAY_TMPDIR"] = str(work.parent / "ray")
    m = run_measured(command, work, env=env, interval=args.interval, pss_interval=1.0)
    found = run_summary(m.stdout)
    if m.returncode != 0 or found is None:
        tail = "\n".join((m.stdout + m.stderr).splitlines()[-20:])
        raise SystemExit(f"faceveil run failed (exit {m.returncode}):\n{tail}")
    shards, images = found.shards_total, found.samples_in
    start = pool_start(m.stderr)
    end = max(p.stat().st_mtime for p in (work / "out" / "_done").glob("*.json"))
    window = max(end - start, 1e-6)
    return {"images": images, "shards": shards, "quarantined": found.quarantined,
            "faces": found.faces, "peak_rss": m.peak_rss, "peak_pss": m.peak_pss,
            "wall_s": m.wall_s, "processing_s": window, "images_per_s": images / window,
            "shards_per_s": shards / window, "e2e_images_per_s": images / m.wall_s,
            "cpu_s": m.cpu_s, "command": command}  # fmt: skip


def pool_start(stderr: str) -> float:
    """Epoch time of the job's "processing N shards on K actors" JSON log record."""
    for line in stderr.splitlines():
        if line.startswith("{") and '"processing ' in line:
            return float(json.loads(line)["time"])
    raise SystemExit("faceveil logged no 'processing N shards on K actors' record")


def report(runs: dict[int, dict]) -> dict:
    """Print the table and the largest/1x ratios; returns the ratios."""
    rows = [(f"{scale}x", r["images"], r["shards"], f"{mib(r['peak_rss']):.0f}",
             f"{mib(r['peak_pss']):.0f}", f"{r['wall_s']:.1f}", f"{r['images_per_s']:.1f}",
             f"{r['shards_per_s']:.2f}", f"{r['e2e_images_per_s']:.1f}")
            for scale, r in runs.items()]  # fmt: skip
    headers = ("size", "images", "shards", "peak RSS MiB", "peak PSS MiB", "wall s",
               "images/s", "shards/s", "images/s (e2e)")  # fmt: skip
    print(format_table(headers, rows))
    small, large = runs[min(runs)], runs[max(runs)]
    pss = large["peak_pss"] / small["peak_pss"] if small["peak_pss"] else None
    ratios = {"rss": large["peak_rss"] / small["peak_rss"], "pss": pss}
    label = f"{max(runs)}x / {min(runs)}x"
    verdict = "ok" if ratios["rss"] <= TARGET_RATIO else "ABOVE TARGET"
    print(f"peak memory ratio {label}: summed RSS {ratios['rss']:.3f} (target <= "
          f"{TARGET_RATIO}, {verdict})", end="")  # fmt: skip
    print(f", summed PSS {ratios['pss']:.3f}" if ratios["pss"] else "")
    print("images/s, shards/s: over the processing window (pool start -> last marker); "
          "e2e: over the whole command, Ray start-up included")  # fmt: skip
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fv-mem-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sources = source_images(source_folder(args, work))
        print(f"machine: {json.dumps(machine_info())}")
        print(f"source: {len(sources)} images replicated; 1x = {args.images} images, shard "
              f"size {args.shard_size}", flush=True)  # fmt: skip
        runs = {}
        for scale in args.scales:
            data = work / f"data-{scale}x"
            replicate_dataset(sources, data, scale * args.images)
            print(f"running {scale}x ({scale * args.images} images) ...", file=sys.stderr,
                  flush=True)  # fmt: skip
            runs[scale] = run_one(data, work / f"run-{scale}x", args)
            shutil.rmtree(data)
        ratios = report(runs)
        if args.json:
            args.json.write_text(json.dumps({"runs": runs, "ratios": ratios}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
