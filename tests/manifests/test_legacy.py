"""Format-2 outputs (master-key escrow of earlier releases) still parse and restore, through the
read-only modules escrow_v2 and restore_v2, on the real output committed in tests/data/legacy_v2
(made by the release before format 3); the two formats are never confused."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceveil.manifests import escrow as escrow_v3
from faceveil.manifests import escrow_v2, restore_v2
from faceveil.manifests.custodian import CustodianPrivate
from faceveil.manifests.envelope import Envelope
from faceveil.manifests.errors import EscrowError, RestoreError
from faceveil.manifests.keymanifest import load_key_manifest, open_row
from tests.manifests.conftest import FAST_KDF

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "legacy_v2"
PASSPHRASE = "requester passphrase 123"


def _custodian(name: str) -> CustodianPrivate:
    secret = (FIXTURE / "keys" / f"{name}.pass").read_text().splitlines()[0]
    return CustodianPrivate.load(FIXTURE / "keys" / f"{name}.key", secret)


@pytest.fixture(scope="module")
def legacy():
    data = (FIXTURE / "tree" / "escrow.json").read_bytes()
    manifest = load_key_manifest((FIXTURE / "tree" / "keys" / "shard-000000.parquet").read_bytes())
    with tarfile.open(FIXTURE / "tree" / "data" / "shard-000000.tar") as tar:
        images = {
            m.name.split(".")[0]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.name.endswith(".png")
        }
    return data, manifest, images


def test_a_format_2_output_restores_its_faces_exactly(legacy):
    data, manifest, images = legacy
    assert escrow_v3.escrow_format(data) == "faceveil-escrow/2" and manifest.version == 1
    escrow = escrow_v2.Escrow.loads(data)
    key = sorted(images)[0]
    spec = restore_v2.RequestSpec("restore", [key], "old job", "bob")
    request, key_file = restore_v2.create_request(escrow, spec, PASSPHRASE, params=FAST_KDF)
    request = restore_v2.RestoreRequest.loads(request.dumps())
    request_key = restore_v2.load_request_key(request, key_file, PASSPHRASE)
    approvals = [
        restore_v2.Approval.loads(restore_v2.approve(escrow, request, _custodian(c)).dumps())
        for c in ("bob", "carol")
    ]
    approved = restore_v2.ApprovedRequest(request, request_key, approvals)
    masters = restore_v2.recover_masters(escrow, approved, "restore")
    envelope = Envelope(masters[manifest.escrow_id], escrow.job_id, manifest.escrow_id)
    anon = images[key]
    canvas = np.array(Image.open(io.BytesIO(anon)).convert("RGB"))
    faces = [r for r in manifest.rows if r.sample_id == key and r.face >= 0]
    assert faces
    for row in faces:
        payload = open_row(envelope, "shard-000000", row, hashlib.sha256(anon).hexdigest())
        x1, y1, x2, y2 = row.bbox
        canvas[y1:y2, x1:x2] = np.array(Image.open(io.BytesIO(payload.data)).convert("RGB"))
    originals = json.loads((FIXTURE / "originals.sha256.json").read_text()).values()
    assert hashlib.sha256(canvas.tobytes()).hexdigest() in {o["rgb_sha256"] for o in originals}
    assert hashlib.sha256(np.array(Image.open(io.BytesIO(anon)).convert("RGB")).tobytes()
                          ).hexdigest() not in {o["rgb_sha256"] for o in originals}  # fmt: skip
    with pytest.raises(RestoreError, match="needs 2"):
        short = restore_v2.ApprovedRequest(request, request_key, approvals[:1])
        restore_v2.recover_masters(escrow, short, "restore")


def test_the_formats_are_not_confused(legacy):
    data, _, _ = legacy
    with pytest.raises(EscrowError, match="unknown format"):
        escrow_v3.Escrow.loads(data)
    custodians = tuple(_custodian(c).public() for c in ("alice", "bob", "carol"))
    v3 = escrow_v3.create_escrow("job-1", escrow_v3.ShamirPolicy(2, custodians)).dumps()
    assert escrow_v3.escrow_format(v3) == "faceveil-escrow/3"
    with pytest.raises(EscrowError):
        escrow_v2.Escrow.loads(v3)
