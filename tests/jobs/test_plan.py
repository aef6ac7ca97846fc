"""Planning loose images: sealed shard lists with no names or bytes, sources read in place and
checked, and a source changed or vanished before a resume quarantined, never processed."""

import base64
import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faceveil.jobs.keyfile import load_key_file
from faceveil.jobs.plan import (
    CHANGED,
    INDEX,
    VANISHED,
    iter_planned,
    read_plan,
    write_plan,
)
from faceveil.jobs.shard import list_sources
from faceveil.jobs.shardio import ShardFormatError
from faceveil.jobs.storage import Location
from faceveil.manifests.jobsecret import open_check, open_uri, sample_id
from tests.factories import JobInput, varied_faces, write_folder

SECRET = b"k" * 32


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_folder(tmp_path / "photos", varied_faces(7))


def _plan(photos: Path, folder: Path, size: int = 4) -> list:
    return write_plan(str(photos), Location(str(folder)), SECRET, shard_size=size)


def _samples(folder: Path, entry) -> list:
    return list(iter_planned((folder / entry.file).read_bytes(), entry.sha256, SECRET))


def test_plan_is_sealed_reproducible_and_holds_no_name_or_byte(photos, tmp_path):
    entries = _plan(photos, tmp_path / "a")
    again = _plan(photos, tmp_path / "b")
    assert entries == again == read_plan(Location(str(tmp_path / "a")))
    assert [e.shard for e in entries] == ["shard-000000.tar", "shard-000001.tar"]
    assert [e.samples for e in entries] == [4, 3]
    for name in [INDEX, *(e.file for e in entries)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    files = [p for p in photos.rglob("*") if p.is_file()]
    needles = [p.stem.encode() for p in files] + [b"nested", str(photos).encode()]
    needles += [p.read_bytes()[1000:1064] for p in files]
    for path in (tmp_path / "a").iterdir():
        blob = path.read_bytes()
        assert not any(n in blob for n in needles), path
    planned = [s for e in entries for s in json.loads((tmp_path / "a" / e.file).read_text())
               ["samples"]]  # fmt: skip
    sources = list_sources(str(photos))
    for source, sample in zip(sources, planned, strict=True):
        key = sample_id(SECRET, source.uri)
        assert sample["key"] == key
        assert open_uri(SECRET, key, base64.b64decode(sample["src"])) == source.uri
        check = open_check(SECRET, key, base64.b64decode(sample["check"]))
        data = Path(source.path).read_bytes()
        assert (check["size"], check["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        with pytest.raises(ValueError):
            open_check(b"x" * 32, key, base64.b64decode(sample["check"]))


def test_sources_are_read_in_place_and_checked_against_the_plan(photos, tmp_path):
    entries = _plan(photos, tmp_path / "plan")
    sources = list_sources(str(photos))
    same_size = Path(sources[1].path)
    data = bytearray(same_size.read_bytes())
    data[len(data) // 2] ^= 0xFF
    same_size.write_bytes(bytes(data))
    Path(sources[2].path).write_bytes(Path(sources[2].path).read_bytes() + b"\0")
    Path(sources[3].path).unlink()
    samples = _samples(tmp_path / "plan", entries[0]) + _samples(tmp_path / "plan", entries[1])
    assert [s.sample_id for s in samples] == [sample_id(SECRET, s.uri) for s in sources]
    errors = [s.members.get("err") for s in samples[:4]]
    assert errors == [None, CHANGED.encode(), CHANGED.encode(), VANISHED.encode()]
    for source, sample in zip(sources, samples, strict=True):
        assert "src" in sample.members
        if "err" not in sample.members:
            assert sample.members[source.ext] == Path(source.path).read_bytes()


def test_members_of_an_input_tar_are_read_in_place(photos, tmp_path):
    files = varied_faces(2, seed=3)
    with tarfile.open(photos / "batch.tar", "w") as tar:
        for name, _ in files:
            (tmp_path / name).write_bytes(dict(files)[name])
            tar.add(tmp_path / name, arcname=f"inner/{name}")
    (entry,) = _plan(photos, tmp_path / "plan", size=100)
    by_id = {s.sample_id: s for s in _samples(tmp_path / "plan", entry)}
    assert entry.samples == len(by_id) == 9
    for name, data in files:
        key = sample_id(SECRET, f"{photos}/batch.tar#inner/{name}")
        assert by_id[key].members["jpg"] == data


def test_an_altered_plan_file_is_refused(photos, tmp_path):
    (entry, _) = _plan(photos, tmp_path / "plan")
    path = tmp_path / "plan" / entry.file
    path.write_bytes(path.read_bytes().replace(b'"version":1', b'"version":1 '))
    with pytest.raises(ShardFormatError, match="plan index"):
        _samples(tmp_path / "plan", entry)


def _quarantine(out: Path, stem: str) -> dict[str, tuple[str, str]]:
    rows = pq.read_table(out / "quarantine" / f"{stem}.parquet").to_pylist()
    return {r["key"]: (r["stage"], r["reason"]) for r in rows}


@pytest.mark.slow
def test_resume_quarantines_sources_changed_or_vanished_since_planning(
    tmp_path, secret_file, ray_local
):
    """A shard redone on --resume reuses the plan: of its sources, one changed and one deleted
    since planning are quarantined at stage read, and the shard's counts still add up."""
    photos = write_folder(tmp_path / "photos", varied_faces(6), nest_every=0)
    out = tmp_path / "out"
    options = ("--shard-size", "3", "--batch-size", "4", "--no-escrow")
    job = JobInput(tmp_path, photos, secret_file, options)
    assert job.run(out) == 0
    plan = {p.name: p.read_bytes() for p in (out / "plan").iterdir()}
    assert _quarantine(out, "shard-000001") == {}
    for part in ("data/shard-000001.tar", "quarantine/shard-000001.parquet",
                 "_done/shard-000001.json"):  # fmt: skip
        (out / part).unlink()
    sources = list_sources(str(photos))
    changed, vanished = Path(sources[3].path), Path(sources[4].path)
    changed.write_bytes(Path(sources[0].path).read_bytes())
    vanished.unlink()
    assert job.run(out, "--resume") == 0
    assert {p.name: p.read_bytes() for p in (out / "plan").iterdir()} == plan
    secret = load_key_file(secret_file)
    keys = [sample_id(secret, s.uri) for s in sources]
    assert _quarantine(out, "shard-000001") == {keys[3]: ("read", CHANGED),
                                                 keys[4]: ("read", VANISHED)}  # fmt: skip
    marker = json.loads((out / "_done" / "shard-000001.json").read_text())
    assert (marker["samples_in"], marker["quarantined"]) == (3, 2)
    assert marker["anonymized"] + marker["no_face"] == 1
    with tarfile.open(out / "data" / "shard-000001.tar") as tar:
        assert {n.split(".")[0] for n in tar.getnames()} == {keys[5]}
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "complete" and record["totals"]["samples_in"] == 6
    assert record["totals"]["quarantined"] == 2
