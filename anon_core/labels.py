"""Labelled face photos from a CSV: attribute labels (UTKFace style) for the attribute probes.

Used by the surrogate's first pass (``run --attributes``) and by evaluation; paths in a labels
file are relative to it and never leave the process.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceveil.anon_core.imageio import decode_image


def read_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of the CSV file ``path``, which must have the ``required`` columns and a row."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} must have columns {list(required)} and at least one row")
    return rows


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
    rows = read_rows(labels, ("path", "age", "race"))
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
