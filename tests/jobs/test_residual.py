"""``faceveil audit faces``: a second detector over a job's output lists faces the job left
un-anonymized (bundled images, WebDataset tars written here, local and fsspec memory)."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.faces import iou_matrix
from faceveil.anon_core.imageio import encode_image
from faceveil.anon_core.methods import create
from faceveil.jobs.residual_cli import add_audit_faces_command
from tests.factories import rgb, shared_dir

MODELS = shared_dir() / "models"


def _tar(samples: dict[str, dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, dict[str, bytes]]]:
    """A fully anonymized photo, one with a face left out of the job, and a broken sample."""
    result = FaceAnonymizer(AnonConfig(method="blur"))(rgb("obama.jpg"))
    clean = {"jpg": result.encoded, "json": json.dumps(result.metadata()).encode()}
    image = rgb("two_people.jpg")
    faces = build_detector("centerface")([image])[0]
    assert len(faces) == 2
    kept = faces.select(np.array([0]))
    partial = create("blur")(image, kept).image
    meta = {
        "width": image.shape[1],
        "height": image.shape[0],
        "faces": [{"bbox": [float(v) for v in kept.boxes[0, :4]]}],
        "status": "anonymized",
    }
    leak = {"jpg": encode_image(partial, "jpg"), "json": json.dumps(meta).encode()}
    return {
        "clean": {"a" * 32: clean},
        "leak": {"b" * 32: leak},
        "broken": {"c" * 32: {"jpg": clean["jpg"]}},
        "missed_box": {"box": faces.boxes[1, :4]},
    }


def _write(fs, root: str, shards: list[dict[str, dict[str, bytes]]]) -> None:
    fs.makedirs(f"{root}/data", exist_ok=True)
    for i, shard in enumerate(shards):
        fs.pipe(f"{root}/data/shard-{i:06d}.tar", _tar(shard))


def _audit(out: str, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    audit = parser.add_subparsers().add_parser("audit")
    add_audit_faces_command(audit.add_subparsers())
    args = parser.parse_args(["audit", "faces", out, "--no-progress", *extra])
    return args.handler(args)


def test_clean_output_exits_zero(samples, tmp_path: Path, capsys) -> None:
    _write(fsspec.filesystem("file"), str(tmp_path), [samples["clean"]])
    assert _audit(str(tmp_path), "--detector", "centerface") == 0
    report = json.loads((tmp_path / "report" / "residual_faces.json").read_text())
    assert report["samples"] == 1 and report["residual_faces"] == []
    assert "0 residual faces" in capsys.readouterr().out


def test_face_left_out_is_listed(samples, tmp_path: Path, capsys) -> None:
    shards = [samples["clean"], {**samples["leak"], **samples["broken"]}]
    _write(fsspec.filesystem("file"), str(tmp_path), shards)
    assert _audit(str(tmp_path), "--detector", "centerface") == 1
    report = json.loads((tmp_path / "report" / "residual_faces.json").read_text())
    assert report["shards"] == 2 and report["samples"] == 3
    assert [r["key"] for r in report["residual_faces"]] == ["b" * 32]
    found = np.array([report["residual_faces"][0]["bbox"]])
    assert iou_matrix(found, samples["missed_box"]["box"][None]).max() > 0.5
    assert report["residual_faces"][0]["shard"] == "shard-000001.tar"
    assert [u["key"] for u in report["unchecked"]] == ["c" * 32]
    printed = capsys.readouterr().out
    assert "b" * 32 in printed and "unchecked" in printed


def test_output_read_through_fsspec(samples) -> None:
    fs = fsspec.filesystem("memory")
    _write(fs, "/faceveil-residual", [samples["leak"]])
    assert _audit("memory://faceveil-residual", "--detector", "centerface") == 1
    report = json.loads(fs.cat("/faceveil-residual/report/residual_faces.json"))
    assert report["samples_with_residual_faces"] == 1


def test_missing_output_is_an_input_error(tmp_path: Path) -> None:
    assert _audit(str(tmp_path / "nothing"), "--detector", "centerface") == 1


@pytest.mark.shared
def test_scrfd_finds_the_same_leak(samples, tmp_path: Path) -> None:
    if not (MODELS / "scrfd_2.5g_bnkps.onnx").is_file():
        pytest.skip(f"needs SCRFD weights in {MODELS} (shared models)")
    _write(fsspec.filesystem("file"), str(tmp_path), [samples["clean"], samples["leak"]])
    assert _audit(str(tmp_path), "--model-root", str(MODELS)) == 1
    report = json.loads((tmp_path / "report" / "residual_faces.json").read_text())
    assert report["detector"]["name"] == "scrfd"
    assert {r["key"] for r in report["residual_faces"]} == {"b" * 32}
