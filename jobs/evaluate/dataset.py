"""Labelled evaluation sets: identity manifests with salted sample ids (attribute labels:
``anon_core.labels``)."""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from faceveil.anon_core.labels import read_rows


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


def load_labelled_set(
    images: str | Path, manifest: str | Path, salt: bytes, limit_identities: int | None = None
) -> LabelledSet:
    """Read a ``path,identity`` manifest whose paths are relative to ``images``.

    ``limit_identities`` keeps the first N identities (by name) that have at least two images,
    so every kept identity yields a gallery image and at least one probe.
    """
    root = Path(images)
    by_identity: dict[str, list[str]] = defaultdict(list)
    for row in read_rows(Path(manifest), ("path", "identity")):
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
