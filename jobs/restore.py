"""The restore engine: find the requested samples, check their manifests against the row lists
the job signed, open exactly the released samples and rebuild their originals.

Called by the ``faceveil restore`` handlers (:mod:`jobs.keys_cli`) and by the rekey engine
(:mod:`jobs.rekey`). Output trees are read through :class:`jobs.storage.Location` (local paths
or ``s3://``); restored originals go to a local folder, mode 0700/0600, published only when
every requested sample opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from faceveil.jobs.datawriter import parquet_samples
from faceveil.jobs.shardio import DEFAULT_MAX_MEMBER_BYTES, IMAGE_MEMBER_EXTS, iter_samples
from faceveil.jobs.storage import Location
from faceveil.manifests.envelope import EMPTY_SHA256, Payload, PayloadKind
from faceveil.manifests.errors import DecryptionError, EscrowError, RestoreError
from faceveil.manifests.escrow import (
    ESCROW_FORMAT,
    Escrow,
    KmsClient,
    KmsPolicy,
    ShardRef,
    escrow_format,
    kms_open_shard_key,
)
from faceveil.manifests.files import write_private_file
from faceveil.manifests.keymanifest import KeyManifest, KeyRow, load_key_manifest
from faceveil.manifests.request import SampleRef
from faceveil.manifests.sealing import kms_data_key, open_row, row_aad

log = logging.getLogger(__name__)

ESCROW_FILE = "escrow.json"
REKEY_DIR = "_rekey"
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Entries that fix a shard's row list: the job's own, and a rekey's (which re-seals every row).
COMMITTING_ACTIONS = ("job.manifests", "escrow.rekey")


@dataclass(frozen=True)
class RestoreContext:
    """What opening a job's sealed originals works against: its output tree, its escrow, and the
    row-list commitments its signed log records (per manifest), which each manifest opened must
    match."""

    out: Location
    escrow: Escrow
    commitments: Mapping[str, list[dict]]


def read_escrow(out: Location) -> Escrow:
    """``escrow.json`` (format 3), checked against ``job.json``'s job id."""
    data = out.read_bytes(ESCROW_FILE)
    if escrow_format(data) != ESCROW_FORMAT:
        raise EscrowError(
            "escrow.json is of the earlier master-key format; see 'faceveil restore' for "
            "restoring such outputs"
        )
    escrow = Escrow.loads(data)
    if escrow.job_id != out.read_json("job.json")["job_id"]:
        raise EscrowError("escrow.json belongs to another job than job.json")
    return escrow


def is_legacy(out: Location) -> bool:
    """Whether the output's escrow is of the earlier master-key format (escrow format 2)."""
    return escrow_format(out.read_bytes(ESCROW_FILE)) != ESCROW_FORMAT


def refuse_pending_rekey(out: Location) -> None:
    """EscrowError while an interrupted rekey waits to be finished."""
    if out.exists(REKEY_DIR, "COMPLETE"):
        raise EscrowError(
            "an interrupted rekey is pending: run 'faceveil escrow rekey OUT --finish' first"
        )


def log_entries(out: Location) -> list[dict]:
    """The audit log's entries, in order (verification is :mod:`jobs.auditlog`'s)."""
    if not out.exists("audit.jsonl"):
        return []
    return [json.loads(line) for line in out.read_bytes("audit.jsonl").splitlines()]


def log_tail(out: Location) -> str | None:
    """``SEQ:SHA256`` of the audit log's last line, or None without a log."""
    if not out.exists("audit.jsonl"):
        return None
    lines = out.read_bytes("audit.jsonl").splitlines()
    if not lines:
        return None
    return f"{len(lines)}:{hashlib.sha256(lines[-1]).hexdigest()}"


def signed_commitments(entries: Iterable[dict]) -> dict[str, list[dict]]:
    """Shard -> every row-list commitment the (verified) log signed for it: the job's when it
    sealed the shard, and each rekey's."""
    found: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("action") in COMMITTING_ACTIONS:
            for shard, commitment in ((entry.get("details") or {}).get("manifests") or {}).items():
                found.setdefault(shard, []).append(commitment)
    return found


def manifest_names(out: Location) -> list[str]:
    """The shards that have a key manifest (``shard-000000``), sorted."""
    return [n.removesuffix(".parquet") for n in out.listdir("keys") if n.endswith(".parquet")]


def load_checked(
    out: Location, shard: str, escrow: Escrow, commitments: Mapping[str, list[dict]]
) -> KeyManifest:
    """``keys/SHARD.parquet``, refused unless its row list is the one the job signed and its
    epoch is one of ``escrow``'s."""
    manifest = load_key_manifest(out.read_bytes("keys", f"{shard}.parquet"))
    signed = commitments.get(shard)
    if not signed:
        raise RestoreError(
            f"keys/{shard}.parquet is not in the row lists the job signed (job.manifests): "
            "a foreign or planted manifest"
        )
    got = manifest.commitment()
    if got not in signed:
        want = signed[-1]
        raise RestoreError(
            f"keys/{shard}.parquet differs from the row list the job signed ({got['rows']} rows "
            f"of {got['samples']} samples, signed {want['rows']} of {want['samples']}): "
            "rows were dropped, added, moved or altered"
        )
    if manifest.escrow_id not in escrow.escrow_ids:
        raise EscrowError(f"keys/{shard}.parquet was sealed under a key epoch escrow.json lacks")
    return manifest


