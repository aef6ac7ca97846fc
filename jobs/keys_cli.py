"""The ``faceveil`` key subcommands: custodian keygen, restore, audit verify, escrow reshare/rekey.

:func:`add_key_commands` adds them to the top-level subparsers; every handler is set as
``handler`` (and ``func``), takes the parsed ``args`` and returns an exit code. Output trees
are read and written through fsspec (local paths or ``s3://``); restored originals go to a
local folder.
:class:`OutTree` and :func:`append_audit` are also what ``faceveil run`` uses to publish
``escrow.json`` and to append signed audit entries.

A job's escrow may hold several key epochs (one per run: first run and each resume). Every
command works on all of them at once: a restore recovers every epoch's master key and opens each
``keys/shard-*.parquet`` with the envelope of the epoch it records; a reshare re-splits every
epoch; a rekey re-seals every manifest under one new epoch. A manifest that names an epoch
``escrow.json`` does not hold stops the command before anything is decrypted or written.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from manifests.audit import AuditTail, AuditWriter, declared_keys, key_id, verify
from manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
    b64d,
    b64e,
    keygen,
    read_passphrase,
    write_private_file,
)
from manifests.envelope import EMPTY_SHA256, Envelope, MasterKey, Payload, PayloadKind
from manifests.errors import AuditError, EscrowError, KeyLibraryError, RestoreError
from manifests.escrow import Escrow, make_kms_client, rekey, reshare
from manifests.jobkeys import custodian_details, parse_kms_spec
from manifests.keymanifest import (
    KeyRow,
    key_manifest_bytes,
    key_manifest_epoch,
    load_key_manifest,
    open_row,
    reencrypt_rows,
)
from manifests.restore import (
    Approval,
    RestoreRequest,
    approve,
    check_request,
    create_request,
    load_request_key,
    recover_masters,
)

log = logging.getLogger(__name__)

REKEY_DIR = "_rekey"
IMAGE_EXTS = frozenset({"png", "jpg", "jpeg"})
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


# ---- the output tree ---------------------------------------------------------------------------


class OutTree:
    """A job's output tree at a local path or an fsspec URL (``s3://bucket/out``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    @property
    def is_local(self) -> bool:
        """True for a local file system (atomic rename and file locks are available)."""
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """The file system path of ``rel`` inside the tree."""
        return posixpath.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        return self.fs.exists(self.path(rel))

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``."""
        return self.fs.cat_file(self.path(rel))

    def glob(self, pattern: str) -> list[str]:
        """Sorted paths, relative to the tree, matching ``pattern``."""
        root = self.root.rstrip("/")
        return sorted(posixpath.relpath(p, root) for p in self.fs.glob(self.path(pattern)))

    def write(self, rel: str, data: bytes) -> None:
        """Publish ``data`` at ``rel`` atomically (rename locally, one PUT on object stores)."""
        path = self.path(rel)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(6)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove_tree(self, rel: str) -> None:
        """Delete ``rel`` recursively if it exists."""
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    def escrow(self) -> Escrow:
        """``escrow.json``, checked against ``job.json``'s job id."""
        escrow = Escrow.loads(self.read("escrow.json"))
        job_id = json.loads(self.read("job.json"))["job_id"]
        if escrow.job_id != job_id:
            raise EscrowError("escrow.json belongs to another job than job.json")
        return escrow


