"""The surrogate method on the bundled public-domain photos, with real detector and dlib models.

The donor bank here is the bundled faces plus jittered copies of them posing as other people
(a real bank needs many identities; ``test_surrogate_lfw`` builds one from LFW). That is enough
to check the mechanics: determinism, keys, regions, occluders, fallback, leaks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods import create
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.pseudonym import pseudonym
from faceveil.anon_core.surrogate import (
    DonorBank,
    DonorFace,
    FaceTable,
    SurrogateContext,
    collect_faces,
    context_from_table,
)
from faceveil.anon_core.surrogate.attributes import BINARY, LinearAttribute
from faceveil.anon_core.surrogate.donors import CROP
from tests.factories import rgb

NAMES = ("astronaut.png", "obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "two_people.jpg")
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture(scope="module")
def models():
    return build_detector("centerface", threads=1), Dlib68(), DlibEmbedder()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: rgb(name) for name in NAMES}


def _jittered(donor: DonorFace, seed: int) -> DonorFace:
    """A copy of ``donor`` moved, tinted and given a random embedding: another 'person'."""
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-5, 5), rng.uniform(0.96, 1.04)
    matrix = cv2.getRotationMatrix2D((CROP / 2, CROP * 0.45), angle, scale)
    matrix[:, 2] += rng.uniform(-2, 2, 2)
    crop = cv2.warpAffine(donor.crop, matrix, (CROP, CROP), borderMode=cv2.BORDER_REPLICATE)
    crop = np.clip(crop * rng.uniform(0.9, 1.1, 3), 0, 255).astype(np.uint8)
    points = donor.points @ matrix[:, :2].T + matrix[:, 2]
    embedding = rng.standard_normal(len(donor.embedding)).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    face_id = f"jitter{seed:03d}#0"
    return DonorFace(face_id, crop, points.astype(np.float32), embedding, donor.skin)


def _with_jittered_donors(table: FaceTable, copies: int) -> FaceTable:
    extra = [_jittered(d, 10 * n + j) for n, d in enumerate(table.donors) for j in range(copies)]
    return FaceTable(
        ids=table.ids + tuple(d.face_id for d in extra),
        embeddings=np.concatenate([table.embeddings, [d.embedding for d in extra]]),
        skin=np.concatenate([table.skin, [d.skin for d in extra]]),
        donors=table.donors + tuple(extra),
        embedder=table.embedder,
    )


@pytest.fixture(scope="module")
def table(models, photos) -> FaceTable:
    found = collect_faces(list(photos.items()), *models)
    assert len(found.donors) >= 4
    return _with_jittered_donors(found, copies=5)


@pytest.fixture(scope="module")
def context(table) -> SurrogateContext:
    return context_from_table(table)


@pytest.fixture(scope="module")
def anonymizer(models, context) -> FaceAnonymizer:
    detector, _, _ = models
    return FaceAnonymizer(AnonConfig(threads=1), detector, Surrogate(KEY_A, context))


def _faces(anonymizer: FaceAnonymizer, image: np.ndarray) -> Faces:
    return anonymizer.prepare_faces([image], anonymizer.detector([image]))[0]


def test_registered_and_flags(context):
    method = create("surrogate", key=KEY_A, context=context)
    assert isinstance(method, Surrogate)
    assert method.needs_landmarks68 and method.needs_embeddings


def test_pipeline_runs_landmarks_and_embeddings(anonymizer, photos):
    result = anonymizer(photos["two_people.jpg"])
    assert result.status == "anonymized"
    assert result.faces.landmarks68 is not None and result.faces.embeddings is not None
    assert result.faces.extras["embedder"] == "dlib_resnet"
    assert result.output.methods == ("surrogate", "surrogate")
    meta = result.metadata()
    names = [f["pseudonym"] for f in meta["faces"]]
    assert all(isinstance(n, str) and len(n) == 16 for n in names) and names[0] != names[1]
    assert "embedding" not in json.dumps(meta)


def test_same_key_gives_identical_bytes(models, context, photos):
    detector, _, _ = models
    runs = [
        FaceAnonymizer(AnonConfig(threads=1), detector, Surrogate(KEY_A, context)) for _ in range(2)
    ]
    image = photos["obama2.jpg"]
    first, again, fresh = runs[0](image), runs[0](image), runs[1](image)
    assert first.encoded == again.encoded == fresh.encoded
    assert first.output.pseudonyms == fresh.output.pseudonyms


def test_two_keys_give_other_surrogates(anonymizer, context, photos):
    image = photos["obama2.jpg"]
    faces = _faces(anonymizer, image)
    method_a, method_b = Surrogate(KEY_A, context), Surrogate(KEY_B, context)
    out_a, out_b = method_a(image, faces), method_b(image, faces)
    assert out_a.pseudonyms[0] != out_b.pseudonyms[0]
    assert not np.array_equal(out_a.image, out_b.image)
    donors_a = method_a.donor_set(faces.embeddings[0], np.full(3, np.nan))[1]
    donors_b = method_b.donor_set(faces.embeddings[0], np.full(3, np.nan))[1]
    assert set(donors_a.tolist()) != set(donors_b.tolist())


def test_pseudonym_is_hmac_of_the_cluster(anonymizer, context, photos):
    method = anonymizer.method
    faces = _faces(anonymizer, photos["obama2.jpg"])
    cluster = int(context.clusters.assign(faces.embeddings)[0])
    assert cluster >= 0
    expected = pseudonym(KEY_A, context.clusters.cluster_ids[cluster])
    assert method(photos["obama2.jpg"], faces).pseudonyms == (expected,)


def test_obama_photos_share_one_surrogate_identity(anonymizer, photos):
    method = anonymizer.method
    sets = []
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        faces = _faces(anonymizer, photos[name])
        name_, donors = method.donor_set(faces.embeddings[0], np.full(3, np.nan))
        sets.append((name_, donors.tolist()))
    assert sets[0] == sets[1] == sets[2]


@pytest.mark.parametrize("name", ["two_people.jpg", "astronaut.png", "obama3.jpg"])
def test_changes_stay_inside_reported_regions(anonymizer, photos, name):
    image = photos[name]
    out = anonymizer.method(image, _faces(anonymizer, image))
    inside = np.zeros(image.shape[:2], bool)
    for x1, y1, x2, y2 in out.regions:
        inside[y1:y2, x1:x2] = True
    changed = (out.image != image).any(axis=2)
    assert changed.any()
    assert not (changed & ~inside).any()


def _patch(image: np.ndarray, points: np.ndarray, part: str) -> tuple[np.ndarray, tuple]:
    ids = {"eyes": (36, 45, 37, 41), "mouth": (48, 54, 51, 57)}[part]
    x1, x2 = int(points[ids[0], 0]) - 6, int(points[ids[1], 0]) + 6
    y1, y2 = int(points[ids[2], 1]) - 8, int(points[ids[3], 1]) + 8
    patched = image.copy()
    patched[y1:y2, x1:x2] = (20, 200, 40) if part == "eyes" else (12, 12, 12)
    return patched, (x1, y1, x2, y2)


@pytest.mark.parametrize("part", ["eyes", "mouth"])
@pytest.mark.parametrize("name", ["obama2.jpg", "biden.jpg"])
def test_solid_occluder_is_kept_exactly(anonymizer, photos, name, part):
    image = photos[name]
    patched, (x1, y1, x2, y2) = _patch(image, _faces(anonymizer, image).landmarks68[0], part)
    result = anonymizer(patched)
    assert result.output.methods == ("surrogate",)
    out = result.output.image
    np.testing.assert_array_equal(out[y1:y2, x1:x2], patched[y1:y2, x1:x2])
    assert (out != patched).any(axis=2).sum() > 1000  # the rest of the face did change


def test_tiny_face_falls_back_to_mask(anonymizer, photos):
    small = cv2.resize(photos["obama2.jpg"], None, fx=0.1, fy=0.1, interpolation=cv2.INTER_AREA)
    canvas = np.full((160, 200, 3), 120, np.uint8)
    canvas[: small.shape[0], 40 : 40 + small.shape[1]] = small
    result = anonymizer(canvas)
    assert len(result.faces) == 1 and not result.faces.extras["reliable"][0]
    assert result.output.methods == ("mask",)
    assert result.metadata()["faces"][0]["method"] == "mask"
    assert result.output.pseudonyms == (None,)
    x1, y1, x2, y2 = result.output.regions[0]
    assert (result.output.image[y1:y2, x1:x2] == (96, 96, 96)).all()


def test_unreliable_face_among_good_ones(anonymizer, photos):
    image = photos["two_people.jpg"]
    faces = _faces(anonymizer, image)
    flags = np.array([True, False])
    faces = Faces(faces.boxes, faces.landmarks5, faces.landmarks68, faces.embeddings,
                  {**faces.extras, "reliable": flags})  # fmt: skip
    out = anonymizer.method(image, faces)
    assert out.methods == ("surrogate", "mask") and out.pseudonyms[1] is None


def test_needs_landmarks_and_embeddings(context, photos):
    faces = Faces(np.array([[10, 10, 60, 70, 0.9]], np.float32), np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="landmarks68"):
        Surrogate(KEY_A, context)(photos["obama2.jpg"], faces)


def test_no_face_returns_a_copy(context, photos):
    image = photos["obama2.jpg"]
    out = Surrogate(KEY_A, context)(image, Faces.empty())
    assert out.methods == () and np.array_equal(out.image, image) and out.image is not image


def test_rejects_bad_settings_without_showing_the_key(context):
    with pytest.raises(ValueError, match="at least 4"):
        Surrogate(KEY_A, context, donors=3)
    with pytest.raises(ValueError, match="privacy"):
        Surrogate(KEY_A, context, privacy=1.5)
    with pytest.raises(ValueError) as short:
        Surrogate(b"0123456789", context)
    assert "0123456789" not in str(short.value)
    with pytest.raises(TypeError):
        Surrogate("not bytes", context)
    with pytest.raises(ValueError, match="identities"):
        Surrogate(KEY_A, context, donors=40)
    with pytest.raises(ValueError, match="context must be >= 0 and shading > 0"):
        Surrogate(KEY_A, context, surround=-0.1)
    with pytest.raises(ValueError, match="context must be >= 0 and shading > 0"):
        Surrogate(KEY_A, context, shading=0.0)
    shown = repr(Surrogate(KEY_A, context))
    assert KEY_A.hex() not in shown and repr(KEY_A) not in shown and "hidden" in shown


def test_bank_refuses_too_few_people(table):
    donors = table.donors[:10]
    with pytest.raises(ValueError, match="donor bank too small"):
        DonorBank.from_faces(donors, np.arange(len(donors)))
    with pytest.raises(ValueError, match="donor bank too small"):
        DonorBank.from_faces(table.donors, np.zeros(len(table.donors), int))


def test_attribute_probe_restricts_donors_to_the_original_side(anonymizer, context, photos):
    """A binary probe splitting the bank in two: donors come from the original's side only."""
    direction = np.random.default_rng(5).standard_normal(context.bank.embeddings.shape[1])
    direction *= 30 / np.linalg.norm(direction)
    for name in ("obama2.jpg", "biden.jpg", "astronaut.png"):
        emb = _faces(anonymizer, photos[name]).embeddings[0]
        cluster = int(context.clusters.assign(emb[None])[0])
        centre = context.clusters.centroids[cluster] if cluster >= 0 else emb
        # The original sits at p = 0.73; about two thirds of the donors share its side.
        probe = LinearAttribute("side", BINARY, direction, 1.0 - float(direction @ centre), "e")
        donor_side = probe(context.bank.embeddings) >= 0.5
        assert 0.3 < donor_side.mean() < 0.9
        method = Surrogate(KEY_A, replace(context, attributes=(probe,)))
        _, donors = method.donor_set(emb, np.full(3, np.nan))
        assert donor_side[donors].all()


