"""Glasses and facial hair in the surrogate (issue 12 part 1), on hand-labelled real faces.

A first pass over 144 utkface_dev adults (36 per group: men and women, 20-35 and 50-75, the
first by file name; the same faces as ``tests/anon_core/test_surrogate_v2.py``), then:

- facial hair: the trait read at its threshold against 56 faces labelled by eye
  (``tests/data/facial_hair_labels.csv``), and the share of labelled donors with facial hair
  that bearded and clean-shaven originals get, with the trait used and with it left out;
- glasses donors: the donors found wearing glasses, labelled wearers among them, and how many
  faces get one or two labelled wearers among their k donors, with found wearers avoided and
  without (two wearers left faint frames on the mean face);
- glasses: on how many of the 19 faces with glasses (``tests/data/glasses_labels.csv``) frames
  are found and kept, and on how many of the other 125 lines are wrongly kept as frames;
- frames when the photo moves: on three photos with frame points marked by hand
  (``tests/data/glasses_frames.csv``), moved by up to ``--moves`` pixels each way (the landmarks
  then move by several), how many marked points come out as in the original;
- cost: CPU time per face of the facial-hair score, and of a surrogate with and without the
  frame search.

The glasses figures are summed over the four ``KEYS``: the frames are lines the donors' mean
face lacks, so they depend on the donors a key draws.

Run from the repository root: ``python -m bench.bench_occluders`` (about 5 minutes of CPU).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from bench.common import missing_shared, shared_root
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate import collect_faces, context_from_table, glasses
from faceveil.anon_core.surrogate.traits import FACIAL_HAIR, facial_hair

KEY = b"bench-occluders-key-0123456789ab"
# The frames are lines the donors' mean face lacks, so how many are found and kept depends on
# the donors a key draws; the glasses figures are summed over these keys.
KEYS = (KEY, bytes(32), bytes([1]) * 32, bytes([2]) * 32)
PER_GROUP = 36
PAD = 60
LABELS = Path(__file__).parents[1] / "tests" / "data"


def first_pass_paths(root: Path) -> list[str]:
    """The 144 adults of the surrogate v2 test, by the labels' age and gender: their paths
    relative to ``root``, which are their sample ids. The donor draws hash the face ids with the
    key, so an id holding where the data lies (``/work/shared/...``) gave other donors, and
    other figures, on each machine."""
    groups: dict[tuple[int, int], list[str]] = {}
    with open(root / "labels.csv", newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda r: r["path"]):
            age, gender = int(row["age"]), int(row["gender_0male_1female"])
            band = 0 if 20 <= age <= 35 else 1 if 50 <= age <= 75 else None
            if band is not None:
                groups.setdefault((gender, band), []).append(row["path"])
    return sorted(p for rows in groups.values() for p in rows[:PER_GROUP])


def padded(path: Path, dx: int = 0, dy: int = 0) -> np.ndarray:
    """The photo with its edges extended by PAD pixels, moved right by ``dx`` and down by ``dy``."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.copyMakeBorder(rgb, PAD + dy, PAD - dy, PAD + dx, PAD - dx, cv2.BORDER_REPLICATE)


def frame_points(root: Path) -> dict[Path, list[tuple[int, int, str]]]:
    """Points on glasses frames marked by hand, per photo: (x, y, ``rim`` or ``brows``)."""
    points: dict[Path, list[tuple[int, int, str]]] = {}
    with open(LABELS / "glasses_frames.csv", newline="") as f:
        for r in csv.DictReader(f):
            points.setdefault(root / r["path"], []).append((int(r["x"]), int(r["y"]), r["where"]))
    return points


# A marked frame point whose 3 x 3 pixels changed by this much or less (0-255) was kept.
KEPT_CHANGE = 6


def frame_changes(
    before: np.ndarray, after: np.ndarray, points: list[tuple[int, int, str]], dx: int, dy: int
) -> list[float]:
    """Mean change (0-255) over the 3 x 3 pixels at each point of a photo ``padded`` by
    (``dx``, ``dy``): 0 where the original's frame was kept."""
    changes = []
    for x, y, _ in points:
        cx, cy = x + PAD + dx, y + PAD + dy
        window = (slice(cy - 1, cy + 2), slice(cx - 1, cx + 2))
        changes.append(float(np.abs(after[window].astype(np.int16) - before[window]).mean()))
    return changes


