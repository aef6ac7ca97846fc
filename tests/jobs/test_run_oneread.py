"""``faceveil run --method surrogate`` reads each image's faces once: the second pass takes the
detections, landmarks and embeddings the first pass made of the same pixels (sealed, per shard)
and gives the same bytes as computing them again. Real local Ray, real people from
``../shared/data/lfw_dev`` (skipped without them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from faceveil.jobs.cli import build_parser
from faceveil.jobs.firstpass import first_pass_entries
from faceveil.jobs.keyfile import new_key_file
from faceveil.jobs.plan import read_plan
from faceveil.jobs.run import run_job
from faceveil.jobs.run_cli import job_config
from faceveil.jobs.storage import Location
from tests.factories import JobInput, lfw_people

PEOPLE, PHOTOS, SHARD = 24, 3, 18  # 72 photos in 4 shards


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> JobInput:
    base = tmp_path_factory.mktemp("oneread")
    lfw_people(base / "photos", PEOPLE, PHOTOS)
    key = new_key_file(base / "team.key")
    options = ("--method", "surrogate", "--key-file", str(key), "--donors", "4",
               "--shard-size", str(SHARD), "--batch-size", "8", "--no-escrow")  # fmt: skip
    return JobInput(base, base / "photos", new_key_file(base / "secret.key"), options)


def _run_without_reuse(job: JobInput, out: Path, *extra: str) -> None:
    """The same run with the config's internal ``reuse_first_pass`` off (no CLI option)."""
    args = ["run", str(job.source), str(out), "--secret-file", str(job.secret), *job.options]
    config = job_config(build_parser().parse_args([*args, *extra]))
    run_job(replace(config, surrogate=replace(config.surrogate, reuse_first_pass=False)))