def test_mean_face_needs_four_donors(context):
    with pytest.raises(ValueError, match="at least 4"):
        context.bank.mean_face(np.arange(3))


def test_context_pickles_and_gives_the_same_output(anonymizer, context, photos):
    image = photos["biden.jpg"]
    faces = _faces(anonymizer, image)
    copy = pickle.loads(pickle.dumps(context))
    a = Surrogate(KEY_A, context)(image, faces).image
    b = Surrogate(KEY_A, copy)(image, faces).image
    assert np.array_equal(a, b)
    assert "pixels hidden" in repr(context) and "[" not in repr(context.bank)


def test_shards_merge_like_one_pass(models, photos, table):
    names = list(photos)
    parts = [collect_faces([(n, photos[n]) for n in names[i::2]], *models) for i in (0, 1)]
    whole = collect_faces(list(photos.items()), *models)
    merged = FaceTable.merge(parts)
    assert sorted(merged.ids) == sorted(whole.ids)
    assert [d.face_id for d in merged.donors] == [d.face_id for d in whole.donors]
    small = FaceTable.merge(parts, max_donors=3)
    assert len(small.donors) == 3


def test_geometry_follows_privacy(anonymizer, context, photos, models):
    """Landmarks found on the surrogate stay near the original's (pose and expression kept);
    more privacy moves the face's own geometry further toward the donors'."""
    _, landmarks, _ = models
    image = photos["obama2.jpg"]
    faces = _faces(anonymizer, image)
    truth = faces.landmarks68[0]
    iod = np.linalg.norm(truth[36] - truth[45])
    errors = {}
    for privacy in (0.0, 1.0):
        out = Surrogate(KEY_A, context, privacy=privacy)(image, faces).image
        found = landmarks([out], [Faces(faces.boxes, faces.landmarks5)])[0].landmarks68[0]
        errors[privacy] = np.linalg.norm(found - truth, axis=1).mean() / iod
    assert errors[0.0] < 0.08
    assert errors[1.0] < 0.15
    assert errors[1.0] > errors[0.0]


