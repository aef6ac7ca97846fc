"""``faceveil run --method surrogate`` on a real local Ray: the distributed first pass, one
pseudonym per person across shards, deterministic reruns, and the key never on disk.

The end-to-end tests need real people (``../shared/data/lfw_dev``) and skip without them; the
refusals run everywhere.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faceveil.jobs.cli import main
from faceveil.jobs.firstpass import first_pass_entries, key_fingerprint
from faceveil.jobs.keyfile import load_key_file, new_key_file
from faceveil.jobs.shard import ShardEntry, list_sources
from faceveil.manifests.jobsecret import open_object, sample_id, seal_object
from tests.factories import (
    JobInput,
    lfw_people,
    shared_path,
    tar_members,
    varied_faces,
    write_folder,
)

PEOPLE = 24
PHOTOS = 3


def _surrogate_job(
    root: Path, photos: Path, secret: Path, key: Path, escrow: tuple[str, ...] = ("--no-escrow",)
) -> JobInput:
    """``faceveil run --method surrogate`` of ``photos`` with the team key ``key`` (4 donors,
    shards of 25), without escrow unless ``escrow`` gives its flags."""
    options = ("--method", "surrogate", "--key-file", str(key), "--donors", "4", "--shard-size",
               "25", "--batch-size", "8", *escrow)  # fmt: skip
    return JobInput(root, photos, secret, options)


@pytest.fixture(scope="module")
def lfw_job(tmp_path_factory) -> tuple[JobInput, dict[str, int], Path]:
    """PHOTOS photos each of PEOPLE LFW people in a folder, with a job secret and a team key:
    (their job, file name -> person number, the team key)."""
    base = tmp_path_factory.mktemp("surrogate")
    who = lfw_people(base / "photos", PEOPLE, PHOTOS)
    secret = new_key_file(base / "secret.key")
    key = new_key_file(base / "team.key")
    return _surrogate_job(base, base / "photos", secret, key), who, key


@pytest.fixture(scope="module")
def surrogate_run(lfw_job, ray_local):
    return lfw_job[0].first_run()


def _metadata(out: Path) -> dict[str, dict]:
    """Sample key -> its public JSON, over every data shard."""
    docs = {}
    for tar in sorted((out / "data").glob("*.tar")):
        for name, data in tar_members(tar).items():
            if name.endswith(".json"):
                docs[name.removesuffix(".json")] = json.loads(data)
    return docs


def test_every_face_gets_a_surrogate_and_one_person_one_pseudonym(lfw_job, surrogate_run):
    job, who, _ = lfw_job
    docs = _metadata(surrogate_run)
    secret_bytes = load_key_file(job.secret)
    sources = list_sources(str(job.source))
    by_key = {sample_id(secret_bytes, s.uri): Path(s.path).name for s in sources}
    assert set(docs) == set(by_key)  # nothing lost, nothing quarantined
    faces = [f for d in docs.values() for f in d["faces"]]
    surrogates = [f for f in faces if f["method"] == "surrogate"]
    assert len(surrogates) >= 0.8 * len(faces), [f["method"] for f in faces]
    assert all(len(f["pseudonym"]) >= 16 for f in surrogates)
    # the main face of each photo: one pseudonym per person, different people differ
    names: dict[int, set[str]] = defaultdict(set)
    for key, doc in docs.items():
        main_face = [f for f in doc["faces"] if f["method"] == "surrogate"]
        if len(main_face) == 1:
            names[who[by_key[key]]].add(main_face[0]["pseudonym"])
    whole = np.mean([len(v) == 1 for v in names.values()])
    assert len(names) >= PEOPLE * 0.8 and whole >= 0.85, names
    firsts = [next(iter(v)) for v in names.values() if len(v) == 1]
    assert len(set(firsts)) == len(firsts)


def test_job_json_records_the_first_pass_and_the_key_fingerprint_only(lfw_job, surrogate_run):
    *_, key = lfw_job
    job = json.loads((surrogate_run / "job.json").read_text())
    assert job["status"] == "complete"
    assert job["config"]["anon"]["method_options"] == {
        "privacy": 0.55,
        "donors": 4,
        "linkage": "person",
    }
    assert job["config"]["surrogate"]["renderer"] == 8
    record = job["surrogate"]
    assert record["key_fingerprint"] == key_fingerprint(load_key_file(key))
    first = record["first_pass"]
    assert first["shards"] == 3 and first["shards_left_out"] == []
    assert first["faces"] >= PEOPLE * PHOTOS * 0.9 and first["donor_identities"] >= 8
    assert PEOPLE * 0.8 <= first["identities"] <= PEOPLE * 1.5
    raw = load_key_file(key)
    for path in surrogate_run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert raw not in blob and raw.hex().encode() not in blob, path


def test_rerun_is_byte_identical(lfw_job, surrogate_run):
    job = lfw_job[0]
    out = job.root / "out2"
    assert job.run(out) == 0
    for tar in sorted((surrogate_run / "data").glob("*.tar")):
        assert (
            hashlib.sha256(tar.read_bytes()).digest()
            == hashlib.sha256((out / "data" / tar.name).read_bytes()).digest()
        ), tar.name


def test_resume_with_another_key_is_refused(lfw_job, surrogate_run, capsys):
    job = lfw_job[0]
    other = _surrogate_job(job.root, job.source, job.secret, new_key_file(job.root / "other.key"))
    before = (surrogate_run / "job.json").read_bytes()
    assert other.run(surrogate_run, "--resume") == 1
    assert "another key" in capsys.readouterr().err
    assert (surrogate_run / "job.json").read_bytes() == before


def test_resume_with_another_linkage_is_refused(lfw_job, surrogate_run, capsys):
    before = (surrogate_run / "job.json").read_bytes()
    assert lfw_job[0].run(surrogate_run, "--linkage", "none", "--resume") == 1
    assert "another config" in capsys.readouterr().err
    assert (surrogate_run / "job.json").read_bytes() == before


@pytest.mark.parametrize("earlier", [1, 2, 3, 4, 5, 6, 7])
def test_a_job_drawn_by_an_earlier_renderer_is_not_resumed(lfw_job, surrogate_run, capsys, earlier):
    """job.json written before renderer revision 2 (the donors' shape posed in 3-D) has no
    ``renderer`` and none of today's fields such as ``linkage``; one written by revision 2
    (before turned faces were refitted) says 2, by revision 3 (before donors were lined
    up by optical flow) 3, and so on up to 6 (before the photo's fine detail was given back).
    Its config_sha256 is the SHA-256 of the sorted-key JSON of its config. Its shards hold the
    old rendering, so a --resume that would add new ones is refused with the reason, and
    nothing is written."""
    lfw = lfw_job[0]
    old = lfw.root / f"recorded-by-renderer-{earlier}"
    shutil.copytree(surrogate_run, old)
    job = json.loads((old / "job.json").read_text())
    if earlier == 1:
        del job["config"]["anon"]["method_options"]["linkage"]
        del job["config"]["surrogate"]["renderer"]
    else:
        job["config"]["surrogate"]["renderer"] = earlier
    job["config_sha256"] = hashlib.sha256(
        json.dumps(job["config"], sort_keys=True).encode()
    ).hexdigest()
    (old / "job.json").write_text(json.dumps(job))
    shutil.rmtree(old / "_done")  # shards left to do
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert lfw.run(old, "--resume") == 1
    err = capsys.readouterr().err
    assert f"renderer {earlier}" in err and "renderer 8" in err and "new output" in err, err
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


def test_no_linkage_run_records_it_and_publishes_no_pseudonym(lfw_job, surrogate_run):
    """``--linkage none`` end to end: job.json says so, the same faces are found and replaced
    as with ``person``, and none carries a pseudonym that could group a person's photos."""
    lfw = lfw_job[0]
    out = lfw.root / "out-unlinked"
    assert lfw.run(out, "--linkage", "none") == 0
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete"
    assert job["config"]["anon"]["method_options"]["linkage"] == "none"
    docs, linked = _metadata(out), _metadata(surrogate_run)
    assert docs.keys() == linked.keys()
    faces = [f for d in docs.values() for f in d["faces"]]
    surrogates = [f for f in faces if f["method"] == "surrogate"]
    assert len(surrogates) >= 0.8 * len(faces)
    assert all(f["pseudonym"] is None for f in faces)
    linked_faces = [f for d in linked.values() for f in d["faces"]]
    assert [f["bbox"] for f in faces] == [f["bbox"] for f in linked_faces]


def test_too_few_people_fail_before_anything_is_anonymized(tmp_path, secret_file, ray_local,
                                                           capsys):  # fmt: skip
    write_folder(tmp_path / "photos", varied_faces(12))
    key = new_key_file(tmp_path / "team.key")
    out = tmp_path / "out"
    assert _surrogate_job(tmp_path, tmp_path / "photos", secret_file, key).run(out) == 1
    err = capsys.readouterr().err
    assert "surrogate cannot be built" in err or "no face" in err, err
    assert not (out / "data").exists() and not (out / "_done").exists()
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "incomplete"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "needs --key-file"),
        (("--privacy", "1.5"), "--privacy must be in [0, 1]"),
        (("--donors", "3"), "at least 4"),
        (("--recognizer", "nope.onnx"), "--recognizer nope.onnx is not a file"),
    ],
)
def test_surrogate_flags_are_checked_before_any_work(tmp_path, secret_file, capsys, extra,
                                                     message):  # fmt: skip
    (tmp_path / "photos").mkdir()
    out = tmp_path / "out"
    job = JobInput(tmp_path, tmp_path / "photos", secret_file, ("--method", "surrogate"))
    if extra:
        extra += ("--key-file", str(new_key_file(tmp_path / "team.key")))
    assert job.run(out, "--no-escrow", *extra) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_surrogate_flags_with_another_method_are_refused(tmp_path, secret_file, capsys):
    (tmp_path / "photos").mkdir()
    job = JobInput(tmp_path, tmp_path / "photos", secret_file, ("--no-escrow",))
    out = tmp_path / "out"
    assert job.run(out, "--privacy", "0.2") == 1
    assert "apply to --method surrogate only" in capsys.readouterr().err
    assert job.run(out, "--linkage", "none") == 1
    assert "--linkage apply to --method surrogate only" in capsys.readouterr().err
    key = new_key_file(tmp_path / "team.key")
    assert job.run(out, "--key-file", str(key)) == 1
    assert "--key-file is used by --method surrogate only" in capsys.readouterr().err


