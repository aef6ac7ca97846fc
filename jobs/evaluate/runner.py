"""``run_eval``: anonymize a labelled set with each method and measure privacy, utility, recall
and throughput; one pass over the originals, then one pass per method."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from faceveil.anon_core import demo_data
from faceveil.anon_core.attackers import OnnxAttacker, warn_if_same_model
from faceveil.anon_core.embeddings import align_112
from faceveil.anon_core.facememo import FaceMemo
from faceveil.anon_core.faces import Faces, matched
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.labels import decoded
from faceveil.anon_core.landmarks import landmark_error, points_in
from faceveil.anon_core.pipeline import AnonConfig, AnonResult, FaceAnonymizer
from faceveil.jobs.evaluate import figures, pixels
from faceveil.jobs.evaluate.attacks import AttackPlan, split_identities
from faceveil.jobs.evaluate.config import EvalConfig, MethodSpec
from faceveil.jobs.evaluate.dataset import LabelledSet, load_labelled_set
from faceveil.jobs.evaluate.measurements import EvalSession, MethodRun, Originals
from faceveil.jobs.evaluate.methods import (
    MethodContext,
    MethodUnavailable,
    WithFaceDetails,
    build_method,
)
from faceveil.jobs.evaluate.metrics import central_face, ssim_outside
from faceveil.jobs.evaluate.models import EvalModels, load_models
from faceveil.jobs.evaluate.recall import recall_by_group

log = logging.getLogger(__name__)

THUMB_SIDE = 160


@dataclass
class EvalResult:
    """The report dictionary and the example thumbnails (RGB) it refers to by file name."""

    report: dict
    thumbnails: dict[str, np.ndarray]


def thumbnail(rgb: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """``rgb`` scaled so its longer side is ``side`` pixels."""
    scale = side / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _gallery(ids: np.ndarray, has_face: np.ndarray) -> np.ndarray:
    """The first image with a detected face of each identity is its gallery image."""
    gallery = np.zeros(len(ids), bool)
    seen: set[int] = set()
    for i, (identity, ok) in enumerate(zip(ids, has_face, strict=True)):
        if ok and identity not in seen:
            gallery[i] = True
            seen.add(int(identity))
    return gallery


def _embedders(models: EvalModels, originals: Originals, i: int) -> list:
    """Attackers always; the attribute featurizer only on the samples picked for attributes."""
    pick = originals.attribute_rows[i]
    return [e for e in models.embedders if pick or any(e is a for a in models.attackers)]


def _attribute_rows(data: LabelledSet, count: int) -> np.ndarray:
    """The first ``count`` samples in salted-id order (an unbiased, name-blind subset)."""
    rows = np.zeros(len(data), bool)
    order = sorted(range(len(data)), key=lambda i: data.samples[i].sample_id)
    rows[order[:count]] = True
    return rows


def _align_and_embed(
    image: np.ndarray, faces: Faces, k: int | None, embedders: list, embed_with: list
) -> tuple[dict, dict] | None:
    """(guides of ``embedders``, embeddings by those in ``embed_with``) for face k; None when
    there is no such face or it cannot be aligned (degenerate landmarks): the sample is then
    left out of every figure."""
    if k is None:
        return None
    try:
        guides = {e.name: e.guide(image, faces.boxes[k], faces.landmarks5[k]) for e in embedders}
        vectors = {e.name: e.embed([image], [guides[e.name]])[0] for e in embed_with}
    except (ValueError, RuntimeError) as exc:
        log.warning("a labelled face cannot be aligned (%s); sample left out", type(exc).__name__)
        return None
    return guides, vectors


def _crop_original(image: np.ndarray, faces: Faces, k: int, originals: Originals, i: int) -> bool:
    """The pixel inversion's crop of face k (when that attack is planned); False when its
    landmarks are degenerate (the sample is then left out, as for any alignment failure)."""
    if originals.crops is None:
        return True
    side = originals.crops.shape[1]
    try:
        originals.crop_matrices[i] = pixels.crop_matrix(faces.landmarks5[k], side)
    except ValueError:
        log.warning("a labelled face cannot be cropped (degenerate landmarks); sample left out")
        return False
    originals.crops[i] = pixels.face_crop(image, originals.crop_matrices[i], side)
    return True


def _original_sample(image: np.ndarray, models: EvalModels, originals: Originals, i: int) -> None:
    faces = models.detector([image])[0]
    k = central_face(faces, image.shape)
    embed_with = _embedders(models, originals, i)
    aligned = _align_and_embed(image, faces, k, models.embedders, embed_with)
    k = k if aligned and _crop_original(image, faces, k, originals, i) else None
    guides, vectors = (aligned or ({}, {})) if k is not None else ({}, {})
    for name, crops in originals.faces112.items():
        if k is not None:
            crops[i] = align_112(image, guides[name])
    originals.faces.append(faces)
    originals.central.append(k)
    for emb in models.embedders:
        originals.guides[emb.name].append(guides.get(emb.name))
        if emb.name in vectors:
            originals.embeddings[emb.name][i] = vectors[emb.name]
    points = None
    if k is not None and models.landmarks is not None:
        points = models.landmarks([image], [faces.select(np.array([k]))])[0].landmarks68[0]
        originals.redetected[i] = matched(models.second([image])[0], faces.boxes[k])
    originals.points68.append(points)


def original_pass(data: LabelledSet, models: EvalModels, config: EvalConfig) -> Originals:
    """Detect, embed and fit landmarks on every original once."""
    n = len(data)
    originals = Originals(
        faces=[],
        central=[],
        guides={e.name: [] for e in models.embedders},
        embeddings={e.name: np.full((n, _dim(e)), np.nan, np.float32) for e in models.embedders},
        points68=[],
        redetected=np.zeros(n, bool),
        ids=np.array([s.identity for s in data.samples]),
        gallery=np.zeros(n, bool),
        attribute_rows=_attribute_rows(data, config.attribute_faces),
    )
    if "inversion-pixels" in config.attacks:
        side = config.budget.pixels.side
        originals.crops = np.zeros((n, side, side, 3), np.uint8)
        originals.crop_matrices = np.zeros((n, 2, 3), np.float64)
    if "parrot-finetune" in config.attacks:
        for a in models.attackers:
            if isinstance(a, OnnxAttacker):
                originals.faces112[a.name] = np.zeros((n, 112, 112, 3), np.uint8)
                originals.model_paths[a.name] = str(a.embedder.model_path)
    paths = [s.path for s in data.samples]
    images = decoded(paths)
    for i, image in enumerate(tqdm(images, total=n, desc="originals", disable=not config.progress)):
        _original_sample(image, models, originals, i)
    originals.gallery = _gallery(originals.ids, originals.has_face)
    return originals


def _dim(embedder: object) -> int:
    inner = getattr(embedder, "embedder", None)
    return int(inner.dim) if inner is not None else 128


def _new_run(n: int, originals: Originals) -> MethodRun:
    crops = None if originals.crops is None else np.zeros_like(originals.crops)
    return MethodRun(
        crops=crops,
        embeddings={k: np.full_like(v, np.nan) for k, v in originals.embeddings.items()},
        valid=np.zeros(n, bool),
        redetected=np.zeros(n, bool),
        landmark_error=np.full(n, np.nan),
        ssim_method=np.full(n, np.nan),
        ssim_encoded=np.full(n, np.nan),
        central_method=np.full(n, "", object),
        faces112={k: np.zeros_like(v) for k, v in originals.faces112.items()},
    )


def _measure(
    i: int, result: AnonResult, run: MethodRun, originals: Originals, models: EvalModels
) -> np.ndarray | None:
    """Record sample i's figures; returns the decoded anonymized image when it was released."""
    run.statuses[result.status] += 1
    if not result.ok:
        return None
    original = result.original.rgb
    anonymized = decode_image(result.encoded).rgb
    run.ssim_method[i] = ssim_outside(original, result.output.image, result.output.regions)
    run.ssim_encoded[i] = ssim_outside(original, anonymized, result.output.regions)
    k = originals.central[i]
    if k is None:
        return anonymized
    run.valid[i] = True
    run.applied.update(result.output.methods)
    if k < len(result.output.methods):  # the pipeline saw the same faces in the same order
        run.central_method[i] = result.output.methods[k]
    for emb in _embedders(models, originals, i):
        run.embeddings[emb.name][i] = emb.embed([anonymized], [originals.guides[emb.name][i]])[0]
    for name, crops in run.faces112.items():
        crops[i] = align_112(anonymized, originals.guides[name][i])
    if run.crops is not None:
        run.crops[i] = pixels.face_crop(anonymized, originals.crop_matrices[i], run.crops.shape[1])
        run.encoded[i] = result.encoded
    if models.landmarks is not None:
        box = originals.faces[i].boxes[k]
        found = models.second([anonymized])[0]
        points = points_in(models.landmarks, anonymized, box, found)
        run.landmark_error[i] = landmark_error(originals.points68[i], points)
        run.redetected[i] = matched(found, box)
    return anonymized


