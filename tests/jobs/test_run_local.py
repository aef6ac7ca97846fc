"""End to end on a real local Ray: accounting, names and metadata kept private, determinism."""

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from faceveil.jobs.cli import main
from faceveil.jobs.keyfile import new_key_file
from tests.factories import JobInput, done_markers, tar_members, varied_faces, write_folder
from tests.jobs.corpus import png_claiming

BAD_INPUTS = {
    "zero_bytes.jpg": b"",
    "not_an_image.png": b"<html>definitely not a picture</html>" * 20,
}
EXPECTED_QUARANTINE = {"empty", "undecodable", "truncated", "too_many_pixels"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    files = varied_faces(96)
    truncated = files[0][1][: len(files[0][1]) // 3]
    files += [*BAD_INPUTS.items(), ("truncated_photo.jpg", truncated)]
    files.append(("bomb_header.png", png_claiming(30000, 30000)))
    write_folder(root / "photos", files)
    secret = new_key_file(root / "secret.key")
    options = ("--shard-size", "25", "--batch-size", "8", "--no-escrow")
    return JobInput(root, root / "photos", secret, options)


@pytest.fixture(scope="module")
def first_run(dataset, ray_local):
    return dataset.first_run()


def test_shards_markers_and_accounting(first_run):
    data = sorted(p.name for p in (first_run / "data").glob("*.tar"))
    assert data == [f"shard-{i:06d}.tar" for i in range(4)]
    markers = done_markers(first_run)
    assert len(markers) == 4 and sum(m["samples_in"] for m in markers) == 100
    for m in markers:
        assert m["samples_in"] == m["anonymized"] + m["no_face"] + m["quarantined"]
        members = tar_members(first_run / m["files"]["data"]["path"])
        assert len(members) == 2 * (m["anonymized"] + m["no_face"])
        for part in ("data", "quarantine"):
            path = first_run / m["files"][part]["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == m["files"][part]["sha256"]
    job = json.loads((first_run / "job.json").read_text())
    assert job["status"] == "complete" and job["totals"]["samples_in"] == 100


def test_bad_inputs_are_quarantined_with_reasons(first_run):
    rows = [r for p in sorted((first_run / "quarantine").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]  # fmt: skip
    assert len(rows) == 4
    assert {r["reason"].split(":")[0] for r in rows} == EXPECTED_QUARANTINE
    assert all(r["stage"] == "decode" for r in rows)


def test_every_face_was_anonymized_and_metadata_is_public_only(first_run):
    faces = 0
    for tar_path in sorted((first_run / "data").glob("*.tar")):
        for name, payload in tar_members(tar_path).items():
            if name.endswith(".json"):
                meta = json.loads(payload)
                assert set(meta) == {"width", "height", "faces", "status"}
                faces += len(meta["faces"])
                assert all(f["method"] == "blur" for f in meta["faces"])
            else:
                img = Image.open(io.BytesIO(payload))
                assert not img.getexif() and "icc_profile" not in img.info
                assert b"SecretCam" not in payload and b"GPS" not in payload
    assert faces >= 96


def test_no_source_name_anywhere_in_output(first_run, dataset):
    names = [p.stem for p in (dataset.root / "photos").rglob("*") if p.is_file()]
    needles = [n.encode() for n in names] + [b"nested", str(dataset.root).encode()]
    for path in first_run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), f"a source name leaked into {path}"
            assert not any(n.decode() in str(path.relative_to(first_run)) for n in needles)


def test_no_original_bytes_anywhere_in_output(first_run, dataset):
    """Loose images are read in place: no file under OUT holds an input file, whole or in part."""
    inputs = [p.read_bytes() for p in (dataset.root / "photos").rglob("*") if p.is_file()]
    windows = [data[1000:1064] for data in inputs if len(data) >= 1064]
    digests = {hashlib.sha256(data).hexdigest() for data in inputs if data}
    assert len(windows) >= 96
    scanned = 0
    for path in first_run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            scanned += 1
            assert hashlib.sha256(blob).hexdigest() not in digests, f"an input file is {path}"
            assert not any(w in blob for w in windows), f"original bytes in {path}"
    assert scanned >= 13  # data/, quarantine/, _done/ of 4 shards and job.json at least


def test_rerun_is_byte_identical(first_run, dataset, ray_local):
    second = dataset.root / "out2"
    assert dataset.run(second) == 0
    for tar_path in sorted((first_run / "data").glob("*.tar")):
        assert tar_path.read_bytes() == (second / "data" / tar_path.name).read_bytes()


def test_resume_redoes_only_the_missing_shard(first_run, dataset, ray_local):
    before = {p.name: p.read_bytes() for p in (first_run / "data").glob("*.tar")}
    (first_run / "data" / "shard-000002.tar").unlink()
    (first_run / "_done" / "shard-000002.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (first_run / "_done").glob("*.json")}
    assert dataset.run(first_run, "--resume") == 0
    after = {p.name: p.read_bytes() for p in (first_run / "data").glob("*.tar")}
    assert after == before
    for name, mtime in kept.items():
        assert (first_run / "_done" / name).stat().st_mtime_ns == mtime
    assert (first_run / "_done" / "shard-000002.json").exists()


def test_refuses_to_overwrite_a_finished_job_without_resume(first_run, dataset, ray_local):
    assert dataset.run(first_run) == 1


def test_failed_sharding_leaves_no_job_behind(tmp_path, secret_file):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "empty"), str(out), "--secret-file", str(secret_file)]
    assert main([*args, "--no-escrow"]) == 1
    assert not (out / "job.json").exists()
    assert main(args) == 1  # no escrow choice: refused before any work
    assert not (out / "job.json").exists() and not (out / "escrow.json").exists()
