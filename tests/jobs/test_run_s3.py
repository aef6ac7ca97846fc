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