def test_sealed_objects_open_only_with_their_key_and_hide_their_pixels() -> None:
    pixels = np.arange(160 * 160 * 3, dtype=np.uint32).astype(np.uint8).reshape(160, 160, 3)
    key = bytes(range(32))
    blob = seal_object(key, {"crop": pixels})
    assert pixels.tobytes()[:4096] not in blob
    assert np.array_equal(open_object(key, blob)["crop"], pixels)
    with pytest.raises(ValueError, match="transit key"):
        open_object(bytes(32), blob)
    tampered = bytearray(blob)
    tampered[40] ^= 1
    with pytest.raises(ValueError, match="transit key"):
        open_object(key, bytes(tampered))


def test_first_pass_sample_is_stable_and_spread() -> None:
    entries = [ShardEntry(f"shard-{i:06d}.tar", 10, "0" * 64, 100) for i in range(40)]
    picked = first_pass_entries(entries, 8)
    assert len(picked) == 8 and picked == sorted(picked, key=lambda e: e.shard)
    assert picked == first_pass_entries(list(reversed(entries)), 8)
    assert first_pass_entries(entries, None) == entries
    assert first_pass_entries(entries, 100) == entries
    numbers = [int(e.shard[6:12]) for e in picked]
    assert max(numbers) - min(numbers) > 10  # not simply the first few


