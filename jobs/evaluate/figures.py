"""Turning per-sample measurements into the report's figures and its JSON structure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from faceveil.jobs.evaluate import finetune, pixels
from faceveil.jobs.evaluate.attacks import (
    SPLIT_FREE,
    Features,
    Trial,
    pool_splits,
    run_attacks,
    score,
    split_identities,
    worst_case,
)
from faceveil.jobs.evaluate.attributes import agreement
from faceveil.jobs.evaluate.config import MethodSpec
from faceveil.jobs.evaluate.dataset import LabelledSet
from faceveil.jobs.evaluate.measurements import EvalSession, MethodRun, Originals
from faceveil.jobs.evaluate.models import EvalModels, versions

DEFINITIONS = {
    "rank1": "share of probes (every non-gallery image of an identity, anonymized) whose most "
    "similar gallery embedding (one original per identity, all identities) is their own identity",
    "tar_at_far": "verification of original image i against anonymized image j: genuine pairs "
    "are the same identity with i != j, impostors different identities; threshold t is the "
    "impostor score with floor(far * n_impostor) scores above it; TAR = share of genuine > t",
    "same_photo_accept_rate": "share of images whose original and own anonymized version score "
    "above the same threshold (the in-job audit's question)",
    "aligned": "a pretrained recognizer crops each anonymized face with the ORIGINAL's landmarks "
    "and matches it against one original per identity, every identity of the set",
    "parrot_gallery_anonymized": "the attacker anonymizes faces of other people with the same "
    "method (training identities: originals and their anonymized versions, labelled) and fits a "
    "metric head (margin loss) on the frozen recognizer's features; tested on disjoint held-out "
    "identities, gallery one ANONYMIZED image per identity, probes their other anonymized images",
    "parrot_gallery_original": "the same parrot head, gallery one ORIGINAL image per held-out "
    "identity (the head maps both), probes their anonymized images",
    "parrot_finetune_gallery_anonymized": "the parrot with the recognizer's last residual "
    "block and every layer after it trained too (margin loss on its embedding, the rest "
    "frozen; ONNX recognizers only); held-out gallery of ANONYMIZED images",
    "parrot_finetune_gallery_original": "the same fine-tuned network, gallery one ORIGINAL "
    "image per held-out identity",
    "parrot_finetune": "per recognizer: the layers fine-tuned, training crops, margin loss over "
    "the first and last tenth of the steps, CPU seconds (trunk activations, training, total)",
    "inversion": "a ridge map from anonymized to original recognizer features fitted on the "
    "training identities' pairs, applied to the held-out anonymized probes and matched against "
    "one original per held-out identity",
    "inversion_pixels": "a residual U-Net fitted on the training identities' pairs of 64 x 64 "
    "face crops (anonymized -> original, at the original's landmarks); its correction is warped "
    "back onto each held-out anonymized image, which every recognizer then embeds at the "
    "original's alignment and matches against one original per held-out identity",
    "pixel_inversion": "the U-Net's size, training pairs, L1 loss over the first and last tenth "
    "of its steps, and CPU seconds to fit it and to restore the held-out images",
    "worst": "the highest rank-1 (and the highest TAR) over every attack and every recognizer; "
    "chance is 1 / gallery size of that attack (aligned: all identities; the learning attacks: "
    "the held-out identities only)",
    "splits": "with attack_budget.splits > 1 the learning attackers run on that many identity "
    "splits of the same output: a learning attack's rank-1 counts the probe trials of every "
    "split together (splits overlap, so one image can be a probe in several: n_probes and "
    "n_gallery count trials), chance is weighted by probes, TAR and the same-photo figures are "
    "means over the splits, by_split holds each split's figures; worst_by_split is the worst "
    "case of each split alone; attack_cpu_s sums the splits (aligned, the same on every split, "
    "once); pixel_inversion and parrot_finetune describe the first split, extras_by_split each",
    "attack_budget": "the learning attackers' compute, identical for every method of a run; "
    "attack_cpu_s in each row is what it took, training included: inversion-pixels counts the "
    "U-Net's fit and restore (pixel_inversion: once per method, shared by the recognizers, so "
    "in each recognizer's figure), parrot-finetune that recognizer's fine-tune (parrot_finetune)",
    "alignment": "the attacker crops anonymized faces with the ORIGINAL's landmarks (worst case)",
    "redetected": "share of anonymized faces a second detector still finds (IoU >= 0.3 with the "
    "original's box); redetected_originals is the same detector on the originals",
    "by_method": "redetected and landmark_error over the central faces each method was "
    "applied to (surrogate faces apart from those masked as a fallback)",
    "landmark_error": "dlib 68-point shapes fitted in the original's box on the original and "
    "the anonymized image: mean point distance / original's inter-ocular distance",
    "attributes": "linear probes on dlib embeddings fit on the attribute set; agreement = same "
    "prediction on original and anonymized face; age_abs_diff = mean |age(orig) - age(anon)|; "
    "measured on up to attribute_faces faces per method (salted-id order); *_constant_* is "
    "what always giving the most common (or median) answer would score on the same faces",
    "applied": "method actually applied, counted over every face of the evaluated images (a "
    "surrogate may fall back to mask)",
    "ssim_outside": "SSIM (luma, Gaussian window) averaged over pixels at least 5 px from every "
    "anonymized region: method = the method's pixels, encoded = after JPEG/PNG encoding",
    "recall": "labelled set: images where the detector finds a face containing the image centre; "
    "group photos: detections counted against the known number of faces",
    "throughput": "decode + detect + anonymize + encode (FaceAnonymizer.batch) on this machine; "
    "images_per_cpu_s counts the CPU time of every thread",
}


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


def privacy(features: Features, far: float) -> dict:
    """Rank-1 identification and TAR at ``far`` of the aligned attack (one recognizer)."""
    f = features
    return score(Trial(f.originals, f.anonymized, f.ids, f.gallery, f.valid), far)


def attack_figures(run: MethodRun, originals: Originals, session: EvalSession) -> dict:
    """Every attack with every recognizer on one method: figures (attack key -> recognizer ->
    figures), the CPU seconds each attack took (recognizer -> attack -> seconds) and, with
    several identity splits, their figures pooled (``attacks.pool_splits``), CPU seconds
    summed, and the worst case of each split alone."""
    budget = session.plan.budget
    seeds = budget.split_seeds()
    if len(seeds) == 1:
        return _one_split(run, originals, session)
    per_split = []
    for seed in seeds:
        b = replace(budget, seed=seed, splits=1)
        split = split_identities(originals.ids, originals.has_face, b)
        plan = replace(session.plan, split=split, budget=b)
        # as a run with --attack-seed seed alone: the same split and the same training seeds
        alone = replace(session, config=replace(session.config, budget=b), plan=plan)
        per_split.append(_one_split(run, originals, alone))
    return pool_runs(per_split, seeds)


def pool_runs(per_split: list[dict], seeds: tuple[int, ...]) -> dict:
    """``attack_figures`` of one method on several splits as one: the figures pooled, CPU
    seconds summed (a split-free attack's taken once: it is the same on every split), the
    worst case of each split, and each split's training summaries (``extras_by_split``; the
    first split's also stay where a one-split run has them)."""
    out = dict(per_split[0])
    out["attacks"] = pool_splits([p["attacks"] for p in per_split], seeds)
    out["attack_cpu_s"] = {
        recognizer: {
            attack: by_attack[attack]
            if attack in SPLIT_FREE
            else round(sum(p["attack_cpu_s"][recognizer][attack] for p in per_split), 3)
            for attack in by_attack
        }
        for recognizer, by_attack in per_split[0]["attack_cpu_s"].items()
    }
    out["worst_by_split"] = [
        {"seed": seed, **worst_case(p["attacks"])} for seed, p in zip(seeds, per_split, strict=True)
    ]
    extras = ("pixel_inversion", "parrot_finetune")
    out["extras_by_split"] = [
        {"seed": seed, **{k: p[k] for k in extras if k in p}}
        for seed, p in zip(seeds, per_split, strict=True)
    ]
    return out


def _one_split(run: MethodRun, originals: Originals, session: EvalSession) -> dict:
    attacks: dict[str, dict] = {}
    cpu: dict[str, dict] = {}
    restored, extra = {}, {}
    if "inversion-pixels" in session.plan.attacks:
        restored, extra["pixel_inversion"] = pixels.restored_embeddings(run, originals, session)
    tuned: dict = {}
    if "parrot-finetune" in session.plan.attacks and session.config.budget.finetune_steps:
        tuned, extra["parrot_finetune"] = finetune.finetuned_embeddings(run, originals, session)
    for a in session.models.attackers:
        features = Features(
            originals.embeddings[a.name],
            run.embeddings[a.name],
            originals.ids,
            originals.gallery,
            run.valid,
            restored.get(a.name),
            tuned.get(a.name),
        )
        figures, cpu[a.name] = run_attacks(features, session.plan)
        for name, seconds in _training_cpu_s(extra, a.name).items():
            if name in cpu[a.name]:
                cpu[a.name][name] = round(cpu[a.name][name] + seconds, 3)
        for key, value in figures.items():
            attacks.setdefault(key, {})[a.name] = value
    return {"attacks": attacks, "attack_cpu_s": cpu, **extra}


def _training_cpu_s(extra: dict, recognizer: str) -> dict[str, float]:
    """CPU seconds the learning attacks spent before ``run_attacks`` scores them: the pixel
    U-Net's fit and restore (once per method, every recognizer's embedding included) and the
    recognizer's fine-tune; zero where they did not run."""
    pixels = extra.get("pixel_inversion", {})
    tuned = extra.get("parrot_finetune", {}).get(recognizer, {})
    return {
        "inversion-pixels": pixels.get("fit_cpu_s", 0.0) + pixels.get("restore_cpu_s", 0.0),
        "parrot-finetune": tuned.get("total_cpu_s", 0.0),
    }


def _by_method(run: MethodRun) -> dict:
    """Re-detection and landmark error over the central faces that each method was applied
    to (a surrogate falls back to mask on faces whose landmarks are unreliable)."""
    out = {}
    for name in sorted({m for m in run.central_method[run.valid] if m}):
        pick = run.valid & (run.central_method == name)
        out[name] = {
            "n_faces": int(pick.sum()),
            "redetected": _mean(run.redetected[pick]),
            "landmark_error_mean": _mean(run.landmark_error[pick]),
        }
    return out


def utility(run: MethodRun, originals: Originals, models: EvalModels) -> dict:
    """Re-detection, landmark error, attribute agreement and SSIM outside the face regions."""
    v = run.valid
    out = {
        "n_faces": int(v.sum()),
        "redetected": _mean(run.redetected[v]),
        "redetected_originals": _mean(originals.redetected[originals.has_face]),
        "landmark_error_mean": _mean(run.landmark_error[v]),
        "landmark_error_median": float(np.nanmedian(run.landmark_error[v])) if v.any() else None,
        "ssim_outside_method_mean": _mean(run.ssim_method),
        "ssim_outside_method_min": float(np.nanmin(run.ssim_method)) if v.any() else None,
        "ssim_outside_encoded_mean": _mean(run.ssim_encoded),
        "ssim_outside_encoded_min": float(np.nanmin(run.ssim_encoded)) if v.any() else None,
        "by_method": _by_method(run),
    }
    if models.attributes is not None and models.featurizer is not None:
        faces, judged = _judged(models.attributes, models.featurizer.name, run, originals)
        out["attribute_faces"] = faces
        out.update(judged)
    if models.attacker_judge is not None:
        _, judged = _judged(models.attacker_judge, models.attackers[0].name, run, originals)
        out.update({f"attacker_judge_{k}": value for k, value in judged.items()})
    return out


def _judged(model, embedder: str, run: MethodRun, originals: Originals) -> tuple[int, dict]:
    """Attribute agreement by ``model`` over the faces with ``embedder`` vectors before and
    after; returns how many faces that was, and the figures."""
    before, after = originals.embeddings[embedder], run.embeddings[embedder]
    ok = run.valid & ~np.isnan(before[:, 0]) & ~np.isnan(after[:, 0])
    return int(ok.sum()), agreement(model, before[ok], after[ok])


def method_row(spec: MethodSpec, run: MethodRun, session: EvalSession) -> dict:
    """Every figure of one method."""
    originals, models = session.originals, session.models
    n = len(run.valid)
    row = {"label": spec.label, "name": spec.name, "options": dict(spec.options), "available": True}
    row["statuses"] = dict(run.statuses)
    row["applied"] = dict(run.applied)
    row.update(attack_figures(run, originals, session))
    row["privacy"] = row["attacks"]["aligned"]
    row["worst"] = worst_case(row["attacks"])
    row["utility"] = utility(run, originals, models) if models.landmarks is not None else None
    row["throughput"] = {
        "images": n,
        "wall_s": round(run.wall_s, 3),
        "cpu_s": round(run.cpu_s, 3),
        "images_per_s_wall": n / run.wall_s if run.wall_s else None,
        "images_per_cpu_s": n / run.cpu_s if run.cpu_s else None,
    }
    return row


def pick_examples(data: LabelledSet, originals: Originals, count: int) -> list[int]:
    """Probe images with a face, in salted-id order (so no name decides which are shown)."""
    ok = originals.has_face & ~originals.gallery
    candidates = [i for i in range(len(data)) if ok[i]]
    return sorted(candidates, key=lambda i: data.samples[i].sample_id)[:count]


def example_files(
    data: LabelledSet, examples: dict[int, dict[str, np.ndarray]], methods: Sequence[MethodSpec]
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """File names (relative to the report) for every example thumbnail, and the report entries."""
    index = {"original": "original", **{m.label: f"m{k}" for k, m in enumerate(methods)}}
    thumbs, entries = {}, []
    for i, images in examples.items():
        sid = data.samples[i].sample_id
        files = {}
        for label, rgb in images.items():
            name = f"examples/{sid}-{index[label]}.jpg"
            thumbs[name] = rgb
            files[label] = name
        entries.append({"sample": sid, "images": files})
    return thumbs, entries


def _baselines(originals: Originals, models: EvalModels, far: float) -> list[dict]:
    o, has = originals, originals.has_face
    return [
        {
            **a.info,
            "on_originals": privacy(
                Features(o.embeddings[a.name], o.embeddings[a.name], o.ids, o.gallery, has), far
            ),
        }
        for a in models.attackers
    ]


def assemble(session: EvalSession, rows: list[dict], recall: dict) -> dict:
    """The whole report.json structure (examples are added by the caller); ``recall`` holds
    the group photos and, when asked for, recall per group and on small faces."""
    config, data = session.config, session.data
    originals, models = session.originals, session.models
    has = originals.has_face
    probes = has & ~originals.gallery & np.isin(originals.ids, originals.ids[originals.gallery])
    second = originals.redetected[has] if models.second is not None else None
    dataset = {
        "images": config.images,
        "identities": config.identities,
        "n_images": len(data),
        "n_identities": data.n_identities,
        "n_with_face": int(has.sum()),
        "n_gallery": int(originals.gallery.sum()),
        "n_probes": int(probes.sum()),
        "limit_identities": config.limit_identities,
        "attack_split": session.plan.split.public(originals.ids),
        "sample_ids": "HMAC-SHA256 of the relative path under a per-run salt that is not stored",
    }
    labelled = {"expected": len(data), "found": int(has.sum()), "recall": float(has.mean())}
    if second is not None:
        labelled["second_detector_on_found"] = _mean(second)
    return {
        "kind": "faceveil-eval",
        "schema": 2,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": dataset,
        "attribute_probes": None
        if models.attributes is None
        else {
            "labels": config.attributes,
            **models.attributes.quality,
            **(
                {"attacker_judge": models.attacker_judge.quality}
                if models.attacker_judge is not None
                else {}
            ),
        },
        "config": config.public(),
        "attack_budget": config.budget.public(),
        "models": models.info,
        "versions": versions(),
        "attackers": _baselines(originals, models, config.far),
        "recall": {"labelled": labelled, **recall},
        "methods": rows,
        "definitions": DEFINITIONS,
    }
