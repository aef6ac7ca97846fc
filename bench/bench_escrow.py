"""Escrow v2's benchmark: what scoped release costs, and what escrow costs a job.

Run from the repository root: ``python -m bench.bench_escrow`` (``--samples 10000``,
``--job-images 1000``). Two parts, printed side by side:

1. *Restore scaling* (library, no Ray): a job of ``--samples`` samples in shards of 1,000, each
   sample a real face crop (lfw_dev) sealed exactly as a worker seals it (one face row, one
   whole-sample row, a data key wrapped to the 2-of-3 escrow's public key). Restores of 1, 1,000
   and every sample: request size, approval size and time per custodian, and apply time
   (checking every partial's proof, combining, unwrapping and opening the rows).
2. *Job throughput* (real ``faceveil run`` on a local Ray): the same ``--job-images`` lfw_dev
   images with ``--no-escrow`` and with 2-of-3 custodians, rounds alternating the order;
   images/s end to end and images per CPU-second. Target: escrow costs <= 10% of images/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    JobTimer,
    format_table,
    job_bench_parser,
    machine_info,
    replicate_dataset,
    source_images,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_bench_parser("bench_escrow", __doc__, rounds=1)
    p.add_argument("--samples", type=int, default=10_000, help="samples in the sealed job")
    p.add_argument("--job-images", type=int, default=1000, help="images per faceveil run")
    p.add_argument("--skip-job", action="store_true", help="only the restore part")
    return p.parse_args(argv)


def _face_crops(source: Path, count: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from faceveil.anon_core.imageio import crop_png

    crops = []
    for path in source_images(source)[: min(count, 200)]:
        with Image.open(path) as img:
            rgb = np.array(img.convert("RGB"))
        crops.append(crop_png(rgb, (70, 60, 180, 190)))
    return crops


def _sealed_job(workdir: Path, samples: int, source: Path):
    """Shards of sealed samples as a worker writes them; returns (escrow, custodians, refs,
    manifests by shard, seconds spent sealing)."""
    from faceveil.manifests.custodian import CustodianPrivate
    from faceveil.manifests.escrow import ShamirPolicy, create_escrow
    from faceveil.manifests.jobkeys import epoch_sealing
    from faceveil.manifests.keymanifest import SampleToSeal, ShardSealer, load_key_manifest
    from faceveil.manifests.request import SampleRef

    custodians = [CustodianPrivate.generate(n) for n in ("alice", "bob", "carol")]
    escrow = create_escrow("bench", ShamirPolicy(2, tuple(c.public() for c in custodians)))
    sealing = epoch_sealing(escrow, escrow.escrow_ids[0])
    crops = _face_crops(source, samples)
    refs, manifests, sealing_s = [], {}, 0.0
    for start in range(0, samples, 1000):
        shard = f"shard-{start // 1000:06d}"
        started = time.perf_counter()
        sealer = ShardSealer(sealing.shard_keys(shard), shard)
        for i in range(start, min(start + 1000, samples)):
            sample = SampleToSeal(f"{i:032x}", f"s3://b/{i}.jpg", "0" * 64)
            sealer.seal_face(sample, 0, (70, 60, 180, 190), crops[i % len(crops)])
            sealer.seal_sample(sample)
        data = sealer.manifest_bytes()
        sealing_s += time.perf_counter() - started
        manifest = load_key_manifest(data)
        manifests[shard] = manifest
        refs += [
            SampleRef(shard, r.sample_id, sealing.escrow_id, r.wrapped_key)
            for r in manifest.rows
            if r.face < 0
        ]
        (workdir / f"{shard}.parquet").write_bytes(data)
    return escrow, custodians, refs, manifests, sealing_s


def _restore_row(escrow, custodians, refs, manifests, count: int) -> list[object]:
    from faceveil.jobs.restore import open_v2_row
    from faceveil.manifests.custodian import ScryptParams
    from faceveil.manifests.request import RequestSpec, create_request, load_request_key
    from faceveil.manifests.restore import approve, recover_data_keys
    from faceveil.manifests.signed import ApprovedRequest

    wanted = refs[:count]
    secret = "bench passphrase"
    spec = RequestSpec("restore", tuple(wanted), "bench", "bench")
    request, key_file = create_request(escrow, spec, secret, params=ScryptParams(n=2**15))
    keys = load_request_key(request, key_file, secret)
    approve_s, approvals = [], []
    for custodian in custodians[:2]:
        started = time.perf_counter()
        approvals.append(approve(request, custodian))
        approve_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    data_keys = recover_data_keys(escrow, ApprovedRequest(request, keys, approvals), "restore")
    opened = 0
    for ref in wanted:
        for row in manifests[ref.shard].rows:
            if row.sample_id == ref.sample_id:
                open_v2_row(
                    data_keys[(ref.shard, ref.sample_id)], escrow.job_id, ref.shard, row, "0" * 64
                )
                opened += 1
    apply_s = time.perf_counter() - started
    return [
        count,
        f"{len(request.dumps()) / 1024:.1f}",
        f"{len(approvals[0].dumps()) / 1024:.1f}",
        f"{1000 * sum(approve_s) / len(approve_s):.0f}",
        f"{1000 * apply_s:.0f}",
        opened,
    ]


def restore_part(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-escrow-") as tmp:
        escrow, custodians, refs, manifests, sealing_s = _sealed_job(
            Path(tmp), args.samples, args.source
        )
        rows = [
            _restore_row(escrow, custodians, refs, manifests, n)
            for n in (1, 1000, args.samples)
            if n <= args.samples
        ]
    table = format_table(
        [
            "samples restored",
            "request KiB",
            "approval KiB",
            "approve ms / custodian",
            "apply ms",
            "rows opened",
        ],
        rows,
    )
    per_sample = 1000 * sealing_s / args.samples
    head = f"sealing {args.samples} samples: {sealing_s:.1f} s ({per_sample:.2f} ms per sample)"
    return f"{head}\n{table}"


def job_part(args: argparse.Namespace) -> str:
    from faceveil.manifests.custodian import ScryptParams, keygen

    with tempfile.TemporaryDirectory(prefix="bench-escrow-job-") as tmp:
        work = Path(tmp)
        images = work / "images"
        replicate_dataset(source_images(args.source), images, args.job_images)
        timer = JobTimer(work)
        pubs = []
        for name in ("alice", "bob", "carol"):
            pub, _ = keygen(name, work / "keys", "bench passphrase", ScryptParams(n=2**15))
            pubs.append(str(pub))
        choices = {
            "no escrow": ["--no-escrow"],
            "2-of-3 escrow": ["--custodians", *pubs, "--threshold", "2"],
        }
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in choices}
        for r, name in timer.alternated(list(choices), args.rounds):
            out = work / f"out-{name.replace(' ', '_')}-{r}"
            results[name].append(timer.run(images, out, choices[name]))
    rows, rates = [], {}
    for name, runs in results.items():
        wall, cpu = JobTimer.mean(runs)
        count = runs[0][2] or args.job_images
        rates[name] = count / wall
        rows.append([name, count, f"{wall:.1f}", f"{count / wall:.2f}", f"{count / cpu:.2f}"])
    cost = 1 - rates["2-of-3 escrow"] / rates["no escrow"]
    table = format_table(["run", "images", "wall s", "images/s", "images per CPU-s"], rows)
    verdict = "met" if cost <= 0.10 else "NOT met"
    return f"{table}\nescrow cost: {100 * cost:.1f}% of images/s (target <= 10%: {verdict})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(machine_info()))
    print(f"== restore scaling ({args.samples} sealed samples, 2-of-3 custodians)")
    print(restore_part(args))
    if not args.skip_job:
        print(
            f"\n== job throughput ({args.job_images} images, --method blur, rounds {args.rounds})"
        )
        print(job_part(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
