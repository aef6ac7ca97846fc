"""Attribute probes (gender, race, age) fit on a labelled face set, to measure what survives."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from tqdm import tqdm

from faceveil.anon_core.attackers import Attacker
from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.labels import AttributeSet, decoded
from faceveil.jobs.evaluate.metrics import central_face

log = logging.getLogger(__name__)


@dataclass
class AttributeModel:
    """Linear probes on identity embeddings, with their own cross-validated quality."""

    gender: LogisticRegression
    race: LogisticRegression
    age: Ridge
    quality: dict

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Gender, race and age predicted from embeddings (N x D)."""
        return {
            "gender": self.gender.predict(features),
            "race": self.race.predict(features),
            "age": self.age.predict(features),
        }


def _features(
    data: AttributeSet, detector: Detector, featurizer: Attacker, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the central face of each labelled crop and the indices that had one."""
    rows, kept = [], []
    images = tqdm(
        decoded(data.paths), total=len(data.paths), desc="attribute set", disable=not progress
    )
    for i, image in enumerate(images):
        faces = detector([image])[0]
        k = central_face(faces, image.shape)
        if k is None:
            continue
        guide = featurizer.guide(image, faces.boxes[k], faces.landmarks5[k])
        rows.append(featurizer.embed([image], [guide])[0])
        kept.append(i)
    return np.asarray(rows, np.float32), np.asarray(kept, np.int64)


def fit_attribute_model(
    data: AttributeSet, detector: Detector, featurizer: Attacker, progress: bool = True
) -> AttributeModel:
    """Fit gender and race (logistic regression) and age (ridge) on ``featurizer`` embeddings,
    reporting 5-fold cross-validated accuracy and mean absolute error beside them."""
    x, kept = _features(data, detector, featurizer, progress)
    if len(kept) < 20:
        raise ValueError(f"only {len(kept)} attribute images had a detectable face")
    gender, race, age = data.gender[kept], data.race[kept], data.age[kept]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    models = {
        "gender": LogisticRegression(max_iter=2000),
        "race": LogisticRegression(max_iter=2000),
        "age": Ridge(alpha=1.0),
    }
    quality = {"n_images": len(data.paths), "n_used": len(kept), "features": featurizer.info}
    for name, y in (("gender", gender), ("race", race)):
        pred = cross_val_predict(models[name], x, y, cv=folds)
        quality[f"{name}_cv_accuracy"] = float(np.mean(pred == y))
        quality[f"{name}_majority_baseline"] = float(
            np.max(np.unique(y, return_counts=True)[1]) / len(y)
        )
    pred_age = cross_val_predict(models["age"], x, age, cv=KFold(5, shuffle=True, random_state=0))
    quality["age_cv_mae_years"] = float(np.mean(np.abs(pred_age - age)))
    for name, y in (("gender", gender), ("race", race), ("age", age)):
        models[name].fit(x, y)
    log.info("attribute probes: %s", {k: v for k, v in quality.items() if k != "features"})
    return AttributeModel(models["gender"], models["race"], models["age"], quality)


def agreement(model: AttributeModel, original: np.ndarray, anonymized: np.ndarray) -> dict:
    """How often the probes say the same thing about the original and the anonymized face,
    beside what a constant answer would score on the same faces (the level a method that
    destroys the attribute falls to)."""
    if len(original) == 0:
        return {}
    a, b = model.predict(original), model.predict(anonymized)
    out = {}
    for name in ("gender", "race"):
        out[f"{name}_agreement"] = float(np.mean(a[name] == b[name]))
        counts = np.unique(a[name], return_counts=True)[1]
        out[f"{name}_constant_agreement"] = float(counts.max() / len(a[name]))
    out["age_abs_diff_years"] = float(np.mean(np.abs(a["age"] - b["age"])))
    out["age_constant_abs_diff_years"] = float(np.mean(np.abs(a["age"] - np.median(a["age"]))))
    return out
