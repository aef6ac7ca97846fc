"""Labelled evaluation sets: identity manifests and attribute labels, with salted sample ids."""

from __future__ import annotations

import csv
import hashlib
import hmac
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anon_core.imageio import decode_image


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``path`` never leaves the process; reports use ``sample_id``."""

    sample_id: str
    path: Path
    identity: int


@dataclass(frozen=True)
class LabelledSet:
    """Images with identities, sorted by (identity name, path); identities are indices only."""

    root: Path
    samples: tuple[Sample, ...]
    n_identities: int

    def read(self, index: int) -> bytes:
        """The file bytes of sample ``index``."""
        return self.samples[index].path.read_bytes()

    def __len__(self) -> int:
        return len(self.samples)


def sample_id(salt: bytes, relative_path: str) -> str:
    """A salted hash naming a sample in reports; without the salt it cannot be traced back."""
    return hmac.new(salt, relative_path.encode(), hashlib.sha256).hexdigest()[:12]


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} must have columns {list(required)} and at least one row")
    return rows


def load_labelled_set(
    images: str | Path, manifest: str | Path, salt: bytes, limit_identities: int | None = None
) -> LabelledSet:
    """Read a ``path,identity`` manifest whose paths are relative to ``images``.

    ``limit_identities`` keeps the first N identities (by name) that have at least two images,
    so every kept identity yields a gallery image and at least one probe.
    """
    root = Path(images)
    by_identity: dict[str, list[str]] = defaultdict(list)
    for row in _read_csv(Path(manifest), ("path", "identity")):
        by_identity[row["identity"]].append(row["path"])
    names = sorted(by_identity)
    if limit_identities is not None:
        names = [n for n in names if len(by_identity[n]) >= 2][:limit_identities]
    samples = []
    for index, name in enumerate(names):
        for rel in sorted(by_identity[name]):
            path = root / rel
            if not path.is_file():
                raise FileNotFoundError(f"manifest lists a missing image (row {len(samples)})")
            samples.append(Sample(sample_id(salt, rel), path, index))
    return LabelledSet(root, tuple(samples), len(names))


@dataclass(frozen=True)
class AttributeSet:
    """Face crops with age, gender (0 male, 1 female) and race labels."""

    paths: tuple[Path, ...]
    age: np.ndarray
    gender: np.ndarray
    race: np.ndarray


def load_attribute_set(labels: str | Path) -> AttributeSet:
    """Read a UTKFace-style ``labels.csv`` (path, age, gender..., race); paths relative to it."""
    labels = Path(labels)
    rows = _read_csv(labels, ("path", "age", "race"))
    gender_col = next((c for c in rows[0] if c.startswith("gender")), None)
    if gender_col is None:
        raise ValueError(f"{labels} has no gender column")
    return AttributeSet(
        tuple(labels.parent / r["path"] for r in rows),
        np.array([float(r["age"]) for r in rows]),
        np.array([int(r[gender_col]) for r in rows]),
        np.array([r["race"] for r in rows]),
    )


def decoded(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    """RGB pixels of each file in turn (one image in memory at a time)."""
    for path in paths:
        yield decode_image(path.read_bytes()).rgb