def frames_when_moved(
    root: Path, detector, context, reach: int, key: bytes = KEY
) -> dict[str, tuple[int, int, int]]:
    """Per kind of point (``rim``, ``brows``): points kept (changed by ``KEPT_CHANGE`` or less),
    points checked, and runs (photo and move) that lost one, over every move up to ``reach``
    px, the surrogate keyed with ``key``."""
    anonymize = FaceAnonymizer(AnonConfig(method="surrogate"), detector, Surrogate(key, context))
    counts = {kind: [0, 0, 0] for kind in ("rim", "brows")}
    moves = [(dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)]
    for path, points in frame_points(root).items():
        for dx, dy in moves:
            image = padded(path, dx, dy)
            changes = frame_changes(image, anonymize(image).output.image, points, dx, dy)
            for kind, tally in counts.items():
                kept = [
                    c <= KEPT_CHANGE
                    for c, (_, _, w) in zip(changes, points, strict=True)
                    if w == kind
                ]
                tally[0] += sum(kept)
                tally[1] += len(kept)
                tally[2] += not all(kept)
    return {kind: (kept, checked, runs) for kind, (kept, checked, runs) in counts.items()}


def labels(name: str, column: str) -> dict[str, str]:
    """A column of a hand-labelled file in ``tests/data``, by the photo's sample id."""
    with open(LABELS / name, newline="") as f:
        return {r["path"]: r[column] for r in csv.DictReader(f)}


def donor_shares(
    table, hair: dict[str, str], use_trait: bool, key: bytes = KEY
) -> tuple[float, float]:
    """Mean share of labelled donors with facial hair, for bearded and clean originals
    (``hair``: face file -> "1" bearded, "0" clean), the surrogate keyed with ``key``."""
    if not use_trait:
        traits = table.known_traits().copy()
        traits[:, 2] = np.nan
        table = replace(table, traits=traits, donors=tuple(_no_hair(d) for d in table.donors))
    context = context_from_table(table)
    method = Surrogate(key, context)
    share: dict[str, list[float]] = {"0": [], "1": []}
    for face_id, emb, skin in zip(table.ids, table.embeddings, table.skin, strict=True):
        own = hair.get(face_id.rsplit("#", 1)[0])
        if own is None:
            continue
        _, donors = method.donor_set(emb, skin)
        known = [hair.get(context.bank.ids[d].rsplit("#", 1)[0]) for d in donors]
        known = [k == "1" for k in known if k is not None]
        if known:
            share[own].append(float(np.mean(known)))
    return float(np.mean(share["1"])), float(np.mean(share["0"]))


def _no_hair(donor):
    traits = np.array(donor.traits, np.float32)
    traits[2] = np.nan
    return replace(donor, traits=traits)


def glasses_donors(context, table, worn: dict[str, str], rule: bool) -> dict[str, float]:
    """The donors found wearing glasses (``DonorBank.glasses``), labelled wearers in the bank
    and how many of them were found, and, with the surrogate avoiding found wearers (``rule``)
    or not, the share of first-pass faces whose k donors hold one labelled wearer or more,
    and two or more."""
    bank = context.bank
    if not rule:
        context = replace(context, bank=replace(bank, glasses=None))
    wears = np.array([face.rsplit("#", 1)[0] in worn for face in bank.ids])
    method = Surrogate(KEY, context)
    sets = [method.donor_set(e, s)[1] for e, s in zip(table.embeddings, table.skin, strict=True)]
    counts = np.array([int(wears[d].sum()) for d in sets])
    return {
        "donors": len(bank),
        "found": int(bank.glasses.sum()),
        "wearers": int(wears.sum()),
        "wearers_found": int((wears & bank.glasses).sum()),
        "one": float(np.mean(counts >= 1)),
        "two": float(np.mean(counts >= 2)),
        "two_found": float(np.mean([bank.glasses[d].sum() >= 2 for d in sets])),
    }


def glasses_found(
    images: dict[str, np.ndarray],
    detector,
    context,
    worn: dict[str, str],
    timed: bool = True,
    key: bytes = KEY,
) -> dict:
    """Faces whose frames were found, with and without glasses; CPU ms per surrogate with
    and without the frame search (``timed``; with it only otherwise). The surrogate is keyed
    with ``key``: the frames are lines the donors' mean face lacks, so the count depends on
    the donors a key draws (11 to 13 of the 19 wearers over six keys)."""
    search = glasses.frames
    found: list[bool] = []

    def recording(*args):
        mask = search(*args)
        found.append(bool(mask.any()))
        return mask

    result = {}
    finders = [("with", recording), ("without", lambda a, *_: np.zeros(a.shape, bool))]
    try:
        for name, finder in finders[: 2 if timed else 1]:
            glasses.frames = finder
            anonymize = FaceAnonymizer(
                AnonConfig(method="surrogate"), detector, Surrogate(key, context)
            )
            hits, start = {True: 0, False: 0}, time.process_time()
            for path, image in images.items():
                found.clear()
                anonymize(image)
                hits[path in worn] += any(found)
            result[name] = (hits, 1000 * (time.process_time() - start) / len(images))
    finally:
        glasses.frames = search
    return result


