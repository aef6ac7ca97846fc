"""The rekey engine: every sample gets a new data key under one new key epoch of the policy
the rekey request named, and every key manifest is re-sealed.

A rekey stages everything under ``OUT/_rekey/`` (the re-sealed manifests, then the new
``escrow.json``), the caller appends the signed ``escrow.rekey`` entry (with the new row-list
commitments) and only then is ``_rekey/COMPLETE`` written and the stage published over the live
files, ``escrow.json`` last. An interrupted publish is finished by ``faceveil escrow rekey OUT
--finish``; a stage without ``COMPLETE`` is discarded by the next rekey.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping

from faceveil.jobs.restore import (
    REKEY_DIR,
    RestoreContext,
    iter_images,
    load_checked,
    manifest_names,
    open_v2_row,
)
from faceveil.jobs.storage import Location
from faceveil.manifests.envelope import EMPTY_SHA256, PayloadKind
from faceveil.manifests.escrow import Escrow, KmsClient
from faceveil.manifests.jobkeys import epoch_sealing
from faceveil.manifests.keymanifest import SampleToSeal, ShardSealer

log = logging.getLogger(__name__)


def stage_rekey(
    ctx: RestoreContext,
    data_keys: Mapping[tuple[str, str], bytes],
    new_escrow: Escrow,
    kms: KmsClient | None = None,
) -> dict:
    """Re-seal every manifest under ``new_escrow``'s one epoch into ``_rekey/``; returns the plan
    (per manifest: old and new sha256 and the new commitment)."""
    out, escrow = ctx.out, ctx.escrow
    sealing = epoch_sealing(new_escrow, new_escrow.escrow_ids[0])
    if out.exists(REKEY_DIR):
        out.fs.rm(out.path(REKEY_DIR), recursive=True)
    plan: dict = {"new_escrow_id": sealing.escrow_id, "manifests": {}}
    for shard in manifest_names(out):
        old_bytes = out.read_bytes("keys", f"{shard}.parquet")
        manifest = load_checked(out, shard, escrow, ctx.commitments)
        sealer = ShardSealer(sealing.shard_keys(shard, kms), shard)
        shas = {k: hashlib.sha256(data).hexdigest() for k, _, data in iter_images(out, shard)}
        for row in manifest.rows:
            sha = shas.get(row.sample_id, EMPTY_SHA256)
            payload = open_v2_row(data_keys[(shard, row.sample_id)], escrow.job_id, shard, row, sha)
            sample = SampleToSeal(row.sample_id, payload.source_uri, sha)
            if payload.kind is PayloadKind.FACE_PNG:
                sealer.seal_face(sample, row.face, row.bbox, payload.data)
            else:
                original = payload.data if payload.kind is PayloadKind.ORIGINAL_FILE else None
                sealer.seal_sample(sample, original)
        new_bytes = sealer.manifest_bytes()
        out.publish_bytes(new_bytes, REKEY_DIR, "keys", f"{shard}.parquet")
        plan["manifests"][shard] = {
            "old_sha256": hashlib.sha256(old_bytes).hexdigest(),
            "new_sha256": hashlib.sha256(new_bytes).hexdigest(),
            "commitment": sealer.commitment(),
        }
    out.publish_bytes(new_escrow.dumps(), REKEY_DIR, "escrow.json")
    log.info("staged a rekey of %d manifests", len(plan["manifests"]))
    return plan


def mark_complete(out: Location, plan: dict) -> None:
    """Write ``_rekey/COMPLETE`` (after the ``escrow.rekey`` entry is in the log)."""
    out.publish_bytes(json.dumps(plan, indent=1).encode(), REKEY_DIR, "COMPLETE")


def publish_rekey(out: Location) -> int:
    """Copy a complete stage over the live files (idempotent), ``escrow.json`` last; each shard's
    marker gets the new manifest sha256, epoch and commitment. Returns the manifest count."""
    plan = json.loads(out.read_bytes(REKEY_DIR, "COMPLETE"))
    for shard, entry in sorted(plan["manifests"].items()):
        out.publish_bytes(
            out.read_bytes(REKEY_DIR, "keys", f"{shard}.parquet"), "keys", f"{shard}.parquet"
        )
        if out.exists("_done", f"{shard}.json"):
            marker = out.read_json("_done", f"{shard}.json")
            keys_file = marker.get("files", {}).get("keys")
            if keys_file is not None:
                keys_file["sha256"] = entry["new_sha256"]
            marker.update(escrow_id=plan["new_escrow_id"], manifest=entry["commitment"])
            out.publish_json(marker, "_done", f"{shard}.json")
    out.publish_bytes(out.read_bytes(REKEY_DIR, "escrow.json"), "escrow.json")
    out.fs.rm(out.path(REKEY_DIR), recursive=True)
    return len(plan["manifests"])
