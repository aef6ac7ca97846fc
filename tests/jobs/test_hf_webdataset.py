"""WebDataset output that Hugging Face ``datasets`` and ``webdataset`` load as it is (one image
format per job), README's "Reading the output" snippets run as written, and known boxes from a
field of each input WebDataset sample's ``.json``."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.cli import main
from faceveil.jobs.keyfile import new_key_file
from tests.factories import shared_path, tar_members

README = Path(__file__).resolve().parents[2] / "README.md"
BOX = [0.34, 0.28, 0.66, 0.72]  # around the face of an LFW photo, as fractions


def _png(jpg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpg)).save(buf, format="PNG")
    return buf.getvalue()


def _webdataset_tar(path: Path, photos: list[bytes]) -> None:
    """A raw WebDataset tar: per sample ``NNN.jpg`` (or ``.png`` for odd ones) and ``NNN.json``
    with ``face_bboxes`` (normalized, LAION's layout) and a caption."""
    with tarfile.open(path, "w") as tar:
        for i, jpg in enumerate(photos):
            ext, data = ("png", _png(jpg)) if i % 2 else ("jpg", jpg)
            meta = json.dumps({"face_bboxes": [BOX], "caption": f"photo {i}"}).encode()
            for name, blob in ((f"{i:03d}.{ext}", data), (f"{i:03d}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfwds")
    people = sorted(shared_path("data", "lfw_dev", "images").iterdir())[:4]
    photos = [sorted(p.glob("*.jpg"))[0].read_bytes() for p in people]
    (root / "wds").mkdir()
    _webdataset_tar(root / "wds" / "part-000.tar", photos)
    (root / "pngs").mkdir()
    for i, jpg in enumerate(photos[:2]):
        (root / "pngs" / f"{i}.png").write_bytes(_png(jpg))
    return root, new_key_file(root / "secret.key"), photos


def _run(world, source: str, out: str, *extra: str) -> Path:
    root, secret, _ = world
    args = ["run", str(root / source), str(root / out), "--no-escrow", "--no-progress",
            "--shard-size", "2", "--secret-file", str(secret), *extra]  # fmt: skip
    assert main(args) == 0
    return root / out


@pytest.fixture(scope="module")
def mixed(world, ray_local) -> Path:
    """JPEG and PNG inputs: the output is all ``jpg`` (the default when not every input is
    lossless)."""
    return _run(world, "wds", "out-mixed")


def _readme_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n### Reading the output\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _exec(block: str, out: Path) -> dict:
    scope: dict = {}
    exec(block.replace("out/anon", str(out)), scope)  # noqa: S102 (README's own snippet)
    return scope


def test_one_image_format_per_job(mixed):
    exts = {
        name.rsplit(".", 1)[1] for p in (mixed / "data").glob("*.tar") for name in tar_members(p)
    }
    assert exts == {"jpg", "json"}


def test_readme_snippets_load_the_output_with_datasets_and_webdataset(mixed):
    blocks = _readme_blocks()
    assert len(blocks) == 3
    for block in blocks[:2]:  # datasets, then webdataset
        scope = _exec(block, mixed)
        assert isinstance(scope["image"], Image.Image) and scope["image"].size == (250, 250)
        assert scope["meta"]["status"] == "anonymized" and scope["meta"]["faces"]
    ds = _exec(blocks[0], mixed)["ds"]
    assert len(ds) == 4 and set(ds.column_names) >= {"__key__", "jpg", "json"}


def test_readme_parquet_snippet(world, ray_local):
    out = _run(world, "pngs", "out-parquet", "--output-format", "parquet")
    scope = _exec(_readme_blocks()[2], out)
    assert isinstance(scope["image"], Image.Image) and scope["image"].format == "PNG"
    assert scope["meta"]["width"] == 250 and len(scope["ds"]) == 2


def test_every_input_lossless_gives_png_unless_told(world, ray_local):
    out = _run(world, "pngs", "out-png")
    exts = {n.rsplit(".", 1)[1] for p in (out / "data").glob("*.tar") for n in tar_members(p)}
    assert exts == {"png", "json"}
    out = _run(world, "pngs", "out-png-as-jpg", "--output-image-format", "jpg")
    exts = {n.rsplit(".", 1)[1] for p in (out / "data").glob("*.tar") for n in tar_members(p)}
    assert exts == {"jpg", "json"}


def test_boxes_from_a_field_of_the_webdataset_json_join_a_blind_detector(world, ray_local):
    blind = ("--det-threshold", "1.0")
    missed = _run(world, "wds", "out-blind", *blind)
    given = _run(world, "wds", "out-given", *blind, "--boxes-column", "face_bboxes")
    for path in sorted((given / "data").glob("*.tar")):
        members = tar_members(path)
        without = tar_members(missed / "data" / path.name)
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            key = name.removesuffix(".json")
            assert json.loads(without[name])["status"] == "no_face"
            meta = json.loads(data)
            assert meta["status"] == "anonymized" and len(meta["faces"]) == 1
            x1, y1, x2, y2 = (int(v) for v in meta["faces"][0]["bbox"])
            after = decode_image(members[f"{key}.jpg"]).rgb.astype(int)
            before = decode_image(without[f"{key}.jpg"]).rgb.astype(int)
            assert np.abs(after[y1:y2, x1:x2] - before[y1:y2, x1:x2]).mean() > 8.0
