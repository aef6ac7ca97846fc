"""Parquet in and out on a real local Ray: Hugging Face image structs and raw bytes read in
place, carried columns, the struct's path dropped, HF ``datasets`` loading the output, the same
markers, accounting, quarantine, escrow, resume and byte-identical reruns as for tars."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.cli import main
from faceveil.jobs.keyfile import new_key_file
from tests.factories import JobInput, done_markers, shared_path

PEOPLE = 14  # LFW photos, one per person; plus one row that is not an image
CUSTODIANS = ("alice", "bob")
NOT_AN_IMAGE = b"<html>not a picture</html>" * 10


def _lfw(count: int) -> list[Path]:
    root = shared_path("data", "lfw_dev", "images")
    return [sorted(person.glob("*.jpg"))[0] for person in sorted(root.iterdir())[:count]]


def hf_parquet(folder: Path, photos: list[Path]) -> dict[str, int]:
    """Two Parquet files written by Hugging Face ``datasets`` (image struct with the photo's file
    name, a person's name, as its path), a ``label`` and an identifying ``url``; the last row
    of the second file is not an image. Returns file name -> label."""
    import datasets

    folder.mkdir(parents=True)
    rows = [{"bytes": p.read_bytes(), "path": p.name} for p in photos]
    rows.append({"bytes": NOT_AN_IMAGE, "path": "broken.jpg"})
    labels = {r["path"]: 100 + i for i, r in enumerate(rows)}
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        ds = datasets.Dataset.from_dict(
            {
                "image": part,
                "label": [labels[r["path"]] for r in part],
                "url": [f"https://example.org/{r['path']}" for r in part],
            }  # fmt: skip
        ).cast_column("image", datasets.Image())
        ds.to_parquet(str(folder / f"train-{n:05d}.parquet"))
    return labels


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    photos = _lfw(PEOPLE)
    labels = hf_parquet(root / "hf", photos)
    secret = new_key_file(root / "secret.key")
    (root / "pass.txt").write_text("custodian-orchid-Lantern-4417\n")
    (root / "pass.txt").chmod(0o600)
    for who in CUSTODIANS:
        keygen = ["custodian", "keygen", "--name", who, "--out", str(root / "keys"),
                  "--kdf-work", "15", "--passphrase-file", str(root / "pass.txt")]  # fmt: skip
        assert main(keygen) == 0
    return root, secret, labels, photos


@pytest.fixture(scope="module")
def job(world) -> JobInput:
    """The Hugging Face Parquet files to Parquet, with 2-of-2 escrow."""
    root, secret = world[0], world[1]
    options = ("--output-format", "parquet", "--drop-columns", "url", "--shard-size", "6",
               "--batch-size", "4", "--no-progress", "--threshold", "2", "--custodians",
               *(str(root / "keys" / f"{who}.pub") for who in CUSTODIANS))  # fmt: skip
    return JobInput(root, root / "hf" / "*.parquet", secret, options)


@pytest.fixture(scope="module")
def first(job, ray_local):
    return job.first_run()


def test_same_tree_markers_accounting_and_escrow_as_for_tars(first):
    names = sorted(p.name for p in (first / "data").iterdir())
    assert names == ["shard-000000.parquet", "shard-000001.parquet", "shard-000002.parquet"]
    markers = done_markers(first)
    assert sum(m["samples_in"] for m in markers) == PEOPLE + 1
    rows = 0
    for m in markers:
        assert m["samples_in"] == m["anonymized"] + m["no_face"] + m["quarantined"]
        for part in ("data", "quarantine", "keys"):
            path = first / m["files"][part]["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == m["files"][part]["sha256"]
        data = pq.read_table(first / m["files"]["data"]["path"])
        assert data.num_rows == m["anonymized"] + m["no_face"]
        rows += data.num_rows
        sealed = pq.read_table(first / m["files"]["keys"]["path"])
        assert set(sealed.column("key").to_pylist()) >= set(data.column("__key__").to_pylist())
        assert m["manifest"]["rows"] > 0
    assert rows == PEOPLE
    quarantined = [r for p in sorted((first / "quarantine").glob("*.parquet"))
                   for r in pq.read_table(p).to_pylist()]  # fmt: skip
    assert len(quarantined) == 1 and quarantined[0]["stage"] == "decode"
    assert quarantined[0]["reason"].startswith("undecodable")
    job = json.loads((first / "job.json").read_text())
    assert job["status"] == "complete" and job["totals"]["samples_in"] == PEOPLE + 1


def test_hf_datasets_loads_the_output_as_images_with_columns_carried(first, world):
    import datasets

    labels, photos = world[2], world[3]
    ds = datasets.load_dataset(
        "parquet", data_files=str(first / "data" / "*.parquet"), split="train"
    )
    assert isinstance(ds.features["image"], datasets.Image)  # no hand-written features
    assert set(ds.column_names) == {"__key__", "image", "label", "faceveil"}  # url dropped
    assert sorted(ds["label"]) == sorted(labels[p.name] for p in photos)
    by_label = {labels[p.name]: p for p in photos}
    faces = 0
    for row in ds:
        image = np.asarray(row["image"].convert("RGB"))
        original = decode_image(by_label[row["label"]].read_bytes()).rgb
        assert (
            image.shape
            == original.shape
            == (row["faceveil"]["height"], row["faceveil"]["width"], 3)
        )
        for face in row["faceveil"]["faces"]:
            x1, y1, x2, y2 = (int(v) for v in face["bbox"])
            change = np.abs(image[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2]).mean()
            assert change > 4.0, "a found face left the job unchanged"
            faces += 1
        assert row["faceveil"]["status"] in ("anonymized", "no_face")
    assert faces >= PEOPLE - 1


def test_no_path_or_name_from_the_input_reaches_the_output(first, world):
    photos = world[3]
    for path in sorted((first / "data").glob("*.parquet")):
        table = pq.read_table(path)
        assert table.column("image").combine_chunks().field("path").null_count == table.num_rows
        text = repr([{k: v for k, v in r.items() if k != "image"} for r in table.to_pylist()])
        blob = path.read_bytes() + table.schema.serialize().to_pybytes()
        for photo in photos:
            assert photo.stem not in text and photo.stem.encode() not in blob
        assert "example.org" not in text and "url" not in table.column_names


def test_rerun_is_byte_identical_and_resume_redoes_only_missing_shards(first, job):
    second = job.root / "out2"
    assert job.run(second) == 0
    for path in sorted((first / "data").glob("*.parquet")):
        assert (second / "data" / path.name).read_bytes() == path.read_bytes()
    (second / "_done" / "shard-000001.json").unlink()
    (second / "data" / "shard-000001.parquet").unlink()
    kept = (second / "data" / "shard-000000.parquet").stat().st_mtime_ns
    assert job.run(second, "--resume") == 0
    assert (second / "data" / "shard-000000.parquet").stat().st_mtime_ns == kept
    redone = (second / "data" / "shard-000001.parquet").read_bytes()
    assert redone == (first / "data" / "shard-000001.parquet").read_bytes()
    shutil.rmtree(second)


def test_raw_bytes_column_and_pixel_boxes_a_blind_detector_misses(world, ray_local):
    """img2dataset-style Parquet (a ``jpg`` bytes column) with known boxes in pixels: with the
    detector disabled (threshold 1), only the given boxes are anonymized, and they are; a row
    whose boxes are unusable is quarantined with the reason."""
    root, secret, _, photos = world
    folder = root / "raw"
    folder.mkdir()
    table = pa.table({"jpg": [p.read_bytes() for p in photos[:4]],
                      "face_boxes": [[[85.0, 70.0, 165.0, 180.0]], [], None, [[9.0, 5, 1, 20]]],
                      "caption": ["a", "b", "c", "d"]})  # fmt: skip
    pq.write_table(table, folder / "part.parquet")
    out = root / "raw-out"
    args = ["run", str(folder / "part.parquet"), str(out), "--image-column", "jpg",
            "--boxes-column", "face_boxes", "--boxes-units", "pixels", "--det-threshold", "1.0",
            "--output-format", "parquet", "--no-escrow", "--secret-file", str(secret),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    rows = pq.read_table(out / "data" / "shard-000000.parquet").to_pylist()
    assert [r["caption"] for r in rows] == ["a", "b", "c"] and "face_boxes" not in rows[0]
    assert [r["faceveil"]["status"] for r in rows] == ["anonymized", "no_face", "no_face"]
    (bad,) = pq.read_table(out / "quarantine" / "shard-000000.parquet").to_pylist()
    assert (
        bad["stage"] == "input" and bad["reason"] == "known boxes: a box has x2 <= x1 or y2 <= y1"
    )
    after = decode_image(rows[0]["jpg"]["bytes"]).rgb.astype(int)
    before = decode_image(photos[0].read_bytes()).rgb
    assert np.abs(after[70:180, 85:165] - before[70:180, 85:165]).mean() > 8.0
    # The residual-face audit reads Parquet output: the two faces no box covered are found.
    assert main(["audit", "faces", str(out), "--detector", "centerface", "--no-progress"]) == 1
    report = json.loads((out / "report" / "residual_faces.json").read_text())
    assert report["samples"] == 3 and report["unchecked"] == []
    assert {r["key"] for r in report["residual_faces"]} == {r["__key__"] for r in rows[1:]}


def _write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_input_that_cannot_be_read_as_asked_is_refused_clearly(tmp_path):
    from faceveil.jobs.parquetin import InputColumns
    from faceveil.jobs.shard import list_sources

    image = [b"\xff\xd8\xff"]
    one = _write(tmp_path / "a" / "x.parquet", image=image, n=[1])
    with pytest.raises(ValueError, match="no image column 'jpg'.*--image-column"):
        list_sources(str(one), columns=InputColumns(image_column="jpg"))
    with pytest.raises(ValueError, match="image column 'n' is int64"):
        list_sources(str(one), columns=InputColumns(image_column="n"))
    with pytest.raises(ValueError, match="no boxes column 'face_bboxes'"):
        list_sources(str(one), columns=InputColumns(boxes_column="face_bboxes"))
    clash = _write(tmp_path / "b" / "x.parquet", image=image, faceveil=["mine"])
    with pytest.raises(ValueError, match="'faceveil' has the name of an output column"):
        list_sources(str(clash))
    assert len(list_sources(str(clash), columns=InputColumns(drop_columns=("faceveil",)))) == 1
    _write(tmp_path / "a" / "y.parquet", image=image, n=["other type"])
    with pytest.raises(ValueError, match="do not all have the same columns"):
        list_sources(str(tmp_path / "a"))
    (tmp_path / "b" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match="both Parquet files and images"):
        list_sources(str(tmp_path / "b"))


def test_rows_are_listed_in_row_order_past_nine(tmp_path):
    from faceveil.jobs.shard import list_sources

    path = _write(tmp_path / "x.parquet", image=[b"a"] * 12)
    sources = list_sources(str(tmp_path))
    assert [s.start for s in sources] == list(range(12))
    assert sources[10].uri == f"{path}#row=000000000010"


def test_escrowed_parquet_output_restores_exact_originals(tmp_path, ray_local):
    """2-of-3 escrow on a Parquet output: restore reads its data shards; PNG inputs come back
    pixel-exact (sealed whole: they leave as JPEG), JPEG inputs with every face box exact."""
    from tests.jobs.escrow_world import CUSTODIANS as NAMES
    from tests.jobs.escrow_world import check_restored, make_world, public_metadata

    pubs = [str(tmp_path / "keys" / f"{who}.pub") for who in NAMES]
    run_args = ("--custodians", *pubs, "--threshold", 2, "--output-format", "parquet")
    w = make_world(tmp_path, count=4, run_args=run_args)
    assert sorted(p.suffix for p in (w.out / "data").iterdir()) == [".parquet", ".parquet"]
    everything = set(public_metadata(w.out))
    assert len(everything) == 4 and {ext for ext, _ in public_metadata(w.out).values()} == {"jpg"}
    req, _ = w.request("--all")
    approvals = [w.approve(req, "alice"), w.approve(req, "carol")]
    result = w.apply(req, approvals, tmp_path / "restored")
    assert result.rc == 0, result.err
    check_restored(w, tmp_path / "restored", everything)