def sample_refs(
    out: Location,
    escrow: Escrow,
    wanted: Iterable[str] | None,
    commitments: Mapping[str, list[dict]],
) -> list[SampleRef]:
    """The requested samples (``None``: all) with their wrapped keys; RestoreError naming how
    many are in no manifest."""
    wanted_set = None if wanted is None else set(wanted)
    refs: dict[str, SampleRef] = {}
    for shard in manifest_names(out):
        manifest = load_checked(out, shard, escrow, commitments)
        for row in manifest.rows:
            if row.face >= 0 or (wanted_set is not None and row.sample_id not in wanted_set):
                continue
            if row.sample_id in refs:
                raise RestoreError(f"sample {row.sample_id!r} appears in two key manifests")
            refs[row.sample_id] = SampleRef(
                shard, row.sample_id, manifest.escrow_id, row.wrapped_key or b""
            )
    if wanted_set is not None and wanted_set - set(refs):
        missing = sorted(wanted_set - set(refs))
        raise RestoreError(
            f"{len(missing)} requested sample(s) are in no key manifest of this job, e.g. "
            f"{missing[0]!r}"
        )
    return [refs[k] for k in sorted(refs)]


def kms_data_keys(
    out: Location, escrow: Escrow, refs: Iterable[SampleRef], kms: KmsClient
) -> dict[tuple[str, str], bytes]:
    """Data keys of ``refs`` under a KMS escrow: one KMS Decrypt per shard they touch."""
    policy = escrow.policy
    if not isinstance(policy, KmsPolicy):
        raise EscrowError("this escrow is not a KMS escrow")
    shard_keys: dict[str, bytes] = {}
    out_keys = {}
    for ref in refs:
        if ref.shard not in shard_keys:
            manifest = load_key_manifest(out.read_bytes("keys", f"{ref.shard}.parquet"))
            where = ShardRef(escrow.job_id, ref.escrow_id, ref.shard)
            shard_keys[ref.shard] = kms_open_shard_key(kms, policy, where, manifest.kms_blob)
        label = escrow.epoch(ref.escrow_id).label(ref.shard, ref.sample_id)
        out_keys[(ref.shard, ref.sample_id)] = kms_data_key(
            shard_keys[ref.shard], escrow.job_id, label
        )
    return out_keys


# ---- opening rows and rebuilding originals ------------------------------------------------------


def iter_images(
    out: Location, shard: str, max_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, bytes) of each image in ``data/SHARD.tar``, streamed (the shard reader of
    :mod:`jobs.shardio`); a member it refuses (sparse, not a file, too large) stops the read.
    A Parquet output's ``data/SHARD.parquet`` is read whole."""
    if not out.exists("data", f"{shard}.tar"):
        if out.exists("data", f"{shard}.parquet"):
            with out.fs.open(out.path("data", f"{shard}.parquet"), "rb") as f:
                try:
                    for key, ext, data, _ in parquet_samples(f):
                        yield key, ext, data
                except (ValueError, OSError, KeyError) as exc:
                    raise RestoreError(f"data/{shard}.parquet: {exc}") from None
        return
    with out.fs.open(out.path("data", f"{shard}.tar"), "rb") as f:
        for sample in iter_samples(f, max_bytes):
            if sample.refused:
                raise RestoreError(f"data/{shard}.tar: {sample.refused}")
            for ext, data in sample.members.items():
                if ext.lower() in IMAGE_MEMBER_EXTS:
                    yield sample.sample_id, ext.lower(), data


def open_v2_row(data_key: bytes, job_id: str, shard: str, row: KeyRow, anon_sha256: str) -> Payload:
    """Decrypt and parse one format-2 row; DecryptionError on any mismatch."""
    aad = row_aad(job_id, shard, row, anon_sha256)
    what = f"row key={row.sample_id!r} face={row.face} of {shard!r}"
    payload = Payload.from_bytes(open_row(data_key, aad, row.nonce, row.ciphertext, what))
    if (row.face >= 0) != (payload.kind is PayloadKind.FACE_PNG):
        raise DecryptionError(f"{what}: payload kind does not match")
    return payload


RowOpener = Callable[[KeyRow, str], Payload]


def ext_of(uri: str) -> str:
    """The file extension a restored original gets (from its source URI)."""
    suffix = PurePosixPath(urlparse(uri).path).suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "bin"


