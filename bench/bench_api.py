"""The Ray Dataset API (``faceveil.jobs.api.anonymize``) vs ``faceveil run`` on the same images.

Both run on one local Ray started here (FACEVEIL_RAY_TMPDIR), with the same actor pool
(``--num-actors``, one CPU each) and method (blur, CenterFace), over ``--images`` distinct
lfw_dev photos copied to a scratch folder: ``run`` plans the folder and writes tar shards
(``--no-escrow``); the API reads the folder with ``ray.data.read_binary_files`` and writes
Parquet. Printed: wall seconds and images/s of each (Ray's start is not counted; each one's
model loading is), and the ratio. Usage::

    python -m bench.bench_api --images 200 --num-actors 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import lfw_images, source_images


def _photos(dest: Path, count: int) -> Path:
    sources = source_images(lfw_images())[:count]
    if len(sources) < count:
        raise SystemExit(f"lfw_dev has only {len(sources)} photos")
    dest.mkdir(parents=True)
    for n, path in enumerate(sources):
        shutil.copyfile(path, dest / f"img_{n:06d}.jpg")
    return dest


def _run(photos: Path, out: Path, actors: int) -> float:
    from faceveil.jobs.config import EscrowConfig, JobConfig, PoolConfig
    from faceveil.jobs.keyfile import new_key_file
    from faceveil.jobs.run import run_job

    out.parent.mkdir(parents=True, exist_ok=True)
    secret = new_key_file(out.parent / "secret.key")
    shard_size = max(1, len(os.listdir(photos)) // actors)
    config = JobConfig(str(photos), str(out), pool=PoolConfig(actors),
                       escrow=EscrowConfig(no_escrow=True), secret_file=str(secret),
                       progress=False, shard_size=shard_size)  # fmt: skip
    started = time.perf_counter()
    summary = run_job(config)
    assert summary.samples_in == len(os.listdir(photos)), summary.line()
    return time.perf_counter() - started


def _api(photos: Path, out: Path, actors: int) -> float:
    import ray

    from faceveil.jobs.api import DatasetOptions, anonymize

    started = time.perf_counter()
    ds = ray.data.read_binary_files(str(photos))
    anon = anonymize(ds, image_column="bytes", options=DatasetOptions(num_actors=actors))
    anon.write_parquet(str(out))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--num-actors", type=int, default=1)
    args = parser.parse_args()
    import ray

    from faceveil.jobs.raypool import connect

    with tempfile.TemporaryDirectory(prefix="faceveil-bench-api-") as scratch:
        root = Path(scratch)
        photos = _photos(root / "photos", args.images)
        connect(None)
        try:
            api_s = _api(photos, root / "api-out", args.num_actors)
            run_s = _run(photos, root / "run" / "out", args.num_actors)
        finally:
            ray.shutdown()
    n = args.images
    print(f"images: {n}, actors: {args.num_actors}, method blur, detector centerface")
    print(f"faceveil run (tars):      {run_s:7.1f} s  {n / run_s:6.2f} images/s")
    print(f"jobs.api.anonymize (pq):  {api_s:7.1f} s  {n / api_s:6.2f} images/s")
    print(f"api / run images/s:       {run_s / api_s:7.2f}")


if __name__ == "__main__":
    main()
