"""Issue 15's benchmark: Parquet in and out vs WebDataset in and out, the same images, one run.

Run from the repository root: ``python -m bench.bench_formats --images 2000``. The same
``--images`` lfw_dev photos (replicated, 250 x 250 JPEG) are written twice: as raw WebDataset
tars (``NNNNNN.jpg`` members) and as Parquet files with a Hugging Face image struct column, in
as many files of ``--file-size`` images each. ``faceveil run`` (real CLI, local Ray, ``--method
blur``, ``--no-escrow``) then anonymizes each: tars to a WebDataset output, Parquet to a Parquet
output. Rounds alternate the order so a busy machine slows both alike; wall time is the whole
command (Ray start, planning, actors, publishing). Target: Parquet within 10 % of WebDataset.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.common import (
    JobTimer,
    format_table,
    job_bench_parser,
    machine_info,
    source_images,
    versions,
)

FORMATS = ("webdataset", "parquet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_bench_parser("bench_formats", __doc__, rounds=2)
    p.add_argument("--images", type=int, default=2000, help="images in each dataset")
    p.add_argument("--file-size", type=int, default=500, help="images per input tar or Parquet")
    p.add_argument("--run-args", default="", help="extra `faceveil run` options, quoted")
    return p.parse_args(argv)


def _images(source: Path, count: int) -> list[bytes]:
    files = source_images(source)
    return [files[i % len(files)].read_bytes() for i in range(count)]


def write_inputs(images: list[bytes], root: Path, file_size: int) -> dict[str, Path]:
    """The same images as raw WebDataset tars and as Parquet files (HF image struct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wds, parquet = root / "in-webdataset", root / "in-parquet"
    wds.mkdir(parents=True)
    parquet.mkdir(parents=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})
    for n, start in enumerate(range(0, len(images), file_size)):
        chunk = images[start : start + file_size]
        with tarfile.open(wds / f"part-{n:05d}.tar", "w") as tar:
            for i, data in enumerate(chunk):
                info = tarfile.TarInfo(f"{start + i:06d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        column = pa.array([{"bytes": d, "path": None} for d in chunk], struct)
        index = pa.array(range(start, start + len(chunk)), pa.int64())
        table = pa.table({"image": column, "index": index})
        table = table.replace_schema_metadata({"huggingface": features})
        pq.write_table(table, parquet / f"part-{n:05d}.parquet")
    return {"webdataset": wds, "parquet": parquet}


def report(results: dict[str, list[tuple]], images: int) -> str:
    """Per-round and mean figures of each format, and Parquet's ratios to WebDataset's."""
    rows, rates, per_cpu = [], {}, {}
    for fmt, runs in results.items():
        if any(count != images for _, _, count in runs):
            raise SystemExit(f"{fmt}: a run did not read {images} samples")
        for r, (wall, cpu, _) in enumerate(runs):
            rows.append([f"{fmt} (round {r})", f"{wall:.1f}", f"{images / wall:.2f}",
                         f"{images / cpu:.2f}"])  # fmt: skip
        wall, cpu = JobTimer.mean(runs)
        rates[fmt], per_cpu[fmt] = images / wall, images / cpu
        rows.append([f"{fmt} in -> {fmt} out, mean", f"{wall:.1f}", f"{rates[fmt]:.2f}",
                     f"{per_cpu[fmt]:.2f}"])  # fmt: skip
    table = format_table(["run", "wall s", "images/s", "images per CPU-s"], rows)
    lines = [table]
    for name, figures in (("images/s", rates), ("images per CPU-s", per_cpu)):
        ratio = figures["parquet"] / figures["webdataset"]
        verdict = "met" if ratio >= 0.90 else "NOT met"
        lines.append(f"parquet / webdataset {name}: {ratio:.3f} "
                     f"(target: Parquet at most 10% slower: {verdict})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps({**machine_info(), **versions(["ray", "pyarrow", "onnxruntime"])}))
    extra = args.run_args.split()
    results: dict[str, list[tuple]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        work = Path(tmp)
        inputs = write_inputs(_images(args.source, args.images), work, args.file_size)
        timer = JobTimer(work)
        for r, fmt in timer.alternated(FORMATS, args.rounds):
            options = ["--no-escrow", "--output-format", fmt, *extra]
            results[fmt].append(timer.run(inputs[fmt], work / f"out-{fmt}-{r}", options))
    print(f"== {args.images} images, --method blur, rounds {args.rounds}")
    print(report(results, args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
