"""Issue 12 (surrogate v2) on real faces and real models, no labels given to the method.

- donors share the original's gender and age band: a first pass over labelled utkface_dev
  faces, whose labels only the test reads (the method estimates gender and age itself);
- a black-and-white photo gets a black-and-white face;
- the label-free estimator reads gender and age well enough on utkface_dev adults.

Skipped with a reason when ../shared is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.bench_occluders import (
    KEPT_CHANGE,
    PAD,
    donor_shares,
    frame_changes,
    frame_points,
    glasses_donors,
    glasses_found_over_keys,
    padded,
)
from bench.bench_occluders import KEY as BENCH_KEY
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder, InsightFaceEmbedder, align_112
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate import collect_faces, context_from_table
from faceveil.anon_core.surrogate.synthesis import Synthesizer
from faceveil.anon_core.surrogate.traits import FACIAL_HAIR, TraitBands, TraitEstimator
from tests.factories import shared_path

pytestmark = [pytest.mark.shared, pytest.mark.slow]

KEY = b"test-surrogate-v2-key-0123456789"
PER_GROUP = 36  # utkface_dev adults per (gender, age band) group in the first pass
# MobileFaceNet cosine between the original's context-only crop and the output's, mean over
# the 12 photos of the test below; measured 0.975 with the context kept (v1), 0.903 now.
CONTEXT_SIMILARITY = 0.94


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def utk():
    """Sample id -> (gender 0 male / 1 female, age) for adults in four groups (men and women,
    20-35 and 50-75), PER_GROUP each, the first by file name. A sample id is the photo's path
    under utkface_dev (``_utk_root``): donor draws hash it, so it must not hold where the data
    lies."""
    labels = shared_path("data", "utkface_dev", "labels.csv")
    groups: dict[tuple[int, int], list] = {}
    with open(labels, newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda r: r["path"]):
            age, gender = int(row["age"]), int(row["gender_0male_1female"])
            band = 0 if 20 <= age <= 35 else 1 if 50 <= age <= 75 else None
            if band is not None:
                groups.setdefault((gender, band), []).append((row["path"], gender, age))
    chosen = [r for rows in groups.values() for r in rows[:PER_GROUP]]
    return {p: (g, a) for p, g, a in sorted(chosen)}


def _utk_root() -> Path:
    return shared_path("data", "utkface_dev")


@pytest.fixture(scope="module")
def models():
    return build_detector("centerface", threads=1), Dlib68(), DlibEmbedder()


@pytest.fixture(scope="module")
def utk_context(utk, models):
    """A first pass over the utkface faces with its defaults (no labels anywhere), their edges
    extended (``padded``): the crops cut the head so close that no face of them could otherwise
    serve as a donor (its outline must lie inside the image)."""
    root = _utk_root()
    table = collect_faces([(p, padded(root / p)) for p in utk], *models)
    return table, context_from_table(table)


def _label(utk: dict, face_id: str) -> tuple[int, int]:
    return utk[face_id.rsplit("#", 1)[0]]


def test_donors_share_gender_and_age_band_without_labels(utk, utk_context):
    """Issue 12 finding: donors were chosen without gender (the unseen judge agreed on 43 %).
    Now, by the labels the method never saw, nearly every donor has the original's gender
    and most lie in its age band."""
    table, context = utk_context
    method = Surrogate(KEY, context)
    same_gender, age_gap = [], []
    for face_id, emb, skin in zip(table.ids, table.embeddings, table.skin, strict=True):
        gender, age = _label(utk, face_id)
        _, donors = method.donor_set(emb, skin)
        for d in donors:
            d_gender, d_age = _label(utk, context.bank.ids[d])
            same_gender.append(d_gender == gender)
            age_gap.append(abs(d_age - age))
    assert len(table.ids) >= 0.9 * len(utk)
    assert np.mean(same_gender) >= 0.9, f"donors of the same gender: {np.mean(same_gender):.1%}"
    assert np.median(age_gap) <= 12, f"median donor age gap {np.median(age_gap):.1f} years"


def test_trait_estimator_reads_gender_and_age_of_adults(utk, models):
    """The estimator's own accuracy on the labelled adults (labels from utkface_dev)."""
    detector = models[0]
    estimator = TraitEstimator()
    right, gaps = [], []
    for path, (gender, age) in utk.items():
        image = _rgb(_utk_root() / path)
        faces = detector([image])[0]
        if len(faces) == 0:
            continue
        female, years = estimator(image, faces.boxes[:1])[0]
        right.append((female >= 0.5) == (gender == 1))
        gaps.append(abs(years - age))
    assert len(right) >= 0.9 * len(utk)
    assert np.mean(right) >= 0.9, f"gender accuracy {np.mean(right):.1%}"
    assert np.mean(gaps) <= 11, f"age MAE {np.mean(gaps):.1f}"