def _files(out: Path) -> dict[str, bytes]:
    """Every file the run wrote, by path under OUT, but job.json (a new job id and time)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "job.json"
    }


@pytest.fixture(scope="module")
def reused(job, ray_local) -> Path:
    return job.first_run()


def test_reuse_gives_the_same_bytes_and_detects_nothing_again(job, reused):
    out = job.root / "no-reuse"
    _run_without_reuse(job, out)
    ours, theirs = _files(reused), _files(out)
    assert any(name.startswith("data/") for name in ours)
    assert ours.keys() == theirs.keys()
    assert [n for n in ours if ours[n] != theirs[n]] == []
    record = json.loads((reused / "job.json").read_text())["surrogate"]
    assert record["second_pass"] == {"images_reused": PEOPLE * PHOTOS, "images_detected": 0}
    assert "second_pass" not in json.loads((out / "job.json").read_text())["surrogate"]


def test_a_first_pass_subset_reuses_for_its_shards_only(job, reused):
    out = job.root / "subset"
    assert job.run(out, "--first-pass-shards", "3") == 0
    entries = read_plan(Location(str(out / "plan")))
    chosen = {e.shard for e in first_pass_entries(entries, 3)}
    counts = {e.shard: e.samples for e in entries}
    record = json.loads((out / "job.json").read_text())["surrogate"]
    assert record["first_pass"]["shards"] == 3
    assert record["second_pass"] == {
        "images_reused": sum(counts[s] for s in chosen),
        "images_detected": sum(counts[s] for s in counts if s not in chosen),
    }
    assert record["second_pass"]["images_detected"] == SHARD  # the one shard left out


def test_a_resumed_job_reuses_for_the_shards_it_redoes(job, reused):
    """A resume runs the first pass again (same identities and donors) and keeps records only
    for the shards still to do: their bytes are those of the whole run."""
    out = job.root / "resumed"
    out.mkdir()
    for name, data in _files(reused).items():  # all but shard 1's outputs (its plan stays)
        if name.startswith("plan/") or "shard-000001" not in name:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    (out / "job.json").write_bytes((reused / "job.json").read_bytes())
    assert job.run(out, "--resume") == 0
    assert _files(out) == _files(reused)
    record = json.loads((out / "job.json").read_text())["surrogate"]
    assert record["second_pass"] == {"images_reused": SHARD, "images_detected": 0}


def test_face_records_reach_the_object_store_sealed_and_are_handed_out_once(job, ray_local):
    """What the driver puts in the object store per shard is ciphertext under the run's transit
    key: no landmark or embedding appears in it before it is opened."""
    import os

    import ray

    from faceveil.anon_core.facememo import FaceRecords
    from faceveil.jobs.config import JobConfig
    from faceveil.jobs.firstpass import RecordShelf, run_first_pass
    from faceveil.jobs.keyfile import load_key_file
    from faceveil.jobs.keys import Secrets, hold_secrets
    from faceveil.jobs.raypool import ActorSpec
    from faceveil.jobs.run import pending_tasks
    from faceveil.jobs.shard import read_index, write_shards
    from faceveil.manifests.jobsecret import open_object

    secret = load_key_file(job.secret)
    shards = job.root / "shards"
    write_shards(str(job.source), str(shards), secret, SHARD)
    src = Location(str(shards))
    tasks = pending_tasks(src, read_index(src), src, resume=False)
    config = JobConfig(str(shards), str(job.root / "unused"))
    anon = replace(config.anon, method="surrogate", method_options={"donors": 4}, threads=1)
    secrets = Secrets(secret, None, os.urandom(32), os.urandom(32))
    shelf = RecordShelf.remote()
    spec = ActorSpec(anon, hold_secrets(secrets), config.pool, size=1, face_records=shelf)
    kept = [t.shard for t in tasks[1:]]  # the first shard is done, say: nothing kept for it
    run_first_pass(tasks, spec, secrets, (), kept)
    assert ray.get(shelf.count.remote()) == len(kept)
    assert ray.get(shelf.take.remote(tasks[0].shard)) == []
    (ref,) = ray.get(shelf.take.remote(kept[0]))
    assert ray.get(shelf.take.remote(kept[0])) == []  # handed out once
    blob = ray.get(ref)
    records = open_object(secrets.transit, blob)
    assert isinstance(records, FaceRecords) and len(records) == SHARD
    for points, _ in list(records.landmarks.values())[:5]:
        assert points[:8].tobytes() not in blob
    for vectors in list(records.embeddings.values())[:5]:
        assert len(vectors) == 0 or vectors[0].tobytes()[:64] not in blob
    assert b"FaceRecords" not in blob and b"numpy" not in blob


@pytest.mark.parametrize("case", ["other models", "other transit key", "none kept"])
def test_records_that_do_not_fit_are_not_used(ray_local, case):
    """Fail closed: records made with other models, sealed under another run's key, or never
    kept leave the second pass computing every face (its memo holds nothing)."""
    import os

    import numpy as np
    import ray

    from faceveil.anon_core.detectors import build_detector
    from faceveil.anon_core.facememo import FaceRecords
    from faceveil.anon_core.faces import Faces
    from faceveil.jobs.firstpass import Recall, RecordShelf
    from faceveil.manifests.jobsecret import seal_object

    transit = os.urandom(32)
    records = FaceRecords("other" if case == "other models" else "mine")
    records.detections[bytes(32)] = Faces.empty()
    key = os.urandom(32) if case == "other transit key" else transit
    shelf = RecordShelf.remote()
    if case != "none kept":
        ray.get(shelf.put.remote("shard-000000.tar", [ray.put(seal_object(key, records))]))
    recall = Recall(shelf, transit, "mine")
    recall.load("shard-000000.tar")
    assert len(recall.memo.records) == 0
    detector = recall.memo.detector(build_detector("centerface", threads=1))
    assert detector.name == "centerface"
    assert len(detector([np.full((64, 64, 3), 128, np.uint8)])[0]) == 0
    assert recall.release() == (0, 1)  # nothing reused, one image detected
    assert ray.get(shelf.count.remote()) == 0
