"""``faceveil lookup`` through the real CLI on a real small job (local Ray, no escrow)."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faceveil.jobs.cli import main
from faceveil.jobs.keyfile import new_key_file
from tests.factories import gnu_sparse_tar, tar_members, varied_faces, write_folder


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("lookup")
    files = varied_faces(6)
    write_folder(root / "photos", [*files, ("not_an_image.png", b"<html>no picture</html>")])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inside/Jane_Roe_0001.jpg")
        info.size = len(files[1][1])
        tar.addfile(info, io.BytesIO(files[1][1]))
    (root / "photos" / "archive.tar").write_bytes(buf.getvalue())
    gnu_sparse_tar(root / "photos" / "sparse")  # a 10 KiB tar claiming a 512 MiB member
    (root / "photos" / "Big_Person_0001.jpg").write_bytes(os.urandom(3 * 2**20))
    secret = new_key_file(root / "secret.key")
    out = root / "out"
    argv = ["run", str(root / "photos"), str(out), "--shard-size", "4", "--batch-size", "4",
            "--secret-file", str(secret), "--no-escrow", "--no-progress",
            "--max-file-bytes", str(2 * 2**20)]  # fmt: skip
    assert main(argv) == 0
    return root, out, secret, files


def _published_keys(out: Path) -> set[str]:
    return {n.split(".")[0] for t in (out / "data").glob("*.tar") for n in tar_members(t)}


def _quarantined(out: Path) -> dict[str, dict]:
    rows = [r for p in (out / "quarantine").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r for r in rows}


def _lookup(capsys, out, secret, *given) -> tuple[int, list[list[str]]]:
    rc = main(["lookup", str(out), "--secret-file", str(secret), *map(str, given)])
    lines = capsys.readouterr().out.splitlines()
    return rc, [line.split("\t") for line in lines]


def test_lookup_finds_anonymized_and_quarantined_samples(job, capsys, caplog, monkeypatch):
    root, out, secret, files = job
    nested = f"nested/{files[0][0]}"  # a relative path, normalised as the planner lists it
    monkeypatch.chdir(root / "photos")
    given = [nested, root / "photos" / files[2][0], root / "photos" / "not_an_image.png",
             f"{root}/photos/archive.tar#inside/Jane_Roe_0001.jpg"]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        rc, rows = _lookup(capsys, out, secret, *given)
    assert rc == 0
    assert [r[0] for r in rows] == [str(g) for g in given]
    published, quarantined = _published_keys(out), _quarantined(out)
    for row in (rows[0], rows[1], rows[3]):
        assert row[1] in published and row[2].startswith("anonymized (shard-")
    assert rows[2][1] in quarantined
    reason = quarantined[rows[2][1]]["reason"]
    assert rows[2][2].startswith("quarantined (shard-") and rows[2][2].endswith(f": {reason}")
    logged = caplog.text
    assert not any(name in logged for name, _ in files) and "Jane_Roe" not in logged


def test_lookup_of_a_file_not_in_the_job_exits_1(job, capsys, tmp_path):
    root, out, secret, files = job
    stranger = tmp_path / files[0][0]  # same name, another folder: another URI, another key
    rc, rows = _lookup(capsys, out, secret, root / "photos" / files[2][0], stranger)
    assert rc == 1
    assert rows[0][2].startswith("anonymized") and rows[1][2] == "not in this job"


def test_lookup_refusals_exit_1_and_usage_errors_exit_2(job, capsys, tmp_path):
    root, out, secret, files = job
    other = new_key_file(tmp_path / "other.key")
    rc, rows = _lookup(capsys, out, other, root / "photos" / files[2][0])
    assert rc == 1 and rows == []
    assert main(["lookup", str(tmp_path / "no-job"), "--secret-file", str(secret), "x.jpg"]) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["lookup", str(out), "x.jpg"])  # no --secret-file
    assert exit_.value.code == 2


def test_sparse_and_oversized_sources_are_quarantined_unread(job, capsys):
    root, out, secret, _ = job
    sparse = f"{root}/photos/sparse/input.tar#aaaa.jpg"
    rc, rows = _lookup(capsys, out, secret, sparse, root / "photos" / "Big_Person_0001.jpg")
    assert rc == 0
    assert rows[0][2].endswith(": read: tar member is a GNU sparse file")
    assert rows[1][2].endswith(
        f": read: file of {3 * 2**20} bytes exceeds the cap of {2 * 2**20} bytes"
    )
    markers = [json.loads(p.read_text()) for p in (out / "_done").glob("*.json")]
    assert (
        sum(m["samples_in"] for m in markers) == 11
    )  # 6 faces, 1 bad, 1 in archive, 2 sparse, 1 big
    for m in markers:
        assert m["samples_in"] == m["anonymized"] + m["no_face"] + m["quarantined"]