def _utk_subset(base: Path, count: int) -> Path:
    """A labels CSV of ``count`` adult UTKFace faces, half of each gender, paths made absolute."""
    labels = shared_path("data", "utkface_dev", "labels.csv")
    with open(labels, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["age"]) >= 16]
    gender = "gender_0male_1female"
    picked = [r for g in "01" for r in rows if r[gender] == g][: count // 2]
    picked += [r for r in rows if r[gender] == "1"][: count - len(picked)]
    out = base / "labels.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in picked:
            writer.writerow({**r, "path": str(labels.parent / r["path"])})
    return out


def test_attribute_probes_steer_donors_and_are_recorded(lfw_job, surrogate_run):
    lfw = lfw_job[0]
    labels = _utk_subset(lfw.root, 60)
    out = lfw.root / "out-attributes"
    assert lfw.run(out, "--attributes", str(labels)) == 0
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete"
    assert job["surrogate"]["first_pass"]["attribute_probes"] == ["gender", "age"]
    assert job["config"]["surrogate"]["attributes"] == str(labels)
    # same people, same key: the pseudonyms stay, only the donors may change
    ours = {k: [f.get("pseudonym") for f in d["faces"]] for k, d in _metadata(out).items()}
    before = {
        k: [f.get("pseudonym") for f in d["faces"]] for k, d in _metadata(surrogate_run).items()
    }
    same = np.mean([ours[k] == before[k] for k in before])
    assert same >= 0.9


def test_missing_attribute_labels_are_refused_before_any_work(tmp_path, secret_file, capsys):
    (tmp_path / "photos").mkdir()
    key = new_key_file(tmp_path / "team.key")
    out = tmp_path / "out"
    job = _surrogate_job(tmp_path, tmp_path / "photos", secret_file, key)
    assert job.run(out, "--attributes", str(tmp_path / "nope.csv")) == 1
    assert "nope.csv is not a file" in capsys.readouterr().err
    assert not out.exists()


def test_first_pass_context_reaches_the_object_store_sealed(lfw_job, ray_local):
    """What the driver puts in Ray's object store (and Ray may spill) is ciphertext: the donor
    crops of the bank appear in it only after opening it with the run's transit key."""
    import os

    import ray

    from faceveil.anon_core.surrogate import SurrogateContext
    from faceveil.jobs.config import JobConfig
    from faceveil.jobs.firstpass import run_first_pass
    from faceveil.jobs.keys import Secrets, hold_secrets
    from faceveil.jobs.raypool import ActorSpec
    from faceveil.jobs.run import pending_tasks
    from faceveil.jobs.shard import read_index, write_shards
    from faceveil.jobs.storage import Location

    job, _, key = lfw_job
    base, secret = job.root, job.secret
    shards = base / "shards-direct"
    write_shards(str(job.source), str(shards), load_key_file(secret), 25)
    src = Location(str(shards))
    tasks = pending_tasks(src, read_index(src), src, resume=False)
    config = JobConfig(str(shards), str(base / "unused"))
    anon = replace(config.anon, method="surrogate", method_options={"donors": 4}, threads=1)
    secrets = Secrets(load_key_file(secret), None, load_key_file(key), os.urandom(32))
    spec = ActorSpec(anon, hold_secrets(secrets), config.pool, size=1)
    setup = run_first_pass(tasks, spec, secrets)
    blob = ray.get(setup.context)
    context = open_object(secrets.transit, blob)
    assert isinstance(context, SurrogateContext) and len(context.bank) == setup.info["donors"]
    for texture in context.bank.textures[:20]:
        assert texture[64].tobytes() not in blob  # a row of pixels, as pickle would hold it
    assert b"DonorBank" not in blob and b"numpy" not in blob


def test_surrogate_output_restores_pixel_exact_under_escrow(tmp_path, ray_local):
    """A surrogate moves pixels around the face too (the jaw line follows the new shape): the
    sealed regions must cover every changed pixel, so PNG inputs restore exactly."""
    from PIL import Image

    from faceveil.anon_core.imageio import decode_image

    jpgs = lfw_people(tmp_path / "jpg", 16, 2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in jpgs:
        Image.open(tmp_path / "jpg" / name).save(photos / name.replace(".jpg", ".png"))
    secret, key = new_key_file(tmp_path / "secret.key"), new_key_file(tmp_path / "team.key")
    passes = {}
    for who in ("alice", "bob", "carol", "dpo"):
        passes[who] = tmp_path / f"{who}.pass"
        passes[who].write_text(f"{who}-long-Passphrase-{len(who)}1234\n")
        passes[who].chmod(0o600)
    for who in ("alice", "bob", "carol"):
        assert main(["custodian", "keygen", "--name", who, "--out", str(tmp_path / "keys"),
                     "--kdf-work", "15", "--passphrase-file", str(passes[who])]) == 0  # fmt: skip
    out = tmp_path / "out"
    pubs = [str(tmp_path / "keys" / f"{who}.pub") for who in ("alice", "bob", "carol")]
    escrow = ("--custodians", *pubs, "--threshold", "2")
    assert _surrogate_job(tmp_path, photos, secret, key, escrow).run(out) == 0
    methods = [f["method"] for d in _metadata(out).values() for f in d["faces"]]
    assert methods.count("surrogate") >= 0.8 * len(methods)
    req = tmp_path / "req.json"
    assert main(["restore", "request", str(out), "--reason", "subject access request 9",
                 "--requester", "dpo", "--out", str(req), "--key-out", str(req.with_suffix(".key")),
                 "--purpose", "restore", "--all",
                 "--passphrase-file", str(passes["dpo"]), "--kdf-work", "15"]) == 0  # fmt: skip
    approvals = []
    for who in ("alice", "carol"):
        approvals.append(tmp_path / f"{who}.approval")
        assert main(["restore", "approve", str(req), "--identity",
                     str(tmp_path / "keys" / f"{who}.key"), "--out", str(approvals[-1]),
                     "--passphrase-file", str(passes[who]), "--yes"]) == 0  # fmt: skip
    dest = tmp_path / "restored"
    assert main(["restore", "apply", str(out), str(req), *map(str, approvals), "--dest",
                 str(dest), "--passphrase-file", str(passes["dpo"])]) == 0  # fmt: skip
    index = json.loads((dest / "restored.json").read_text())
    assert len(index) == len(jpgs)
    for sample, uri in index.items():
        (restored,) = dest.glob(f"{sample}.*")
        original = decode_image((photos / Path(uri).name).read_bytes()).rgb
        assert np.array_equal(decode_image(restored.read_bytes()).rgb, original), uri
