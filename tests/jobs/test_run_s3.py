"""The same job with input and output on s3://, against a real moto_server on 127.0.0.1."""

import json

import fsspec

from faceveil.jobs.cli import main
from tests.factories import varied_faces


def test_job_reads_and_writes_s3(s3, ray_local, secret_file):
    client = s3.client()
    photos, anon = s3.bucket("photos-e2e"), s3.bucket("anon-e2e")
    for name, data in varied_faces(12) + [("broken.jpg", b"\xff\xd8\xff garbage")]:
        client.put_object(Bucket="photos-e2e", Key=f"team/{name}", Body=data)
    args = ["run", f"{photos}/team", f"{anon}/out", "--shard-size", "5",
            "--secret-file", str(secret_file), "--no-escrow"]  # fmt: skip
    assert main(args) == 0
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("anon-e2e/out/data")) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"
    ]  # fmt: skip
    markers = [json.loads(fs.cat_file(p)) for p in sorted(fs.ls("anon-e2e/out/_done"))]
    assert sum(m["samples_in"] for m in markers) == 13
    assert sum(m["quarantined"] for m in markers) == 1
    assert json.loads(fs.cat_file("anon-e2e/out/job.json"))["status"] == "complete"
    assert [p for p in fs.find("anon-e2e/out") if ".tmp-" in p] == []

    # Resume on an object store: one shard's outputs removed, only that one is redone.
    before = fs.cat_file("anon-e2e/out/data/shard-000001.tar")
    fs.rm("anon-e2e/out/data/shard-000001.tar")
    fs.rm("anon-e2e/out/_done/shard-000001.json")
    assert main([*args, "--resume"]) == 0
    fs.invalidate_cache()
    assert fs.cat_file("anon-e2e/out/data/shard-000001.tar") == before


def test_parquet_job_reads_and_writes_s3(s3, ray_local, secret_file):
    """Parquet files under an s3:// prefix in, Parquet shards to s3:// out, read with pyarrow."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    client = s3.client()
    source, anon = s3.bucket("parquet-in"), s3.bucket("parquet-out")
    photos = [data for _, data in varied_faces(6)]
    for n in range(2):
        part = photos[3 * n : 3 * n + 3] + ([b"not an image"] if n else [])
        table = pa.table({"jpg": part, "n": list(range(len(part)))})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        client.put_object(Bucket="parquet-in", Key=f"laion/part-{n}.parquet", Body=buf.getvalue())
    args = ["run", f"{source}/laion", f"{anon}/out", "--image-column", "jpg", "--shard-size", "4",
            "--output-format", "parquet", "--secret-file", str(secret_file), "--no-escrow",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("parquet-out/out/data"))
    assert names == ["shard-000000.parquet", "shard-000001.parquet"]
    blobs = [fs.cat_file(f"parquet-out/out/data/{name}") for name in names]
    rows = [r for blob in blobs for r in pq.read_table(io.BytesIO(blob)).to_pylist()]
    assert [r["n"] for r in rows] == [0, 1, 2, 0, 1, 2]
    markers = [json.loads(fs.cat_file(p)) for p in sorted(fs.ls("parquet-out/out/_done"))]
    assert sum(m["samples_in"] for m in markers) == 7
    assert sum(m["quarantined"] for m in markers) == 1