def glasses_found_over_keys(
    images: dict[str, np.ndarray], detector, context, worn: dict[str, str], timed: bool = False
) -> tuple[dict[bool, list[int]], tuple[float, float] | None]:
    """``glasses_found`` for each of ``KEYS``: per key, the faces whose frames were found, with
    glasses (True) and without (False); and, when ``timed``, the first key's CPU ms per
    surrogate with and without the frame search (None otherwise)."""
    found: dict[bool, list[int]] = {True: [], False: []}
    ms = None
    for key in KEYS:
        result = glasses_found(images, detector, context, worn, timed and key == KEYS[0], key)
        for wears, count in result["with"][0].items():
            found[wears].append(count)
        if "without" in result:
            ms = (result["with"][1], result["without"][1])
    return found, ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--moves", type=int, default=3, help="move the marked photos by up to this many px (0: off)"
    )
    args = p.parse_args(argv)
    root = shared_root() / "data" / "utkface_dev"
    if missing_shared("bench_occluders", root / "labels.csv"):
        return 2
    paths = first_pass_paths(root)
    images = {p: padded(root / p) for p in paths}
    models = (build_detector("centerface", threads=1), Dlib68(), DlibEmbedder())
    table = collect_faces(list(images.items()), *models)
    hair = labels("facial_hair_labels.csv", "facial_hair")
    worn = labels("glasses_labels.csv", "glasses")

    ids = [i.rsplit("#", 1)[0] for i in table.ids]
    scores = dict(zip(ids, table.known_traits()[:, 2], strict=True))
    read = [(scores[p] >= FACIAL_HAIR) == (v == "1") for p, v in hair.items() if p in scores]
    print(f"first pass: {len(table)} faces of {len(paths)} images")
    print(f"facial hair read right: {sum(read)} of {len(read)} labelled ({np.mean(read):.1%})")
    for use in (True, False):
        bearded, clean = donor_shares(table, hair, use)
        print(
            f"donors with facial hair, trait {'used' if use else 'left out'}: bearded originals"
            f" {bearded:.0%}, clean-shaven originals {clean:.0%}"
        )
    faces = models[1](list(images.values()), models[0](list(images.values())))
    start, timed = time.process_time(), 0
    for image, found in zip(images.values(), faces, strict=True):
        for points in found.landmarks68:
            facial_hair(image, points)
            timed += 1
    print(f"facial-hair score: {1000 * (time.process_time() - start) / timed:.2f} ms CPU per face")

    context = context_from_table(table)
    for rule in (False, True):
        d = glasses_donors(context, table, worn, rule)
        if not rule:
            print(
                f"donor bank: {d['donors']} donors, {d['found']} found wearing glasses;"
                f" {d['wearers']} labelled wearers, {d['wearers_found']} of them found"
            )
        print(
            f"labelled wearers among a face's donors, found wearers"
            f" {'avoided' if rule else 'not avoided'}: one or more for {d['one']:.1%} of"
            f" faces, two or more for {d['two']:.1%}; two or more found wearers for"
            f" {d['two_found']:.1%}"
        )
    found, (ms, without) = glasses_found_over_keys(images, models[0], context, worn, timed=True)
    print(
        f"glasses, over {len(KEYS)} keys: frames kept on {sum(found[True])} of"
        f" {len(KEYS) * len(worn)} draws of faces with glasses (per key {found[True]}), lines"
        f" kept as frames on {sum(found[False])} of {len(KEYS) * (len(images) - len(worn))}"
        f" draws without (per key {found[False]})"
    )
    print(f"surrogate CPU ms per image: {ms:.1f} with the frame search, {without:.1f} without")
    if args.moves:
        side = 2 * args.moves + 1
        tallies = [frames_when_moved(root, models[0], context, args.moves, k) for k in KEYS]
        for kind in ("rim", "brows"):
            kept, checked, lost = (sum(t[kind][i] for t in tallies) for i in range(3))
            print(
                f"marked frame points ({kind}) kept over {side} x {side} moves of up to"
                f" {args.moves} px and {len(KEYS)} keys: {kept} of {checked} (per key"
                f" {[t[kind][0] for t in tallies]}); runs that lost one: {lost}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
