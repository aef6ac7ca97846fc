"""Re-identification attacks on one recognizer's features, and the worst case over them.

``aligned``: the pretrained recognizer crops the anonymized face with the original's landmarks
and matches it against one original per identity (every identity of the set). ``parrot``: the
attacker anonymizes faces of other people himself (the method is public) and fits a metric head
on the recognizer's features of them; tested on held-out identities against a gallery of their
anonymized images and one of their originals. ``inversion``: a ridge map from anonymized to
original features fitted on the training identities, applied to the held-out ones and matched
against their originals. ``inversion-pixels``: the same on pixels, a U-Net fitted on crop pairs
(``pixels``); each recognizer embeds the restored images it gives (``Features.restored``).
``parrot-finetune``: the parrot with the recognizer's last block trained too (``finetune``);
its embeddings of the held-out anonymized and original images (``Features.finetuned``) are
scored as the parrot's.
Training and test identities are disjoint (``split_identities``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from faceveil.jobs.evaluate.config import AttackBudget
from faceveil.jobs.evaluate.heads import MetricHead, RidgeInversion
from faceveil.jobs.evaluate.metrics import rank1, tar_at_far, verification_scores

# the report's keys per attack (the parrot is tested under two threat models)
ATTACK_KEYS = {
    "aligned": ("aligned",),
    "parrot": ("parrot_gallery_anonymized", "parrot_gallery_original"),
    "parrot-finetune": ("parrot_finetune_gallery_anonymized", "parrot_finetune_gallery_original"),
    "inversion": ("inversion",),
    "inversion-pixels": ("inversion_pixels",),
}


@dataclass(frozen=True)
class Split:
    """Disjoint identities: ``train`` and ``test`` mark samples (with a face) of each side."""

    train: np.ndarray
    test: np.ndarray

    def public(self, ids: np.ndarray) -> dict:
        """Counts for report.json (no identity is named)."""
        return {
            "train_identities": len(np.unique(ids[self.train])),
            "train_images": int(self.train.sum()),
            "test_identities": len(np.unique(ids[self.test])),
            "test_images": int(self.test.sum()),
        }


def split_identities(ids: np.ndarray, has_face: np.ndarray, budget: AttackBudget) -> Split:
    """Hold out ``1 - train_share`` of the identities with two or more faces (a seeded shuffle,
    not name order); every other identity, one-image ones included, trains the attackers."""
    names, counts = np.unique(ids[has_face], return_counts=True)
    several = np.sort(names[counts >= 2]).astype(np.int64)
    order = np.random.default_rng(budget.seed).permutation(several)
    held_out = order[: round(len(order) * (1.0 - budget.train_share))]
    test = has_face & np.isin(ids, held_out)
    return Split(train=has_face & ~test, test=test)


def first_per_identity(ids: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The first used sample of each identity (the gallery image)."""
    gallery = np.zeros(len(ids), bool)
    seen: set[int] = set()
    for i in np.flatnonzero(use):
        if int(ids[i]) not in seen:
            gallery[i] = True
            seen.add(int(ids[i]))
    return gallery


@dataclass(frozen=True)
class Trial:
    """One attack's test over the samples in ``use``: ``reference`` is what gallery and
    verification references are made of (N x D), ``probe`` the attacker's view of each
    anonymized sample; ``gallery`` marks one reference per identity."""

    reference: np.ndarray
    probe: np.ndarray
    ids: np.ndarray
    gallery: np.ndarray
    use: np.ndarray


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def score(trial: Trial, far: float) -> dict:
    """Rank-1 identification and TAR at ``far`` of one trial."""
    ids, use, gallery = trial.ids, trial.use, trial.gallery & trial.use
    probes = use & ~gallery & np.isin(ids, ids[gallery])
    correct, n = rank1(trial.reference[gallery], ids[gallery], trial.probe[probes], ids[probes])
    genuine, impostor = verification_scores(trial.reference[use], trial.probe[use], ids[use])
    tar, threshold = tar_at_far(genuine, impostor, far)
    same_photo = np.sum(trial.reference[use] * trial.probe[use], axis=1)
    n_gallery = int(gallery.sum())
    return {
        "rank1": correct / n if n else None,
        "rank1_correct": correct,
        "n_probes": n,
        "n_gallery": n_gallery,
        "chance": 1.0 / n_gallery if n_gallery else None,
        "tar_at_far": tar if len(genuine) else None,
        "far": far,
        "threshold": threshold,
        "n_genuine": len(genuine),
        "n_impostor": len(impostor),
        "same_photo_similarity_mean": _mean(same_photo),
        "same_photo_accept_rate": _mean(same_photo > threshold),
    }


