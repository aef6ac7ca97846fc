"""Hostile and unusual inputs through a whole job: each is quarantined with a clear reason, or,
when it is a valid image, anonymized with its faces found; the job and its accounting hold.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faceveil.jobs import shard as sharding
from faceveil.jobs.config import EscrowConfig, JobConfig
from faceveil.jobs.keyfile import load_key_file
from faceveil.jobs.run import run_job
from faceveil.jobs.shard import Source, build_shard, shard_name
from faceveil.jobs.storage import Location
from faceveil.manifests.jobsecret import sample_id, secret_fingerprint
from tests.factories import done_markers
from tests.jobs.corpus import corpus, large_photos

UNREADABLE = {
    "denied.jpg": "unreadable source (PermissionError)",  # bucket policy denies GetObject
    "archived.jpg": "unreadable source (PermissionError)",  # GLACIER: InvalidObjectState
    "vanished.jpg": "unreadable source (FileNotFoundError)",  # deleted after listing
}
FACEVEIL = str(Path(sys.executable).with_name("faceveil"))


def _deny_get(client, bucket: str, key: str) -> None:
    statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/{key}"}  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


@pytest.fixture(scope="module")
def bad_bucket(s3) -> str:
    """s3://bad-inputs/in: the corpus plus three objects that list but cannot be read."""
    uri = s3.bucket("bad-inputs")
    client = s3.client()
    photo = large_photos(1, width=400)[0][1]
    for case in corpus():
        client.put_object(Bucket="bad-inputs", Key=f"in/{case.name}", Body=case.data)
    for name in ("denied.jpg", "vanished.jpg"):
        client.put_object(Bucket="bad-inputs", Key=f"in/{name}", Body=photo)
    client.put_object(Bucket="bad-inputs", Key="in/archived.jpg", Body=photo,
                      StorageClass="GLACIER")  # fmt: skip
    _deny_get(client, "bad-inputs", "in/denied.jpg")
    return uri + "/in"


