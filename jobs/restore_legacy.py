"""Restoring outputs of the earlier master-key escrow (``escrow.json`` format 2, key manifests
format 1), kept so that those outputs stay restorable; the commands are :mod:`jobs.legacy_cli`.

In that format every approval carries the custodian's Shamir share of each epoch's *master key*:
M approvals of any request rebuild keys that open every sample of the job. Each command says so
before it acts. Reshare and rekey of such outputs are not offered; restore what is needed and
run the job again to move it to the current format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from faceveil.jobs.restore import iter_images, manifest_names, rebuild
from faceveil.jobs.storage import Location
from faceveil.manifests.envelope import Envelope, MasterKey
from faceveil.manifests.errors import EscrowError, RestoreError
from faceveil.manifests.escrow_v2 import Escrow
from faceveil.manifests.files import write_private_file
from faceveil.manifests.keymanifest import KeyRow, load_key_manifest, open_row

log = logging.getLogger(__name__)

WARNING = (
    "warning: this output uses the earlier master-key escrow (format 2): M approvals of any "
    "request rebuild keys that open EVERY sample of the job, not only the requested ones"
)


def read_escrow(out: Location) -> Escrow:
    """``escrow.json`` (format 2), checked against ``job.json``'s job id."""
    escrow = Escrow.loads(out.read_bytes("escrow.json"))
    if escrow.job_id != out.read_json("job.json")["job_id"]:
        raise EscrowError("escrow.json belongs to another job than job.json")
    return escrow


def rows_by_shard(
    out: Location, escrow: Escrow, wanted: set[str] | None
) -> dict[str, tuple[str, dict[str, list[KeyRow]]]]:
    found: dict[str, tuple[str, dict[str, list[KeyRow]]]] = {}
    seen: set[str] = set()
    for shard in manifest_names(out):
        manifest = load_key_manifest(out.read_bytes("keys", f"{shard}.parquet"))
        if manifest.version != 1 or manifest.escrow_id not in escrow.escrow_ids:
            raise EscrowError(f"keys/{shard}.parquet is not a format-1 manifest of this escrow")
        grouped: dict[str, list[KeyRow]] = {}
        for row in manifest.rows:
            if wanted is None or row.sample_id in wanted:
                grouped.setdefault(row.sample_id, []).append(row)
        if seen & set(grouped):
            raise RestoreError(f"a sample appears in two key manifests (at {shard})")
        seen |= set(grouped)
        if grouped:
            found[shard] = (manifest.escrow_id, grouped)
    if wanted is not None and wanted - seen:
        raise RestoreError(f"{len(wanted - seen)} requested sample(s) are in no key manifest")
    return found


def restore_to(
    out: Location, masters: Mapping[str, MasterKey], job_id: str, wanted, staging: Path
) -> dict:
    restored = {}
    escrow = read_escrow(out)
    for shard, (escrow_id, groups) in rows_by_shard(out, escrow, wanted).items():
        envelope = Envelope(masters[escrow_id], job_id, escrow_id)
        images = {k: data for k, _, data in iter_images(out, shard) if k in groups}

        def opener(row: KeyRow, sha: str, env: Envelope = envelope, at: str = shard):
            return open_row(env, at, row, sha)

        for key, rows in groups.items():
            ext, data, uri = rebuild(opener, shard, key, rows, images.get(key))
            write_private_file(staging / f"{key}.{ext}", data, overwrite=True)
            restored[key] = (f"{key}.{ext}", uri)
    return restored