@dataclass(frozen=True)
class Features:
    """One recognizer's embeddings of the originals and of one method's output, per sample;
    ``valid`` marks samples with both, ``gallery`` the aligned attack's one original per
    identity over the whole set; ``restored`` the embeddings of the pixel inversion's restored
    images (held-out samples; NaN elsewhere), None when that attack did not run; ``finetuned``
    the fine-tuned parrot's (anonymized, original) embeddings, likewise."""

    originals: np.ndarray
    anonymized: np.ndarray
    ids: np.ndarray
    gallery: np.ndarray
    valid: np.ndarray
    restored: np.ndarray | None = None
    finetuned: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class AttackPlan:
    """Which attacks, on which split, with what budget, at which false accept rate."""

    attacks: tuple[str, ...]
    split: Split
    budget: AttackBudget
    far: float


def _aligned(f: Features, plan: AttackPlan) -> dict:
    return {"aligned": score(Trial(f.originals, f.anonymized, f.ids, f.gallery, f.valid), plan.far)}


def _parrot(f: Features, plan: AttackPlan) -> dict:
    train, test = plan.split.train & f.valid, plan.split.test & f.valid
    keys = ATTACK_KEYS["parrot"]
    if len(np.unique(f.ids[train])) < 2:
        return dict.fromkeys(keys, {"rank1": None, "reason": "fewer than 2 training identities"})
    x = np.vstack([f.anonymized[train], f.originals[train]])
    labels = np.concatenate([f.ids[train], f.ids[train]])
    head = MetricHead(plan.budget).fit(x, labels)
    probe = np.zeros_like(f.anonymized)
    probe[test] = head(f.anonymized[test])
    reference = np.zeros_like(f.originals)
    reference[test] = head(f.originals[test])
    return _two_galleries(keys, (probe, reference), f.ids, test, plan.far)


def _two_galleries(keys: tuple, embedded: tuple, ids: np.ndarray, test: np.ndarray, far: float):
    """The parrot's two threat models on held-out ``test`` samples embedded by the attacker
    (``embedded``: anonymized, original): gallery of anonymized images, gallery of originals."""
    probe, reference = embedded
    gallery = first_per_identity(ids, test)
    return {
        keys[0]: score(Trial(probe, probe, ids, gallery, test), far),
        keys[1]: score(Trial(reference, probe, ids, gallery, test), far),
    }


def _parrot_finetune(f: Features, plan: AttackPlan) -> dict:
    keys = ATTACK_KEYS["parrot-finetune"]
    test = plan.split.test & f.valid
    if plan.budget.finetune_steps == 0:
        return dict.fromkeys(keys, {"rank1": None, "reason": "finetune_steps is 0"})
    if f.finetuned is None or np.isnan(f.finetuned[0][test]).any() or not test.any():
        return dict.fromkeys(
            keys,
            {
                "rank1": None,
                "reason": "no fine-tuned network for this recognizer "
                "(methods[].parrot_finetune says why)",
            },
        )
    probe, reference = (np.where(test[:, None], e, 0.0).astype(np.float32) for e in f.finetuned)
    return _two_galleries(keys, (probe, reference), f.ids, test, plan.far)


def _inversion(f: Features, plan: AttackPlan) -> dict:
    train, test = plan.split.train & f.valid, plan.split.test & f.valid
    if train.sum() < 2:
        return {"inversion": {"rank1": None, "reason": "fewer than 2 training images"}}
    inverse = RidgeInversion(plan.budget.ridge_alpha).fit(f.anonymized[train], f.originals[train])
    probe = np.zeros_like(f.anonymized)
    probe[test] = inverse(f.anonymized[test])
    reference = np.where(test[:, None], f.originals, 0.0).astype(np.float32)
    trial = Trial(reference, probe, f.ids, first_per_identity(f.ids, test), test)
    return {"inversion": score(trial, plan.far)}