def _anonymize_all(pipeline: FaceAnonymizer, session: EvalSession, label: str) -> MethodRun:
    data, config, examples = session.data, session.config, session.examples
    run = _new_run(len(data), session.originals)
    bar = tqdm(total=len(data), desc=label, disable=not config.progress)
    for start in range(0, len(data), config.batch_size):
        chunk = range(start, min(start + config.batch_size, len(data)))
        blobs = [data.read(i) for i in chunk]
        wall, cpu = time.perf_counter(), time.process_time()
        results = pipeline.batch(blobs)
        run.wall_s += time.perf_counter() - wall
        run.cpu_s += time.process_time() - cpu
        for i, result in zip(chunk, results, strict=True):
            anonymized = _measure(i, result, run, session.originals, session.models)
            if i in examples and anonymized is not None:
                examples[i][label] = thumbnail(anonymized)
        bar.update(len(chunk))
    bar.close()
    return run


def _context(data: LabelledSet, models: EvalModels, config: EvalConfig) -> MethodContext:
    def iterate() -> Iterator[tuple[str, np.ndarray]]:
        images = decoded([s.path for s in data.samples])
        yield from zip((s.sample_id for s in data.samples), images, strict=True)

    key = os.urandom(32)
    return MethodContext(
        iterate, key, models.detector, config.model_root, config.device, config.threads
    )