def paste_faces(image: bytes, faces: list[tuple[KeyRow, Payload]]) -> bytes:
    """The anonymized ``image`` with each sealed face region put back, as PNG."""
    with Image.open(io.BytesIO(image)) as img:
        canvas = np.array(img.convert("RGB"))
    height, width = canvas.shape[:2]
    for row, payload in faces:
        x1, y1, x2, y2 = row.bbox or (0, 0, 0, 0)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise RestoreError(f"sample {row.sample_id!r} face {row.face}: bbox outside the image")
        with Image.open(io.BytesIO(payload.data)) as face:
            if face.mode not in ("RGB", "L"):
                raise RestoreError(
                    f"sample {row.sample_id!r} face {row.face}: face PNG is {face.mode}"
                )
            patch = np.array(face.convert("RGB"))
        if patch.shape != (y2 - y1, x2 - x1, 3):
            raise RestoreError(
                f"sample {row.sample_id!r} face {row.face}: face size differs from bbox"
            )
        canvas[y1:y2, x1:x2] = patch
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def rebuild(
    opener: RowOpener, shard: str, key: str, rows: list[KeyRow], image: bytes | None
) -> tuple[str, bytes, str]:
    """(extension, bytes, source URI) of one restored original."""
    if not _SAFE_KEY.fullmatch(key):
        raise RestoreError("a sample id in the manifest is not a plain name")
    if not any(row.face < 0 for row in rows):
        raise RestoreError(f"sample {key!r} of {shard}: its whole-sample row is missing")
    sha = hashlib.sha256(image).hexdigest() if image is not None else EMPTY_SHA256
    opened = [(row, opener(row, sha)) for row in sorted(rows, key=lambda r: r.face)]
    whole = [payload for row, payload in opened if row.face < 0][0]
    if whole.kind is PayloadKind.ORIGINAL_FILE:
        return ext_of(whole.source_uri), whole.data, whole.source_uri
    if image is None:
        raise RestoreError(
            f"sample {key!r}: no anonymized image in data/{shard}.tar and no sealed original file"
        )
    faces = [(row, payload) for row, payload in opened if row.face >= 0]
    return "png", paste_faces(image, faces), whole.source_uri


def restore_samples(
    ctx: RestoreContext,
    refs: list[SampleRef],
    data_keys: Mapping[tuple[str, str], bytes],
    staging: Path,
) -> dict[str, tuple[str, str]]:
    """Open and rebuild exactly ``refs`` into ``staging``; sample id -> (file name,
    source URI).

    Each manifest touched must match the row list the job signed.
    """
    out, escrow = ctx.out, ctx.escrow
    by_shard: dict[str, list[SampleRef]] = {}
    for ref in refs:
        by_shard.setdefault(ref.shard, []).append(ref)
    restored = {}
    for shard, shard_refs in sorted(by_shard.items()):
        manifest = load_checked(out, shard, escrow, ctx.commitments)
        keys = {ref.sample_id for ref in shard_refs}
        rows: dict[str, list[KeyRow]] = {}
        for row in manifest.rows:
            if row.sample_id in keys:
                rows.setdefault(row.sample_id, []).append(row)
        images = {k: data for k, _, data in iter_images(out, shard) if k in keys}
        for ref in shard_refs:
            data_key = data_keys[(shard, ref.sample_id)]

            def opener(row: KeyRow, sha: str, dk: bytes = data_key, at: str = shard) -> Payload:
                return open_v2_row(dk, escrow.job_id, at, row, sha)

            ext, data, uri = rebuild(
                opener, shard, ref.sample_id, rows.get(ref.sample_id, []), images.get(ref.sample_id)
            )
            write_private_file(staging / f"{ref.sample_id}.{ext}", data, overwrite=True)
            restored[ref.sample_id] = (f"{ref.sample_id}.{ext}", uri)
    return restored


def publish_restored(staging: Path, dest: Path, restored: dict[str, tuple[str, str]]) -> None:
    """Move the staged originals into ``dest`` and merge ``dest/restored.json`` (sample id ->
    source URI)."""
    for name, _ in restored.values():
        os.replace(staging / name, dest / name)
    index_path = dest / "restored.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    index.update({key: uri for key, (_, uri) in restored.items()})
    data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    write_private_file(index_path, data, overwrite=True)


def restore_into(
    dest: Path,
    request_id: str,
    rebuild: Callable[[Path], dict[str, tuple[str, str]]],
    record: Callable[[int], object],
) -> tuple[int, object]:
    """Rebuild originals into a private staging folder inside ``dest`` (``rebuild(staging)``),
    record the apply (``record(count)``, its result returned), then publish them with
    ``restored.json``. Nothing is left in ``dest`` when anything fails: the staging folder is
    removed, and ``dest`` too when this call created it and published nothing."""
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = dest / f".restore-{request_id}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        restored = rebuild(staging)
        recorded = record(len(restored))
        publish_restored(staging, dest, restored)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not (dest / "restored.json").exists():
            shutil.rmtree(dest, ignore_errors=True)
    return len(restored), recorded
