"""``faceveil.jobs.api.anonymize`` on a real local Ray: real face photos in a Ray Dataset, faces
gone (a second detector finds none), other columns carried, lazy, fail closed, and the escrow
folder restores a row's original with the real restore commands."""

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.api import DatasetEscrow, DatasetOptions, EscrowSpec, anonymize
from faceveil.jobs.keyfile import new_key_file
from tests.factories import shared_path
from tests.jobs.escrow_world import CUSTODIANS, PASSPHRASES, World, cli

BROKEN = b"<html>not a photo</html>" * 10
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven real face photos (six LFW people, one photo of two) and a file that is no image."""
    root = tmp_path_factory.mktemp("api") / "photos"
    root.mkdir()
    lfw = sorted(shared_path("data", "lfw_dev", "images").glob("*/*_0001.jpg"))[:6]
    for n, path in enumerate(lfw):
        shutil.copyfile(path, root / f"p{n}.jpg")  # no real names
    shutil.copyfile(shared_path("data", "fixtures", "two_people.jpg"), root / "two.jpg")
    (root / "broken.jpg").write_bytes(BROKEN)
    return root


@pytest.fixture(scope="module")
def scrfd():
    return build_detector("scrfd", str(shared_path("models")), 0.5, "cpu")


def _faces(detector, data: bytes) -> int:
    return len(detector([decode_image(data).rgb])[0])


def test_anonymize_is_lazy_keeps_columns_and_leaves_no_face(photos, scrfd, ray_local, tmp_path):
    import ray

    seen = tmp_path / "seen"
    seen.mkdir()

    def touch(row: dict) -> dict:  # records that a row was read, in the worker
        (seen / Path(row["path"]).name).write_bytes(b"")
        return row

    ds = ray.data.read_binary_files(str(photos), include_paths=True).map(touch)
    anon = anonymize(ds, image_column="bytes", options=DatasetOptions(batch_size=4))
    assert isinstance(anon, ray.data.Dataset)
    assert list(seen.iterdir()) == []  # nothing ran yet
    rows = {Path(r["path"]).name: r for r in anon.take_all()}
    assert sorted(p.name for p in seen.iterdir()) == sorted(p.name for p in photos.iterdir())
    assert sorted(rows) == sorted(p.name for p in photos.iterdir())  # every row, none lost
    broken = rows.pop("broken.jpg")
    assert broken["bytes"] is None and broken["faceveil_status"] == "quarantined"
    assert broken["faceveil_reason"].startswith("decode: undecodable")
    for name, row in rows.items():
        original = (photos / name).read_bytes()
        assert _faces(scrfd, original) >= 1, name  # the check below can fail
        assert row["faceveil_status"] == "anonymized" and row["faceveil_faces"] >= 1, name
        assert _faces(scrfd, row["bytes"]) == 0, name
        assert "faceveil_key" not in row  # no escrow: no key column
    assert rows["two.jpg"]["faceveil_faces"] == 2


def test_raise_policy_fails_the_dataset(photos, ray_local):
    import ray

    ds = ray.data.read_binary_files(str(photos / "broken.jpg"))
    anon = anonymize(ds, image_column="bytes", options=DatasetOptions(on_error="raise"))
    with pytest.raises(Exception, match="1 rows could not be anonymized, first: decode"):
        anon.take_all()


def _custodians(root: Path) -> World:
    """Key pairs for the custodians and a requester's folder, made with the real CLI."""
    w = World(root, {}, root / "escrow")
    for folder in ("pass", "requester"):
        (root / folder).mkdir()
    for who in (*CUSTODIANS, "requester"):
        w.passfiles[who] = root / "pass" / f"{who}.txt"
        w.passfiles[who].write_text(PASSPHRASES[who] + "\n")
    for who in CUSTODIANS:
        argv = ["custodian", "keygen", "--name", who, "--out", root / "keys", "--kdf-work", 15]
        assert cli(*argv, "--passphrase-file", w.passfiles[who]).rc == 0
    return w


def _readme_snippet() -> str:
    text = README.read_text()
    section = text.split("\n### A Ray Dataset API\n", 1)[1].split("\n#", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_readme_snippet_hf_parquet_with_escrow_restores_rows(
    photos, ray_local, tmp_path, monkeypatch
):
    names = ["p0.jpg", "two.jpg", "broken.jpg"]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": (photos / n).read_bytes(), "path": f"/home/x/{n}"} for n in names]
    (tmp_path / "faces").mkdir()
    table = pa.table({"image": pa.array(images, struct), "label": [7, 8, 9]})
    pq.write_table(table, tmp_path / "faces" / "hf.parquet")
    w = _custodians(tmp_path)
    monkeypatch.setenv("FACEVEIL_SECRET", str(tmp_path / "secret" / "job.key"))
    exec(_readme_snippet().replace('"/data/', f'"{tmp_path}/'), {})
    w.out = tmp_path / "faces-escrow"
    parts = sorted((tmp_path / "faces-anon").glob("*.parquet"))
    out = pa.concat_tables(pq.read_table(p) for p in parts)
    assert out.schema.field("image").type == struct
    rows = {r["label"]: r for r in out.to_pylist()}
    assert sorted(rows) == [7, 8, 9]
    assert rows[9]["image"] is None and rows[9]["faceveil_status"] == "quarantined"
    assert [rows[k]["image"]["path"] for k in (7, 8)] == [None, None]  # no source path
    assert len({r["faceveil_key"] for r in rows.values()}) == 3
    assert cli("audit", "verify", w.out, "-q").rc == 0
    wanted = {rows[8]["faceveil_key"]: "two.jpg", rows[9]["faceveil_key"]: "broken.jpg"}
    request, _ = w.request(*(a for key in wanted for a in ("--key", key)))
    approvals = [w.approve(request, who) for who in CUSTODIANS[:2]]
    result = w.apply(request, approvals, tmp_path / "restored")
    assert result.rc == 0, result.err
    for key, name in wanted.items():
        (restored,) = (tmp_path / "restored").glob(f"{key}.*")
        assert restored.read_bytes() == (photos / name).read_bytes(), name


def test_escrow_folder_fills_only_when_consumed(photos, ray_local, tmp_path):
    import ray

    spec = EscrowSpec(str(tmp_path / "escrow"), kms=None, custodians=(), threshold=0,
                      secret_file=str(new_key_file(tmp_path / "secret.key")))  # fmt: skip
    with pytest.raises(ValueError, match="choose how the originals are escrowed"):
        DatasetEscrow(spec).open()
    w = _custodians(tmp_path)
    spec = EscrowSpec(str(tmp_path / "escrow2"), tuple(str(w.pub(c)) for c in CUSTODIANS), 2,
                      secret_file=spec.secret_file)  # fmt: skip
    ds = ray.data.read_binary_files(str(photos / "p1.jpg"))
    with DatasetEscrow(spec) as escrow:
        anon = anonymize(ds, image_column="bytes", escrow=escrow)
        assert not (tmp_path / "escrow2" / "keys").exists()
        (row,) = anon.take_all()
        assert len(list((tmp_path / "escrow2" / "keys").glob("shard-*.parquet"))) == 1
    assert row["faceveil_status"] == "anonymized" and len(row["faceveil_key"]) == 32
    with pytest.raises(ValueError, match="is not empty"):
        DatasetEscrow(spec).open()
