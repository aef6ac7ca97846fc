"""Per-image de-identification: image I/O, detectors, anonymizers. No Ray, no files, no keys."""

from faceveil.anon_core.faces import Faces
from faceveil.anon_core.pipeline import AnonConfig, AnonResult, FaceAnonymizer
from faceveil.anon_core.results import SampleStatus

__all__ = ["AnonConfig", "AnonResult", "FaceAnonymizer", "Faces", "SampleStatus"]