def _tar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _outcomes(out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(key -> public metadata of data/ samples, key -> quarantine row)."""
    published = {}
    for path in sorted((out / "data").glob("*.tar")):
        for name, payload in _tar(path.read_bytes()).items():
            if name.endswith(".json"):
                published[name.removesuffix(".json")] = json.loads(payload)
    rows = [r for p in sorted((out / "quarantine").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]  # fmt: skip
    return published, {r["key"]: r for r in rows}


@pytest.fixture(scope="module")
def bad_job(bad_bucket, s3, secret_file, ray_local, tmp_path_factory):
    """The corpus as one job (6 samples per shard), the vanished object deleted between the
    listing and the reading of the sources."""
    out = tmp_path_factory.mktemp("bad") / "out"
    listing = sharding.list_sources

    def list_then_delete(uri: str, *args):
        sources = listing(uri, *args)
        s3.client().delete_object(Bucket="bad-inputs", Key="in/vanished.jpg")
        return sources

    patch = pytest.MonkeyPatch()
    patch.setattr(sharding, "list_sources", list_then_delete)
    try:
        config = JobConfig(input=bad_bucket, output=str(out), shard_size=6,
                           secret_file=str(secret_file), escrow=EscrowConfig(no_escrow=True),
                           progress=False)  # fmt: skip
        summary = run_job(config)
    finally:
        patch.undo()
    return out, summary, load_key_file(secret_file), bad_bucket


def _outcome(bad_job, name: str) -> tuple[dict | None, dict | None]:
    """(public metadata, quarantine row) of the corpus file ``name``; None where it has none."""
    out, _, secret, uri = bad_job
    published, quarantined = _outcomes(out)
    key = sample_id(secret, f"{uri}/{name}")
    return published.get(key), quarantined.get(key)


@pytest.mark.slow
def test_job_succeeds_and_accounting_holds(bad_job):
    out, summary, _, _ = bad_job
    total = len(corpus()) + len(UNREADABLE)
    assert not summary.failed and summary.samples_in == total
    markers = done_markers(out)
    assert len(markers) == summary.shards_total == -(-total // 6)
    for m in markers:
        assert m["samples_in"] == m["anonymized"] + m["no_face"] + m["quarantined"]
    published, quarantined = _outcomes(out)
    assert len(published) + len(quarantined) == total
    assert not set(published) & set(quarantined)
    assert json.loads((out / "job.json").read_text())["status"] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in corpus() if c.reason], ids=lambda c: c.name)
def test_bad_file_is_quarantined_with_its_reason(bad_job, case):
    meta, row = _outcome(bad_job, case.name)
    assert meta is None
    assert row["stage"] == "decode"
    assert row["reason"].startswith(f"{case.reason}: ")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_object_is_quarantined_at_read(bad_job, name):
    meta, row = _outcome(bad_job, name)
    assert meta is None
    assert row["stage"] == "read"
    assert row["reason"] == UNREADABLE[name]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in corpus() if not c.reason], ids=lambda c: c.name)
def test_odd_but_valid_image_is_anonymized(bad_job, case):
    meta, row = _outcome(bad_job, case.name)
    assert row is None
    assert meta["status"] == "anonymized"
    assert len(meta["faces"]) >= case.min_faces
    if case.name == "exif_rotated.jpg":  # stored 600 x 480, upright 480 x 600
        assert (meta["width"], meta["height"]) == (480, 600)


def _sharded_input(root: Path, secret: bytes) -> Path:
    """A sharded input of four shards: good; cut at a header boundary (index has its sha256);
    with a duplicated key; cut at a header boundary (index has no sha256, counts only)."""
    photos = root / "photos"
    photos.mkdir()
    sources = []
    for name, data in large_photos(13, width=320):
        (photos / name).write_bytes(data)
        sources.append(Source(str(photos / name), str(photos / name), "jpg"))
    plans = [sources[0:3], sources[3:7], [sources[7], sources[7], sources[8]], sources[9:13]]
    shards, entries = root / "shards", []
    shards.mkdir()
    loc = Location(str(photos))
    for index, chunk in enumerate(plans):
        data = build_shard(loc, chunk, secret)
        entry = {"shard": shard_name(index), "samples": len(chunk), "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
        if index in (1, 3):
            data = data[: _header_offset(data, member=4)]  # two whole samples remain
        if index == 3:
            entry["sha256"] = ""
        (shards / shard_name(index)).write_bytes(data)
        entries.append(entry)
    index_doc = {"version": 1, "shard_size": 4, "total_samples": 13, "shards": entries,
                 "secret_fingerprint": secret_fingerprint(secret)}  # fmt: skip
    (shards / sharding.INDEX).write_text(json.dumps(index_doc))
    return shards


def _header_offset(data: bytes, member: int) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()[member].offset


@pytest.mark.slow
def test_truncated_tars_fail_loudly_and_duplicates_are_quarantined(tmp_path, secret_file,
                                                                   ray_local):  # fmt: skip
    shards = _sharded_input(tmp_path, load_key_file(secret_file))
    out = tmp_path / "out"
    result = subprocess.run(
        [FACEVEIL, "run", str(shards), str(out), "--secret-file", str(secret_file),
         "--no-escrow", "--no-progress", "--address", ray_local],
        capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 shards failed (shard-000001.tar, shard-000003.tar" in result.stderr
    done = {m["shard"]: m for m in done_markers(out)}
    assert sorted(done) == ["shard-000000.tar", "shard-000002.tar"]
    for stem in ("shard-000001", "shard-000003"):
        assert not list(out.rglob(f"{stem}.*")), f"something of {stem} was published"
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "incomplete"
    errors = {f["shard"]: f["error"] for f in job["failed"]}
    assert "sha256 differs from the shard index" in errors["shard-000001.tar"]
    assert "2 samples read, index says 4" in errors["shard-000003.tar"]
    dup = done["shard-000002.tar"]
    assert (dup["samples_in"], dup["quarantined"], dup["anonymized"] + dup["no_face"]) == (3, 1, 2)
    rows = pq.read_table(out / "quarantine" / "shard-000002.parquet").to_pylist()
    assert [(r["stage"], r["reason"]) for r in rows] == [("input", "duplicate key in shard")]


def test_a_duplicate_key_is_quarantined_and_not_sealed_over_the_first(tmp_path):
    """The second sample under a key is quarantined without sealing: the key's escrow rows stay
    those of the first sample (whose restore would otherwise fail to open a row sealed for a
    quarantined sample)."""
    from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
    from faceveil.jobs.worker import ShardOptions, ShardTask, process_shard
    from faceveil.manifests.custodian import CustodianPrivate
    from faceveil.manifests.escrow import ShamirPolicy, create_escrow
    from faceveil.manifests.jobkeys import epoch_sealing
    from faceveil.manifests.keymanifest import ShardSealer

    secret = bytes(range(32))
    (tmp_path / "photos").mkdir()
    sources = []
    for name, data in large_photos(2, width=320):
        (tmp_path / "photos" / name).write_bytes(data)
        sources.append(Source(str(tmp_path / "photos" / name), str(tmp_path / "photos" / name),
                              "jpg"))  # fmt: skip
    data = build_shard(Location(str(tmp_path / "photos")), [sources[0], *sources], secret)
    (tmp_path / "shard.tar").write_bytes(data)
    task = ShardTask("shard-000000.tar", str(tmp_path / "shard.tar"), 3,
                     hashlib.sha256(data).hexdigest())  # fmt: skip
    custodians = tuple(CustodianPrivate.generate(n).public() for n in ("alice", "bob"))
    escrow = create_escrow("job-1", ShamirPolicy(2, custodians))
    sealing = epoch_sealing(escrow, escrow.escrow_ids[0])
    sealer = ShardSealer(sealing.shard_keys("shard-000000"), "shard-000000")
    out = Location(str(tmp_path / "out"))
    anonymizer = FaceAnonymizer(AnonConfig(threads=1))
    summary = process_shard(task, anonymizer, out, sealer, ShardOptions(secret=secret))
    assert (summary.samples_in, summary.quarantined) == (3, 1)
    dup = sample_id(secret, sources[0].uri)
    whole = [r for r in sealer.rows() if r.sample_id == dup and r.face < 0]
    assert len(whole) == 1
