"""``AnonResult``: what ``FaceAnonymizer`` gives back for one image, and ``quarantined``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import DecodedImage
from faceveil.anon_core.methods.base import MethodOutput


class SampleStatus(StrEnum):
    """What became of one image: faces found and anonymized, no face found (passed through,
    re-encoded), or quarantined (with a stage and a reason)."""

    ANONYMIZED = "anonymized"
    NO_FACE = "no_face"
    QUARANTINED = "quarantined"


@dataclass
class AnonResult:
    """The outcome for one image: anonymized bytes and public metadata, or a quarantine reason.

    ``original`` keeps the decoded input in memory so a caller can seal the changed regions; it
    is never part of the public metadata.
    """

    status: SampleStatus
    stage: str = ""
    reason: str = ""
    encoded: bytes = b""
    ext: str = ""
    faces: Faces = field(default_factory=Faces.empty)
    output: MethodOutput | None = None
    original: DecodedImage | None = None

    @property
    def ok(self) -> bool:
        return self.status != SampleStatus.QUARANTINED

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.encoded).hexdigest()

    def metadata(self) -> dict:
        """Public per-sample metadata: size, faces and status; no embeddings, paths or pixels."""
        if not self.ok or self.original is None or self.output is None:
            return {"status": self.status, "stage": self.stage, "reason": self.reason}
        h, w = self.original.rgb.shape[:2]
        pseudonyms = self.output.pseudonyms or (None,) * len(self.faces)
        faces = [
            {
                "bbox": [round(float(v), 1) for v in self.faces.boxes[i, :4]],
                "score": round(float(self.faces.boxes[i, 4]), 4),
                "landmarks5": [round(float(v), 1) for v in self.faces.landmarks5[i]],
                "method": self.output.methods[i],
                "pseudonym": pseudonyms[i],
            }
            for i in range(len(self.faces))
        ]
        return {"width": w, "height": h, "faces": faces, "status": self.status}


def quarantined(stage: str, reason: str) -> AnonResult:
    return AnonResult(status=SampleStatus.QUARANTINED, stage=stage, reason=reason)