def test_bands_keep_donors_on_the_original_side():
    bands = TraitBands()
    donors = np.array([[0.95, 30], [0.05, 30], [0.6, 30], [0.9, 70], [np.nan, 30]], np.float32)
    ok = bands.compatible(np.array([0.9, 28], np.float32), donors)
    assert ok.tolist() == [True, False, False, False, False]
    assert bands.compatible(np.array([np.nan, np.nan]), donors).all()


def test_grey_photo_gets_a_grey_face(utk_context, models):
    """Issue 12 finding: a black-and-white photo got a coloured face with blue eyes."""
    _, context = utk_context
    colour = _rgb(shared_path("data", "fixtures", "obama.jpg"))
    grey = np.repeat(cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    method = Surrogate(KEY, context)
    anonymizer = FaceAnonymizer(AnonConfig(method="surrogate"), models[0], method)
    result = anonymizer(grey)
    assert result.ok and "surrogate" in result.output.methods
    out = result.output.image.astype(np.int16)
    changed = (out != grey).any(axis=2)
    assert changed.sum() > 1000
    spread = out.max(axis=2) - out.min(axis=2)
    assert spread[changed].max() <= 1, "the surrogate put colour into a grey photo"
    colour_out = anonymizer(colour).output.image.astype(np.int16)
    assert (colour_out.max(axis=2) - colour_out.min(axis=2))[changed].mean() > 5


def test_face_detected_twice_gets_one_surrogate_and_no_mask(utk_context, models):
    """Issue 12 finding: when one face was detected twice (a box inside a box), a grey mask
    was drawn through the surrogate. obama3.jpg at twice its size is such a photo: CenterFace
    finds the face once whole and once again inside that box."""
    _, context = utk_context
    photo = _rgb(shared_path("data", "fixtures", "obama3.jpg"))
    image = cv2.resize(photo, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    method = Surrogate(KEY, context)
    boxes = models[0]([image])[0].boxes
    assert len(boxes) == 2, "the detector no longer finds this face twice; pick another photo"
    inner = int(np.argmin((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    outer = 1 - inner
    assert boxes[outer, 0] <= boxes[inner, 0] and boxes[inner, 2] <= boxes[outer, 2] + 1
    result = FaceAnonymizer(AnonConfig(method="surrogate"), models[0], method)(image)
    assert result.ok
    assert result.output.methods == ("surrogate",), "one face, one decision"
    x1, y1, x2, y2 = result.output.regions[0]
    crop = result.output.image[y1:y2, x1:x2]
    grey = (crop == np.array(method.fallback.color)).all(axis=2)
    assert grey.sum() == 0, f"{grey.sum()} mask pixels drawn over the surrogate"


def _context_only(image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """The 112 x 112 ArcFace crop with an ellipse over brows, eyes, nose, mouth and chin grey:
    what a recognizer sees of hair line, forehead edge, ears and head outline."""
    crop = align_112(image, landmarks5)
    yy, xx = np.mgrid[:112, :112]
    crop[((xx - 56) / 33.0) ** 2 + ((yy - 68) / 46.0) ** 2 <= 1] = 128
    return crop


def test_context_around_the_face_no_longer_matches_the_original(utk_context, models):
    """Issue 12 finding (FINDINGS 2026-11-30): with the inner face replaced, the context kept
    inside a recognizer's crop re-identified 9.9 % of people. MobileFaceNet, on that context
    alone at the original's landmarks, now finds the output's context much less like the
    original's than v1's (context kept) was."""
    _, context = utk_context
    mfn = InsightFaceEmbedder(shared_path("models", "mobilefacenet_128d.onnx"), "cpu", 1)
    root = shared_path("data", "lfw_dev", "manifest.csv").parent
    with open(root / "manifest.csv", newline="") as f:
        paths = sorted({r["path"] for r in csv.DictReader(f)})[::70][:12]
    kept = Surrogate(KEY, context)
    kept.synthesizer = Synthesizer(context.bank, 0.5, context=0.0)
    similarity: dict[str, list[float]] = {"default": [], "kept": []}
    for path in paths:
        image = _rgb(root / path)
        faces = models[0]([image])[0]
        if len(faces) != 1:
            continue
        before = mfn.embed_crops([_context_only(image, faces.landmarks5[0])])[0]
        for name, method in (("default", Surrogate(KEY, context)), ("kept", kept)):
            out = FaceAnonymizer(AnonConfig(method="surrogate"), models[0], method)(image)
            assert out.ok and out.output.methods == ("surrogate",)
            after = mfn.embed_crops([_context_only(out.output.image, faces.landmarks5[0])])[0]
            similarity[name].append(float(before @ after))
    default, v1 = np.mean(similarity["default"]), np.mean(similarity["kept"])
    print(f"context cosine to the original: default {default:.3f}, context kept {v1:.3f}")
    assert len(similarity["default"]) >= 8
    assert default <= CONTEXT_SIMILARITY < v1


EYE_BAND = (slice(50, 90), slice(40, 160))  # rows, columns of the originals: both eyes, lenses


def test_glasses_frames_are_kept_and_the_eyes_are_not(utk_context, models):
    """Issue 12 finding: glasses disappeared. On real photos with glasses, the frame pixels
    marked by hand (``tests/data/glasses_frames.csv``, rims) come out as in the original, while
    the eyes behind the lenses are the surrogate's; the same key gives the same bytes. The photo
    is also moved by a pixel or two: the landmarks then move by several, and a piece of rim
    that no ray met first was dropped. A second key (``bench_occluders``'s) draws other donors
    (with one version of the glasses rule for donors, their mean face had a crease along a
    rim, and a piece of it was dropped)."""
    _, context = utk_context
    moves = [(key, move) for key in (KEY, BENCH_KEY) for move in ((0, 0), (1, 0), (0, 1), (-1, 2))]
    for path, marked in frame_points(shared_path("data", "utkface_dev")).items():
        rims = [p for p in marked if p[2] == "rim"]
        for key, (dx, dy) in moves:
            image = padded(path, dx, dy)
            method = Surrogate(key, context)
            result = FaceAnonymizer(AnonConfig(method="surrogate"), models[0], method)(image)
            where = f"{path.name} moved by ({dx}, {dy}), key {key[:4]!r}"
            assert result.ok and result.output.methods == ("surrogate",), where
            changes = frame_changes(image, result.output.image, rims, dx, dy)
            lost = [
                (x, y, round(c))
                for (x, y, _), c in zip(rims, changes, strict=True)
                if c > KEPT_CHANGE
            ]
            assert not lost, f"{where}: frame points (x, y, change) not kept: {lost}"
            rows, cols = (
                slice(r.start + PAD + d, r.stop + PAD + d)
                for r, d in ((EYE_BAND[0], dy), (EYE_BAND[1], dx))
            )
            gap = np.abs(result.output.image[rows, cols].astype(np.int16) - image[rows, cols])
            assert gap.mean() >= 8, f"{where}: eyes kept"
        again = FaceAnonymizer(AnonConfig(method="surrogate"), models[0], Surrogate(key, context))
        assert np.array_equal(again(image).output.image, result.output.image)


def _hair_labels() -> dict[str, int]:
    """Facial hair (1) or clean-shaven (0), labelled by eye (tests/data/face_labels.md)."""
    with open(Path(__file__).parents[1] / "data" / "facial_hair_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["path"]: int(r["facial_hair"]) for r in rows}


def test_facial_hair_trait_agrees_with_hand_labels(utk_context):
    """The first pass's facial-hair score, read at its threshold, against 56 faces labelled
    by eye (23 with a beard or moustache, 33 clean-shaven, women among them): 50 agreed."""
    table, _ = utk_context
    labels = _hair_labels()
    right = [
        (hair >= FACIAL_HAIR) == bool(labels[face_id.rsplit("#", 1)[0]])
        for face_id, hair in zip(table.ids, table.known_traits()[:, 2], strict=True)
        if face_id.rsplit("#", 1)[0] in labels
    ]
    assert len(right) >= 0.9 * len(labels)
    assert np.mean(right) >= 0.85, f"facial hair read right on {np.mean(right):.1%}"


def test_bearded_originals_get_bearded_donors(utk_context):
    """Issue 12 findings: a clean-shaven face sat inside a full beard; women got stubble.
    Among the donors whose facial hair was labelled by eye, bearded originals now get mostly
    bearded donors and clean-shaven ones mostly clean donors (before: 45 % and 44 %)."""
    table, _ = utk_context
    hair = {face: str(bearded) for face, bearded in _hair_labels().items()}
    bearded, clean = donor_shares(table, hair, use_trait=True, key=KEY)
    assert bearded >= 0.6, f"bearded originals: {bearded:.0%} of donors bearded"
    assert clean <= 0.3, f"clean-shaven originals: {clean:.0%} of donors bearded"


def test_bands_match_facial_hair_when_known():
    bands = TraitBands()
    donors = np.array(
        [[0.1, 30, 0.5], [0.1, 30, 0.0], [0.1, 30, np.nan], [0.9, 30, 0.0]], np.float32
    )
    assert bands.compatible(np.array([0.1, 30, 0.4]), donors).tolist() == [
        True, False, False, False
    ]  # fmt: skip
    assert bands.compatible(np.array([0.1, 30, 0.0]), donors).tolist() == [
        False, True, False, False
    ]  # fmt: skip
    assert bands.compatible(np.array([0.1, 30]), donors).tolist() == [True, True, True, False]
    no_hair = bands.compatible(np.array([0.1, 30, 0.4]), donors, use_hair=False)
    assert no_hair.tolist() == [True, True, True, False]


def test_donors_with_glasses_are_avoided(utk_context):
    """Issue 12 part 3 (no ghosting): with two wearers among the k donors, the trimmed mean
    kept faint frames (a face without glasses got ghost glasses). Of the 19 faces labelled by
    eye as wearing glasses (``tests/data/glasses_labels.csv``), 5 are donors: the bank finds 4
    of them and no other donor. No face gets two found wearers among its donors, and fewer
    faces get two labelled ones (11.8 % before, 6.2 % now: the wearer the bank misses is still
    drawn; ``bench_occluders``'s key)."""
    table, context = utk_context
    with open(Path(__file__).parents[1] / "data" / "glasses_labels.csv", newline="") as f:
        worn = {row["path"]: row["glasses"] for row in csv.DictReader(f)}
    assert len(worn) == 19
    before = glasses_donors(context, table, worn, rule=False)
    now = glasses_donors(context, table, worn, rule=True)
    assert before["wearers"] >= 5 and before["two"] >= 0.05  # the ghosting this test is for
    assert now["wearers_found"] >= before["wearers"] - 1
    assert now["found"] - now["wearers_found"] <= 2
    assert before["two_found"] > 0.0 and now["two_found"] == 0.0
    assert now["two"] < before["two"] and now["one"] < before["one"]


def test_frames_found_on_most_faces_with_glasses(utk_context, models):
    """Glasses recall (``bench_occluders``). The frames are lines the donors' mean face lacks,
    so how many are found depends on the donors a key draws: over the bench's four keys,
    frames were found on 42 of the 76 draws of the 19 faces labelled by eye as wearing glasses
    (6722ed7; 9 to 11 per key). Several missed frames had the bridge as high as the brows'
    inner ends, where the brows' zone hid it; a line running across there now counts, and
    donors with glasses are avoided: 48 of 76 (11 to 13). Lines kept as frames on the 125
    faces without glasses: 5 of 500 draws before, 8 now. (One key's 13 of 19 here became 11
    on CI, where the data lay elsewhere and the face ids held that path.)"""
    with open(Path(__file__).parents[1] / "data" / "glasses_labels.csv", newline="") as f:
        worn = {row["path"]: row["glasses"] for row in csv.DictReader(f)}
    table, context = utk_context
    images = {face.rsplit("#", 1)[0]: None for face in table.ids}
    images = {path: padded(_utk_root() / path) for path in images}
    assert len(worn) == 19 and len(images) == 144
    found, _ = glasses_found_over_keys(images, models[0], context, worn)
    hits = {wears: sum(counts) for wears, counts in found.items()}
    assert hits[True] >= 45, f"frames found on {hits[True]} of 76 draws of faces with glasses"
    assert hits[False] <= 11, f"lines kept as frames on {hits[False]} of 500 draws without"