def _files_under(root: Path, since: float) -> list[Path]:
    found = []
    for folder, _, files in os.walk(root, onerror=lambda e: None):
        for name in files:
            path = Path(folder) / name
            try:
                info = path.stat()
                if path.is_file() and info.st_mtime >= since and info.st_size < 1 << 26:
                    found.append(path)
            except OSError:
                continue
    return found


def _fingerprints(pixels: np.ndarray) -> list[bytes]:
    """A 4 KiB run from the middle of ``pixels`` (face, not fill) and its whole sha256."""
    raw = np.ascontiguousarray(pixels).tobytes()
    middle = len(raw) // 2
    return [raw[middle : middle + 4096], hashlib.sha256(raw).hexdigest().encode()]


def test_donor_pixels_never_reach_a_file_or_log(models, table, context, photos, tmp_path, caplog):
    """Raw copies only: no donor crop or bank texture (a run of its bytes or its sha256), and
    not the key, in the outputs, the log or a temp file. Donor pixels drawn into a face are
    warped, so a byte search cannot see them there: ``test_surrogate_lfw`` scans written
    surrogate faces for donors after undoing the warp."""
    caplog.set_level(logging.DEBUG)
    start = time.time() - 1
    detector, _, _ = models
    runner = FaceAnonymizer(AnonConfig(threads=1), detector, Surrogate(KEY_A, context))
    for n, name in enumerate(("obama2.jpg", "two_people.jpg", "astronaut.png")):
        result = runner(photos[name])
        (tmp_path / f"{n}.{result.ext}").write_bytes(result.encoded)
        (tmp_path / f"{n}.json").write_text(json.dumps(result.metadata()))
        buf = io.BytesIO()
        Image.fromarray(result.output.image).save(buf, format="PNG")
        (tmp_path / f"{n}.png").write_bytes(buf.getvalue())
    (tmp_path / "log.txt").write_text(caplog.text)
    secrets = [KEY_A, KEY_A.hex().encode()]
    for pixels in [*context.bank.textures, *(d.crop for d in table.donors)]:
        secrets += _fingerprints(pixels)
    files = _files_under(tmp_path, start) + _files_under(Path(tempfile.gettempdir()), start)
    assert any(f.parent == tmp_path for f in files)
    digests = {s.decode() for s in secrets if len(s) == 64}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        assert hashlib.sha256(data).hexdigest() not in digests, path
        for secret in secrets:
            assert secret not in data, path


