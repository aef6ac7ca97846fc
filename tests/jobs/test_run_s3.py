"""The same job with input and output on s3://, against a real moto_server on 127.0.0.1."""

import json
import os

import boto3
import fsspec
import pytest
import ray

from jobs.cli import main
from jobs.keyfile import new_key_file
from tests.factories import varied_faces
from tests.manifests.conftest import DUMMY_AWS_ENV, moto_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 endpoint with buckets ``photos`` (12 images + 1 bad) and ``anon`` (empty).

    botocore reads AWS_ENDPOINT_URL_S3; the Ray started by the job inherits the environment,
    so actors reach the same server.
    """
    if ray.is_initialized():
        ray.shutdown()
    saved = dict(os.environ)
    with moto_server() as endpoint:
        os.environ.update(DUMMY_AWS_ENV, AWS_ENDPOINT_URL_S3=endpoint)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in ("photos", "anon"):
            client.create_bucket(Bucket=bucket)
        for name, data in varied_faces(12) + [("broken.jpg", b"\xff\xd8\xff garbage")]:
            client.put_object(Bucket="photos", Key=f"team/{name}", Body=data)
        fsspec.filesystem("s3").invalidate_cache()
        yield endpoint, tmp_path_factory.mktemp("s3job")
    os.environ.clear()
    os.environ.update(saved)


def test_job_reads_and_writes_s3(s3):
    _, tmp = s3
    secret = new_key_file(tmp / "secret.key")
    args = ["run", "s3://photos/team", "s3://anon/out", "--shard-size", "5",
            "--secret-file", str(secret), "--no-escrow"]  # fmt: skip
    assert main(args) == 0
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("anon/out/data")) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"
    ]  # fmt: skip
    markers = [json.loads(fs.cat_file(p)) for p in sorted(fs.ls("anon/out/_done"))]
    assert sum(m["samples_in"] for m in markers) == 13
    assert sum(m["quarantined"] for m in markers) == 1
    assert json.loads(fs.cat_file("anon/out/job.json"))["status"] == "complete"
    leftovers = [p for p in fs.find("anon/out") if ".tmp-" in p]
    assert leftovers == []

    # Resume on an object store: one shard's outputs removed, only that one is redone.
    before = fs.cat_file("anon/out/data/shard-000001.tar")
    fs.rm("anon/out/data/shard-000001.tar")
    fs.rm("anon/out/_done/shard-000001.json")
    assert main([*args, "--resume"]) == 0
    fs.invalidate_cache()
    assert fs.cat_file("anon/out/data/shard-000001.tar") == before