def evaluate_method(spec: MethodSpec, session: EvalSession) -> dict:
    """One row of the report: anonymize the whole set with ``spec`` and compute its figures
    (every attack of the session's plan, with every recognizer)."""
    config, models = session.config, session.models
    try:
        anonymizer = build_method(spec, session.context)
    except (MethodUnavailable, ValueError, TypeError) as exc:
        log.error("method %s cannot be evaluated: %s", spec.label, exc)
        reason = str(exc) if isinstance(exc, MethodUnavailable) else f"failed to build: {exc}"
        return {"label": spec.label, "name": spec.name, "available": False, "reason": reason}
    same = [a.name for a in models.attackers if warn_if_same_model(a, anonymizer, spec.label)]
    anon_config = AnonConfig(
        method=spec.name,
        method_options=dict(spec.options),
        detector=config.detector,
        model_root=config.model_root,
        device=config.device,
        threads=config.threads,
    )
    pipeline = FaceAnonymizer(anon_config, detector=models.detector, method=anonymizer)
    if isinstance(anonymizer, WithFaceDetails):  # its own models (the first pass's memory)
        pipeline.landmarks, pipeline.embedder = anonymizer.landmarks, anonymizer.embedder
    run = _anonymize_all(pipeline, session, spec.label)
    memo = getattr(pipeline.embedder, "memo", None)
    if isinstance(memo, FaceMemo):
        log.info("%s: the first pass's landmarks and embeddings reused for %d images",
                 spec.label, memo.counts.reused["embed"])  # fmt: skip
    row = figures.method_row(spec, run, session)
    row["attackers_used_by_anonymizer"] = same
    return row


def start_session(config: EvalConfig) -> EvalSession:
    """Load the set and the models, and make the one pass over the originals."""
    salt = config.sample_salt or os.urandom(16)
    data = load_labelled_set(config.images, config.identities, salt, config.limit_identities)
    log.info("evaluating %d images of %d identities", len(data), data.n_identities)
    models = load_models(config)
    originals = original_pass(data, models, config)
    split = split_identities(originals.ids, originals.has_face, config.budget)
    plan = AttackPlan(config.attacks, split, config.budget, config.far)
    context = _context(data, models, config)
    return EvalSession(data, originals, models, config, context, plan)


def group_recall(models: EvalModels, config: EvalConfig) -> list[dict]:
    """Faces found by each detector on the bundled group photos with known face counts."""
    rows = []
    for name, expected in config.group_photos:
        image = decode_image(demo_data.path(name).read_bytes()).rgb
        row = {"image": name, "expected": expected}
        detectors = {"detector": models.detector, "second_detector": models.second}
        for role, det in detectors.items():
            if det is not None:
                found = len(det([image])[0])
                row[role] = {"found": found, "recall": min(found, expected) / expected}
        rows.append(row)
    return rows


def run_eval(config: EvalConfig) -> EvalResult:
    """Run the whole evaluation in-process and return the report (not yet written)."""
    started = time.time()
    session = start_session(config)
    picks = figures.pick_examples(session.data, session.originals, config.examples)
    paths = [session.data.samples[i].path for i in picks]
    for i, image in zip(picks, decoded(paths), strict=True):
        session.examples[i] = {"original": thumbnail(image)}
    rows = [evaluate_method(spec, session) for spec in config.methods]
    recall = {"group_photos": group_recall(session.models, config)}
    if config.recall.labels:
        recall.update(recall_by_group(config.recall, session.models.detector))
    report = figures.assemble(session, rows, recall)
    report["elapsed_s"] = round(time.time() - started, 1)
    thumbs, report["examples"] = figures.example_files(session.data, session.examples,
                                                       config.methods)  # fmt: skip
    return EvalResult(report, thumbs)