def test_recognizer_config_and_embedder_mismatch_quarantines(models, context, photos):
    from tests.factories import shared_path

    model = shared_path("models", "mobilefacenet_128d.onnx")
    detector, _, _ = models
    runner = FaceAnonymizer(
        AnonConfig(threads=1, recognizer=str(model)), detector, Surrogate(KEY_A, context)
    )
    assert runner.embedder.name == "insightface"
    result = runner(photos["obama2.jpg"])
    assert result.status == "quarantined" and result.stage == "anonymize"
    assert KEY_A.hex() not in result.reason


def test_a_stronger_surround_low_pass_changes_only_the_surroundings(anonymizer, context, photos):
    """``surround`` (the low-pass of hairline, ears and outline) changes pixels around the face,
    not the face the default renders; 0 keeps the surroundings as they are."""
    image = photos["obama2.jpg"]
    faces = _faces(anonymizer, image)
    default = anonymizer.method(image, faces).image.astype(np.int16)
    stronger = Surrogate(KEY_A, context, surround=1.0)(image, faces).image.astype(np.int16)
    kept = Surrogate(KEY_A, context, surround=0.0)(image, faces).image.astype(np.int16)
    moved = np.abs(stronger - default).max(axis=2) > 8
    assert moved.sum() > 2000
    inner = np.zeros(image.shape[:2], np.uint8)  # eyes, nose and mouth (brow ends reach the edge)
    cv2.fillConvexPoly(inner, cv2.convexHull(faces.landmarks68[0][27:].astype(np.int32)), 1)
    assert inner.sum() > 5000 and not moved[inner.astype(bool)].any()
    assert (np.abs(kept - default).max(axis=2) > 8).sum() > 1000