def append_audit(tree: OutTree, writer: AuditWriter, action: str, details: Mapping) -> AuditTail:
    """Append one signed entry to ``audit.jsonl`` (under a file lock when local)."""
    if not tree.is_local:
        old = tree.read("audit.jsonl") if tree.exists("audit.jsonl") else b""
        new, tail = writer.append(old, action, details)
        tree.fs.pipe_file(tree.path("audit.jsonl"), new)
        return tail
    path = tree.path("audit.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        old = f.read()
        new, tail = writer.append(old, action, details)
        f.write(new[len(old) :])
        f.flush()
        os.fsync(f.fileno())
    log.debug("audit entry %d (%s) appended", tail.seq, action)
    return tail


# (key, ext, bytes) of each image in ``data/SHARD.tar``, streamed, never extracted.
def _iter_images(tree: OutTree, shard: str) -> Iterator[tuple[str, str, bytes]]:
    rel = f"data/{shard}.tar"
    if not tree.exists(rel):
        return
    with tree.fs.open(tree.path(rel), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, base = posixpath.split(member.name)
            stem, _, ext = base.partition(".")
            if ext.lower() in IMAGE_EXTS:
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield posixpath.join(folder, stem), ext.lower(), data


# The key epoch manifest ``rel`` records; EscrowError unless ``escrow`` holds it.
def _epoch_of(escrow: Escrow, rel: str, escrow_id: str | None) -> str:
    if escrow_id is None:
        raise EscrowError(
            f"{rel} records no key epoch (faceveil.escrow_id): it cannot be "
            "matched to a master key of escrow.json"
        )
    if escrow_id not in escrow.escrow_ids:
        raise EscrowError(
            f"{rel} was sealed under key epoch {escrow_id}, which escrow.json does "
            "not hold (a lost or overwritten escrow.json, or a foreign manifest)"
        )
    return escrow_id


# shard -> (key epoch, sample key -> rows), every manifest's epoch checked before any decryption.
def _rows_by_shard(
    tree: OutTree, escrow: Escrow, wanted: set[str] | None
) -> dict[str, tuple[str, dict[str, list[KeyRow]]]]:
    found: dict[str, tuple[str, dict[str, list[KeyRow]]]] = {}
    seen: set[str] = set()
    for rel in tree.glob("keys/shard-*.parquet"):
        shard = PurePosixPath(rel).stem
        manifest = load_key_manifest(tree.read(rel))
        escrow_id = _epoch_of(escrow, rel, manifest.escrow_id)
        grouped: dict[str, list[KeyRow]] = {}
        for row in manifest.rows:
            if wanted is None or row.key in wanted:
                grouped.setdefault(row.key, []).append(row)
        if seen & set(grouped):
            raise RestoreError(f"a sample appears in two key manifests (at {shard})")
        seen |= set(grouped)
        if grouped:
            found[shard] = (escrow_id, grouped)
    if wanted is not None and wanted - seen:
        missing = sorted(wanted - seen)
        raise RestoreError(
            f"{len(missing)} requested sample(s) are in no key manifest, e.g. {missing[0]!r}"
        )
    return found


# ---- rebuilding originals ----------------------------------------------------------------------


def _ext_of(uri: str) -> str:
    suffix = PurePosixPath(urlparse(uri).path).suffix.lower().lstrip(".")
    return suffix if re.fullmatch(r"[a-z0-9]{1,5}", suffix) else "bin"


def _paste_faces(image: bytes, faces: list[tuple[KeyRow, Payload]]) -> bytes:
    with Image.open(io.BytesIO(image)) as img:
        canvas = np.array(img.convert("RGB"))
    height, width = canvas.shape[:2]
    for row, payload in faces:
        x1, y1, x2, y2 = row.bbox or (0, 0, 0, 0)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise RestoreError(f"sample {row.key!r} face {row.face}: bbox outside the image")
        with Image.open(io.BytesIO(payload.data)) as face:
            if face.mode not in ("RGB", "L"):
                raise RestoreError(f"sample {row.key!r} face {row.face}: face PNG is {face.mode}")
            patch = np.array(face.convert("RGB"))
        if patch.shape != (y2 - y1, x2 - x1, 3):
            raise RestoreError(f"sample {row.key!r} face {row.face}: face size differs from bbox")
        canvas[y1:y2, x1:x2] = patch
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


# (extension, bytes, source URI) of one restored original.
def _rebuild(
    envelope: Envelope, shard: str, key: str, rows: list[KeyRow], image: bytes | None
) -> tuple[str, bytes, str]:
    if not _SAFE_KEY.fullmatch(key):
        raise RestoreError("a sample key in the manifest is not a plain name")
    sha = hashlib.sha256(image).hexdigest() if image is not None else EMPTY_SHA256
    opened = [(row, open_row(envelope, shard, row, sha)) for row in sorted(rows, key=_face)]
    whole = [payload for row, payload in opened if row.face < 0]
    uri = (whole or [payload for _, payload in opened])[0].source_uri
    if whole and whole[0].kind is PayloadKind.ORIGINAL_FILE:
        return _ext_of(uri), whole[0].data, uri
    if image is None:
        raise RestoreError(
            f"sample {key!r}: no anonymized image in data/{shard}.tar and no sealed original file"
        )
    faces = [(row, payload) for row, payload in opened if row.face >= 0]
    return "png", _paste_faces(image, faces), uri


def _face(row: KeyRow) -> int:
    return row.face


# Decrypt every requested sample into ``staging``; key -> (file name, source URI).
def _restore_to(
    tree: OutTree,
    escrow: Escrow,
    envelopes: Mapping[str, Envelope],
    request: RestoreRequest,
    staging: Path,
) -> dict[str, tuple[str, str]]:
    wanted = None if request.samples is None else set(request.samples)
    restored = {}
    for shard, (escrow_id, groups) in _rows_by_shard(tree, escrow, wanted).items():
        images = {key: data for key, _, data in _iter_images(tree, shard) if key in groups}
        for key, rows in groups.items():
            ext, data, uri = _rebuild(envelopes[escrow_id], shard, key, rows, images.get(key))
            write_private_file(staging / f"{key}.{ext}", data, overwrite=True)
            restored[key] = (f"{key}.{ext}", uri)
    return restored


def _publish(staging: Path, dest: Path, restored: dict[str, tuple[str, str]]) -> None:
    for name, _ in restored.values():
        os.replace(staging / name, dest / name)
    index_path = dest / "restored.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    index.update({key: uri for key, (_, uri) in restored.items()})
    data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    write_private_file(index_path, data, overwrite=True)


# ---- recovering the master key -----------------------------------------------------------------


def _load_request(path: str) -> RestoreRequest:
    return RestoreRequest.loads(Path(path).read_bytes())


def _refuse_pending_rekey(tree: OutTree) -> None:
    if tree.exists(f"{REKEY_DIR}/COMPLETE"):
        raise EscrowError(
            "an interrupted rekey is pending: run 'faceveil escrow rekey OUT --finish' first"
        )


# Every epoch's checked master key for ``request``: from approvals, or from KMS.
def _recover(
    args: argparse.Namespace, escrow: Escrow, request: RestoreRequest, purpose: str
) -> tuple[dict[str, MasterKey], list[Approval]]:
    if escrow.scheme == "kms":
        check_request(escrow, request, purpose)
        if args.approvals:
            log.warning("KMS escrow: approvals are not used; access is KMS key policy")
        return escrow.unwrap_kms(make_kms_client(escrow.key_arn, args.kms_endpoint)), []
    approvals = [Approval.loads(Path(p).read_bytes()) for p in args.approvals]
    key_path = Path(args.request_key or Path(args.request).with_suffix(".key"))
    passphrase = read_passphrase(args.passphrase_file, "Passphrase of the request key: ")
    request_key = load_request_key(request, key_path.read_bytes(), passphrase)
    return recover_masters(escrow, request, request_key, approvals, purpose), approvals


def _approval_details(request: RestoreRequest, approvals: list[Approval]) -> dict:
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "revision": request.revision,
        "epochs": list(request.epochs),
        "purpose": request.purpose,
        "requester": request.requester,
        "reason": request.reason,
        "approvals": [
            {
                "custodian": a.custodian,
                "fingerprint": a.fingerprint,
                "approval_sha256": hashlib.sha256(a.dumps()).hexdigest(),
            }
            for a in approvals
        ],
    }


# The job's long-lived signing key (the first epoch's), for entries written after recovery.
def _job_writer(
    escrow: Escrow, masters: Mapping[str, MasterKey], request: RestoreRequest
) -> AuditWriter:
    return AuditWriter(escrow.audit_signing_key(masters), f"requester:{request.requester}")


def _envelopes(escrow: Escrow, masters: Mapping[str, MasterKey]) -> dict[str, Envelope]:
    return {eid: Envelope(masters[eid], escrow.job_id, eid) for eid in escrow.escrow_ids}


# ---- handlers ----------------------------------------------------------------------------------


# Turn the library's errors into one ``error:`` line on stderr and exit code 1.
def _handler(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyLibraryError, OSError, ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


@_handler
def cmd_custodian_keygen(args: argparse.Namespace) -> int:
    """``faceveil custodian keygen --name NAME --out DIR``."""
    passphrase = read_passphrase(
        args.passphrase_file, f"Passphrase for {args.name}'s key: ", confirm=True
    )
    pub, key = keygen(args.name, args.out, passphrase, ScryptParams(n=2**args.kdf_work))
    print(
        f"public key:  {pub}\nprivate key: {key} (mode 0600)\n"
        f"fingerprint: {CustodianPublic.load(pub).fingerprint}"
    )
    return 0


def _requested_samples(args: argparse.Namespace) -> list[str] | None:
    if args.all:
        return None
    samples = list(args.samples or [])
    if args.samples_file:
        lines = Path(args.samples_file).read_text(encoding="utf-8").splitlines()
        samples += [line.strip() for line in lines if line.strip()]
    if args.purpose == "restore" and not samples:
        raise ValueError("name samples (--samples, --samples-file) or ask for --all")
    return samples


@_handler
def cmd_restore_request(args: argparse.Namespace) -> int:
    """``faceveil restore request OUT ... --out req.json``: a request and its key file."""
    escrow = OutTree(args.out_tree).escrow()
    samples = _requested_samples(args)
    passphrase = read_passphrase(
        args.passphrase_file, "New passphrase for the request key: ", confirm=True
    )
    request, key_file = create_request(
        escrow,
        args.purpose,
        samples,
        args.reason,
        args.requester,
        passphrase,
        timedelta(days=args.valid_days),
        params=ScryptParams(n=2**args.kdf_work),
    )
    key_out = Path(args.key_out or Path(args.out).with_suffix(".key"))
    write_private_file(key_out, key_file)
    Path(args.out).write_bytes(request.dumps())
    print(
        f"request {request.request_id} ({request.purpose}) written to {args.out}\n"
        f"request sha256: {request.sha256()}\nrequest key: {key_out} (keep it; mode 0600)"
    )
    return 0


def _confirm(request: RestoreRequest, escrow: Escrow) -> bool:
    count = "all samples" if request.samples is None else f"{len(request.samples)} sample(s)"
    print(
        f"Request {request.request_id} by {request.requester!r}: {request.purpose} of {count}\n"
        f"Reason: {request.reason}\nJob {escrow.job_id}, expires {request.expires}\n"
        f"Key epochs: {len(escrow.epochs)} (your share of each is re-sealed to the request)\n"
        f"Job signing keys: {', '.join(escrow.audit_keys())}"
    )
    try:
        return input("Approve this request? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


@_handler
def cmd_restore_approve(args: argparse.Namespace) -> int:
    """``faceveil restore approve OUT req.json --key NAME.key --out NAME.approval``."""
    tree = OutTree(args.out_tree)
    escrow, request = tree.escrow(), _load_request(args.request)
    custodian = CustodianPrivate.load(
        args.key,
        read_passphrase(args.passphrase_file, f"Passphrase for {Path(args.key).stem}'s key: "),
    )
    check_request(escrow, request, request.purpose)
    if not args.yes and not _confirm(request, escrow):
        print("not approved", file=sys.stderr)
        return 1
    approval = approve(escrow, request, custodian)
    if not args.no_audit:
        writer = AuditWriter(custodian.ed25519, f"custodian:{custodian.name}")
        details = _approval_details(request, [approval])
        tail = append_audit(tree, writer, "restore.approve", details)
        print(f"audit tail: {tail}")
    Path(args.out).write_bytes(approval.dumps())
    print(f"approval of request {request.request_id} by {custodian.name} written to {args.out}")
    return 0


@_handler
def cmd_restore_apply(args: argparse.Namespace) -> int:
    """``faceveil restore apply OUT req.json APPROVAL... --dest DIR``."""
    tree = OutTree(args.out_tree)
    _refuse_pending_rekey(tree)
    escrow, request = tree.escrow(), _load_request(args.request)
    masters, approvals = _recover(args, escrow, request, "restore")
    writer = _job_writer(escrow, masters, request)
    details = _approval_details(request, approvals)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = dest / f".restore-{request.request_id}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        restored = _restore_to(tree, escrow, _envelopes(escrow, masters), request, staging)
        details["restored"] = len(restored)
        tail = append_audit(tree, writer, "restore.apply", details)
        _publish(staging, dest, restored)
    except KeyLibraryError as exc:
        append_audit(tree, writer, "restore.failed", details | {"error": str(exc)})
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"restored {len(restored)} sample(s) into {dest} (index: restored.json)\naudit tail: {tail}"
    )
    return 0


# The job signing keys to trust as roots: every epoch's (escrow.json), else job.json's.
def _root_job_keys(tree: OutTree) -> tuple[dict[str, bytes], dict[str, bytes], dict]:
    roots: dict[str, bytes] = {}
    signers: dict[str, bytes] = {}
    if tree.exists("escrow.json"):
        escrow = Escrow.loads(tree.read("escrow.json"))
        roots, signers = escrow.audit_keys(), escrow.signers()
    audit = json.loads(tree.read("job.json")).get("audit", {}) if tree.exists("job.json") else {}
    if not roots and audit.get("public_key"):
        public = b64d(audit["public_key"], "job.json audit public key", 32)
        roots = {key_id(public): public}
    if not roots:
        raise AuditError("neither escrow.json nor job.json names a job signing key")
    return roots, signers, audit


def _check_pins(roots: Mapping[str, bytes], pinned: Iterable[str] | None) -> None:
    if pinned:
        for n, kid in enumerate(roots, start=1):
            if kid not in pinned:
                raise AuditError(
                    f"the job signing key of key epoch {n}, {kid}, is not pinned (--job-key)"
                )


# Trusted signers (job keys of every epoch, declared keys, custodians), the job keys' ids, and
# the tail job.json recorded.
def _trusted_keys(
    tree: OutTree, log_bytes: bytes, pinned: list[str] | None
) -> tuple[dict[str, bytes], list[str], str | None]:
    roots, signers, audit = _root_job_keys(tree)
    _check_pins(roots, pinned)
    declared = declared_keys(log_bytes, roots.values())
    if audit.get("public_key"):
        public = b64d(audit["public_key"], "job.json audit public key", 32)
        if key_id(public) not in roots and key_id(public) not in declared:
            raise AuditError("job.json's audit key is not a job signing key of escrow.json")
    trusted = {**signers, **declared, **roots}
    return trusted, list(roots), audit.get("tail")


@_handler
def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``faceveil audit verify OUT``: chain, order, signatures and the recorded tail."""
    tree = OutTree(args.out_tree)
    log_bytes = tree.read("audit.jsonl")
    trusted, job_keys, recorded = _trusted_keys(tree, log_bytes, args.job_key)
    tail_text = args.expect_tail or recorded
    expected = AuditTail.parse(tail_text) if tail_text else None
    tail = verify(log_bytes, trusted, expected)
    print(
        f"audit log OK: {tail.seq} entries, tail {tail}, job signing key(s) "
        f"{', '.join(job_keys)}"
        + ("" if expected else "\nwarning: no recorded tail, trailing lines could be missing")
    )
    return 0


@_handler
def cmd_escrow_reshare(args: argparse.Namespace) -> int:
    """``faceveil escrow reshare OUT req.json APPROVAL... --custodians PUB... --threshold M``."""
    tree = OutTree(args.out_tree)
    _refuse_pending_rekey(tree)
    escrow, request = tree.escrow(), _load_request(args.request)
    masters, approvals = _recover(args, escrow, request, "reshare")
    custodians = [CustodianPublic.load(p) for p in args.custodians]
    new = reshare(escrow, masters, custodians, args.threshold)
    details = _approval_details(request, approvals) | {
        "old_revision": escrow.revision,
        "new_revision": new.revision,
        "threshold": new.threshold,
        "custodians": custodian_details(custodians),
    }
    tail = append_audit(tree, _job_writer(escrow, masters, request), "escrow.reshare", details)
    tree.write("escrow.json", new.dumps())
    print(
        f"escrow reshared {new.threshold}-of-{len(custodians)} ({len(new.epochs)} key "
        f"epoch(s), revision {new.revision})\naudit tail: {tail}"
    )
    return 0


# Write every manifest re-sealed under ``new`` and the new escrow under ``_rekey/``, COMPLETE
# last. Each manifest is opened with the envelope of the epoch it records.
def _stage_rekey(
    tree: OutTree, escrow: Escrow, old: Mapping[str, Envelope], new: Envelope, new_escrow: Escrow
) -> None:
    rels = tree.glob("keys/shard-*.parquet")
    for rel in rels:
        with tree.fs.open(tree.path(rel), "rb") as f:
            _epoch_of(escrow, rel, key_manifest_epoch(f))
    tree.remove_tree(REKEY_DIR)
    plan: dict = {"new_escrow_id": new_escrow.escrow_ids[0], "manifests": {}}
    for rel in rels:
        shard = PurePosixPath(rel).stem
        old_bytes = tree.read(rel)
        manifest = load_key_manifest(old_bytes)
        envelope = old[_epoch_of(escrow, rel, manifest.escrow_id)]
        shas = {key: hashlib.sha256(data).hexdigest() for key, _, data in _iter_images(tree, shard)}
        rows = reencrypt_rows(manifest.rows, shard, envelope, new, shas)
        new_bytes = key_manifest_bytes(rows, new.escrow_id)
        tree.write(f"{REKEY_DIR}/{rel}", new_bytes)
        plan["manifests"][rel] = {
            "old_sha256": hashlib.sha256(old_bytes).hexdigest(),
            "new_sha256": hashlib.sha256(new_bytes).hexdigest(),
        }
    tree.write(f"{REKEY_DIR}/escrow.json", new_escrow.dumps())
    tree.write(f"{REKEY_DIR}/COMPLETE", json.dumps(plan, indent=1).encode())


# Copy a complete ``_rekey/`` stage over the live files (idempotent), escrow.json last.
#
# A ``_done`` marker that records a manifest's old sha256 gets the new one.
def _publish_rekey(tree: OutTree) -> int:
    plan = json.loads(tree.read(f"{REKEY_DIR}/COMPLETE"))
    for rel, shas in sorted(plan["manifests"].items()):
        tree.write(rel, tree.read(f"{REKEY_DIR}/{rel}"))
        marker = f"_done/{PurePosixPath(rel).stem}.json"
        if tree.exists(marker):
            text = tree.read(marker).decode("utf-8")
            if shas["old_sha256"] in text:
                tree.write(marker, text.replace(shas["old_sha256"], shas["new_sha256"]).encode())
    tree.write("escrow.json", tree.read(f"{REKEY_DIR}/escrow.json"))
    tree.remove_tree(REKEY_DIR)
    return len(plan["manifests"])


def _rekey_policy(args: argparse.Namespace) -> dict:
    custodians = [CustodianPublic.load(p) for p in args.custodians] if args.custodians else None
    policy: dict = {"custodians": custodians, "threshold": args.threshold}
    if args.kms:
        arn = parse_kms_spec(args.kms)
        policy.update(key_arn=arn, kms=make_kms_client(arn, args.kms_endpoint))
    return policy


def _rekey_details(escrow: Escrow, new_escrow: Escrow) -> dict:
    return {
        "old_revision": escrow.revision,
        "old_epochs": list(escrow.escrow_ids),
        "new_revision": new_escrow.revision,
        "new_escrow_id": new_escrow.escrow_ids[0],
        "scheme": new_escrow.scheme,
        "threshold": new_escrow.threshold,
        "custodians": custodian_details(new_escrow.custodians),
        "audit_keys": [
            {"key_id": kid, "ed25519": b64e(public)} for kid, public in escrow.audit_keys().items()
        ],
    }


@_handler
def cmd_escrow_rekey(args: argparse.Namespace) -> int:
    """``faceveil escrow rekey OUT req.json APPROVAL...``: one new master key, manifests re-sealed.

    Every key epoch is replaced by one new epoch; the retired epochs' job signing keys are
    declared in the ``escrow.rekey`` entry so that their runs' entries stay verifiable.
    """
    tree = OutTree(args.out_tree)
    staged = tree.exists(f"{REKEY_DIR}/COMPLETE")
    if args.finish or staged:
        if not (args.finish and staged):
            raise EscrowError(
                "an interrupted rekey is pending: rerun with --finish"
                if staged
                else "--finish: no staged rekey to publish"
            )
        print(f"published the staged rekey ({_publish_rekey(tree)} manifests)")
        return 0
    if not args.request:
        raise ValueError("a rekey request (req.json) and its approvals are needed")
    escrow, request = tree.escrow(), _load_request(args.request)
    masters, approvals = _recover(args, escrow, request, "rekey")
    policy = _rekey_policy(args)
    if policy.get("kms") is None and escrow.scheme == "kms" and policy["custodians"] is None:
        policy["kms"] = make_kms_client(escrow.key_arn, args.kms_endpoint)
    new_master, new_escrow = rekey(escrow, masters, **policy)
    new_envelope = Envelope(new_master, escrow.job_id, new_escrow.escrow_ids[0])
    _stage_rekey(tree, escrow, _envelopes(escrow, masters), new_envelope, new_escrow)
    details = _approval_details(request, approvals) | _rekey_details(escrow, new_escrow)
    tail = append_audit(tree, _job_writer(escrow, masters, request), "escrow.rekey", details)
    count = _publish_rekey(tree)
    print(
        f"rekeyed: {count} manifests re-sealed, {len(escrow.epochs)} key epoch(s) replaced by "
        f"{new_escrow.escrow_ids[0]}\naudit tail: {tail}"
    )
    return 0


# ---- argument parsers --------------------------------------------------------------------------


def _passphrase_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="read the passphrase from the first line of FILE instead of a prompt",
    )


def _kdf_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kdf-work",
        type=int,
        default=17,
        metavar="LOG2N",
        help="scrypt cost as log2(N) (default 17 = 128 MiB; 10..22)",
    )


def _recovery_args(parser: argparse.ArgumentParser, request_required: bool = True) -> None:
    parser.add_argument("out_tree", metavar="OUT", help="job output tree (path or s3:// URL)")
    parser.add_argument(
        "request",
        metavar="REQUEST",
        nargs=None if request_required else "?",
        help="the request file (req.json)",
    )
    parser.add_argument("approvals", metavar="APPROVAL", nargs="*", help="custodian approvals")
    parser.add_argument(
        "--request-key",
        metavar="FILE",
        help="the request key file (default: REQUEST with suffix .key)",
    )
    parser.add_argument("--kms-endpoint", metavar="URL", help="KMS endpoint URL (KMS escrows)")
    _passphrase_arg(parser)


def _add_custodian(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("custodian", help="custodian keys").add_subparsers(
        dest="custodian_command", required=True
    )
    p = group.add_parser("keygen", help="make an X25519 + Ed25519 key pair for a custodian")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    _passphrase_arg(p)
    _kdf_arg(p)
    p.set_defaults(func=cmd_custodian_keygen, handler=cmd_custodian_keygen)


def _add_restore(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("restore", help="restore originals with M-of-N approval")
    actions = group.add_subparsers(dest="restore_command", required=True)
    p = actions.add_parser("request", help="ask custodians to recover the key")
    p.add_argument("out_tree", metavar="OUT")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--samples", nargs="+", metavar="KEY")
    which.add_argument("--samples-file", metavar="FILE", help="one sample key per line")
    which.add_argument("--all", action="store_true", help="every sample of the job")
    p.add_argument("--purpose", choices=("restore", "reshare", "rekey"), default="restore")
    p.add_argument("--reason", required=True)
    p.add_argument("--requester", required=True)
    p.add_argument("--valid-days", type=float, default=7.0)
    p.add_argument("--out", required=True, metavar="REQ.json")
    p.add_argument("--key-out", metavar="FILE", help="request key file (default: OUT.key)")
    _passphrase_arg(p)
    _kdf_arg(p)
    p.set_defaults(func=cmd_restore_request, handler=cmd_restore_request)
    p = actions.add_parser("approve", help="approve a request as one custodian")
    p.add_argument("out_tree", metavar="OUT")
    p.add_argument("request", metavar="REQUEST")
    p.add_argument("--key", required=True, metavar="NAME.key")
    p.add_argument("--out", required=True, metavar="NAME.approval")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--no-audit", action="store_true", help="do not append to OUT/audit.jsonl")
    _passphrase_arg(p)
    p.set_defaults(func=cmd_restore_approve, handler=cmd_restore_approve)
    p = actions.add_parser("apply", help="recover the key and write the originals")
    _recovery_args(p)
    p.add_argument("--dest", required=True, metavar="DIR")
    p.set_defaults(func=cmd_restore_apply, handler=cmd_restore_apply)


def _add_audit_and_escrow(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="audit log").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit.add_parser("verify", help="verify OUT/audit.jsonl")
    p.add_argument("out_tree", metavar="OUT")
    p.add_argument("--expect-tail", metavar="SEQ:SHA256", help="the tail recorded out of band")
    p.add_argument(
        "--job-key",
        metavar="ID",
        action="append",
        help="pin a job signing key id (ed25519:...); repeat for every key epoch: "
        "a job key of escrow.json that is not pinned fails",
    )
    p.set_defaults(func=cmd_audit_verify, handler=cmd_audit_verify)
    escrow = sub.add_parser("escrow", help="escrow maintenance").add_subparsers(
        dest="escrow_command", required=True
    )
    p = escrow.add_parser("reshare", help="same key, new custodians or threshold")
    _recovery_args(p)
    p.add_argument("--custodians", nargs="+", required=True, metavar="PUB")
    p.add_argument("--threshold", type=int, required=True)
    p.set_defaults(func=cmd_escrow_reshare, handler=cmd_escrow_reshare)
    p = escrow.add_parser("rekey", help="new master key; manifests re-encrypted")
    _recovery_args(p, request_required=False)
    p.add_argument("--custodians", nargs="+", metavar="PUB")
    p.add_argument("--threshold", type=int)
    p.add_argument("--kms", metavar="aws-kms:ARN")
    p.add_argument("--finish", action="store_true", help="publish an interrupted rekey")
    p.set_defaults(func=cmd_escrow_rekey, handler=cmd_escrow_rekey)


def add_key_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``custodian``, ``restore``, ``audit`` and ``escrow`` to the CLI's subparsers."""
    _add_custodian(subparsers)
    _add_restore(subparsers)
    _add_audit_and_escrow(subparsers)


def main(argv: list[str] | None = None) -> int:
    """Run the key subcommands alone (``python -m jobs.keys_cli``)."""
    parser = argparse.ArgumentParser(prog="faceveil")
    add_key_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