def _inversion_pixels(f: Features, plan: AttackPlan) -> dict:
    test = plan.split.test & f.valid
    if f.restored is None or np.isnan(f.restored[test]).any() or not test.any():
        return {"inversion_pixels": {"rank1": None, "reason": "no restored held-out images"}}
    reference = np.where(test[:, None], f.originals, 0.0).astype(np.float32)
    probe = np.where(test[:, None], f.restored, 0.0).astype(np.float32)
    trial = Trial(reference, probe, f.ids, first_per_identity(f.ids, test), test)
    return {"inversion_pixels": score(trial, plan.far)}


_RUN = {
    "aligned": _aligned,
    "parrot": _parrot,
    "parrot-finetune": _parrot_finetune,
    "inversion": _inversion,
    "inversion-pixels": _inversion_pixels,
}


def run_attacks(features: Features, plan: AttackPlan) -> tuple[dict, dict]:
    """(figures by attack key, CPU seconds by attack) of every planned attack."""
    out, cpu = {}, {}
    for name in plan.attacks:
        started = time.process_time()
        out.update(_RUN[name](features, plan))
        cpu[name] = round(time.process_time() - started, 3)
    return out, cpu


SPLIT_FREE = ("aligned",)  # its gallery is every identity: the same figures on any split


def pool_splits(per_split: list[dict], seeds: tuple[int, ...]) -> dict:
    """One set of figures (attack key -> recognizer -> figures) from the same attacks run on
    several identity splits, one entry of ``per_split`` per seed of ``seeds``: rank-1 over the
    probes of every split together, chance weighted by each split's probes, TAR and the
    same-photo figures the mean over the splits, and each split's own figures under
    ``by_split``. A split-free attack is taken from the first split as it is."""
    if len(per_split) == 1:
        return per_split[0]
    out: dict[str, dict] = {}
    for attack, by_recognizer in per_split[0].items():
        for recognizer in by_recognizer:
            cells = [split[attack][recognizer] for split in per_split]
            pooled = cells[0] if attack in SPLIT_FREE else _pooled(cells, seeds)
            out.setdefault(attack, {})[recognizer] = pooled
    return out


def _pooled(cells: list[dict], seeds: tuple[int, ...]) -> dict:
    scored = [(seed, c) for seed, c in zip(seeds, cells, strict=True) if c["rank1"] is not None]
    if not scored:
        return cells[0]
    kept = ("rank1", "rank1_correct", "n_probes", "n_gallery", "chance", "tar_at_far")
    by_split = [{"seed": seed, **{k: c[k] for k in kept}} for seed, c in scored]
    correct = sum(c["rank1_correct"] for _, c in scored)
    n = sum(c["n_probes"] for _, c in scored)
    tars = [c["tar_at_far"] for _, c in scored if c["tar_at_far"] is not None]
    return {
        "rank1": correct / n,
        "rank1_correct": correct,
        "n_probes": n,
        "n_gallery": sum(c["n_gallery"] for _, c in scored),
        "chance": sum(c["chance"] * c["n_probes"] for _, c in scored) / n,
        "tar_at_far": _mean(np.array(tars)),
        "far": scored[0][1]["far"],
        "threshold": None,  # one per split (the thresholds differ)
        "n_genuine": sum(c["n_genuine"] for _, c in scored),
        "n_impostor": sum(c["n_impostor"] for _, c in scored),
        **{
            k: _mean(np.array([c[k] for _, c in scored if c[k] is not None]))
            for k in ("same_photo_similarity_mean", "same_photo_accept_rate")
        },
        "splits": len(scored),
        "by_split": by_split,
    }


def worst_case(attacks: dict) -> dict:
    """The strongest attack on one method: highest rank-1 and highest TAR over every attack
    and recognizer (``attacks``: attack key -> recognizer -> figures)."""
    cells = [
        (fig, attack, recognizer)
        for attack, by_recognizer in attacks.items()
        for recognizer, fig in by_recognizer.items()
    ]
    ranked = [c for c in cells if c[0].get("rank1") is not None]
    verified = [c for c in cells if c[0].get("tar_at_far") is not None]
    if not ranked:
        return {"rank1": None, "tar_at_far": None}
    top = max(ranked, key=lambda c: c[0]["rank1"])
    out = {"rank1": top[0]["rank1"], "rank1_attack": top[1], "rank1_recognizer": top[2]}
    out["rank1_chance"] = top[0].get("chance")
    if verified:
        tar = max(verified, key=lambda c: c[0]["tar_at_far"])
        out.update(tar_at_far=tar[0]["tar_at_far"], tar_attack=tar[1], tar_recognizer=tar[2])
    else:
        out["tar_at_far"] = None
    return out
