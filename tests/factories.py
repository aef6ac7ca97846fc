"""Test inputs from the bundled public-domain images: photo folders with EXIF/GPS, shared data."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.common import shared_root
from faceveil.anon_core import demo_data
from faceveil.jobs.demo import sample_images


def shared_dir() -> Path:
    """The one way tests (and benchmarks, :func:`bench.common.shared_root`) find ``../shared``:
    FACEVEIL_SHARED, else the parent of FACEVEIL_TEST_DATA (which names its ``data`` folder),
    else ``../shared`` beside the checkout."""
    return shared_root()


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test with the reason when it is absent."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (not present beside this checkout)")
    return path


def lfw_people(dest: Path, people: int, photos: int) -> dict[str, int]:
    """Copy ``photos`` photos each of the first ``people`` lfw_dev people with that many into
    ``dest`` as ``pNN_K.jpg`` (no real names); returns file name -> person number."""
    import csv
    import shutil
    from collections import defaultdict

    root = shared_path("data", "lfw_dev")
    by_person = defaultdict(list)
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_person[row["identity"]].append(row["path"])
    chosen = [p for p in sorted(by_person) if len(by_person[p]) >= photos][:people]
    dest.mkdir(parents=True, exist_ok=True)
    who = {}
    for n, person in enumerate(chosen):
        for k, path in enumerate(by_person[person][:photos]):
            shutil.copyfile(root / path, dest / f"p{n:02d}_{k}.jpg")
            who[f"p{n:02d}_{k}.jpg"] = n
    return who


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(demo_data.path(name)).convert("RGB"))


def varied_faces(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (file name, bytes) pairs of varied face photos with GPS EXIF, named like people."""
    return sample_images(count, seed)


def write_folder(root: Path, files: list[tuple[str, bytes]], nest_every: int = 4) -> Path:
    """Write ``files`` under ``root``, every ``nest_every``-th into a subfolder."""
    for i, (name, data) in enumerate(files):
        folder = root / "nested" if nest_every and i % nest_every == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def tar_members(source: Path | bytes) -> dict[str, bytes]:
    """Every file member of a tar (a path or its bytes), by name, in order."""
    import io
    import tarfile

    fileobj = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with fileobj, tarfile.open(fileobj=fileobj) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def done_markers(out: Path) -> list[dict]:
    """The shard markers (``_done/*.json``) of the output tree ``out``, in name order."""
    return [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]


@dataclass(frozen=True)
class JobInput:
    """A test module's job: its input ``source``, its job secret, the ``faceveil run`` options
    every run of it takes, and the folder ``root`` its outputs go to."""

    root: Path
    source: Path | str
    secret: Path
    options: tuple[str, ...] = ()

    def run(self, out: Path, *extra: str) -> int:
        """``faceveil run SOURCE OUT --secret-file SECRET OPTIONS... EXTRA...`` in this process
        (on the session's Ray); its exit code."""
        from faceveil.jobs.cli import main

        args = ["run", str(self.source), str(out), "--secret-file", str(self.secret)]
        return main([*args, *self.options, *extra])

    def first_run(self) -> Path:
        """``root/out1``, after a run into it that succeeded (a module fixture's job)."""
        out = self.root / "out1"
        assert self.run(out) == 0
        return out


def page_attack_cpu_s(page: str) -> dict[tuple[str, str, str], str]:
    """The "attack CPU s" cell of every row of an eval page's attacks table, by (method,
    attack, recognizer), as the page shows it."""
    table = next(t for t in page.split("<table>") if "<th>attack CPU s</th>" in t)
    cells = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("</table>")[0], re.S):
        tds = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if tds:
            cells[tuple(tds[:3])] = tds[-1]
    return cells


def gnu_sparse_tar(folder: Path, claimed: str = "512M") -> Path:
    """``folder/input.tar``: a real GNU tar (``tar --sparse``) of ``aaaa.jpg``, a sparse file of
    ``claimed`` bytes, and ``bbbb.jpg`` (12 bytes); about 10 KiB on disk."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    sparse = folder / "aaaa.jpg"
    subprocess.run(["truncate", "-s", claimed, str(sparse)], check=True)
    with open(sparse, "r+b") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    (folder / "bbbb.jpg").write_bytes(b"small member")
    tar = folder / "input.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", str(tar), "-C", str(folder), "aaaa.jpg",
         "bbbb.jpg"],
        check=True,
    )  # fmt: skip
    sparse.unlink()
    (folder / "bbbb.jpg").unlink()
    return tar
