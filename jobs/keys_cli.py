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

The restore workflow as the user runs it::

    faceveil restore request OUT --key SAMPLEKEY... | --all --reason R > req.json
    faceveil restore approve req.json --identity alice.key > alice.approval   # offline
    faceveil restore apply OUT req.json alice.approval bob.approval --dest restored/

``request`` writes the request (with a copy of ``escrow.json``) to stdout or ``--out`` and its
private key to ``./REQUEST_ID.key``; ``approve`` needs only the request and the custodian's key
file, and asks for confirmation on the terminal (``/dev/tty``) unless ``--yes``; ``apply`` checks
the request's escrow copy against ``OUT/escrow.json`` and, once the key is recovered, records the
request and each approval (with its custodian's signed statement) in the audit log, then the
apply. Messages go to stderr wherever stdout carries a document.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import getpass
import hashlib
import io
import json
import logging
import os
import posixpath
import re
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

from jobs.storage import publish_local
from manifests.audit import AuditTail, AuditWriter, declared_keys, key_id, verify
from manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    ScryptParams,
    b64d,
    b64e,
    canonical_json,
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
    check_statement,
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
        """Publish ``data`` at ``rel`` atomically (0600 temp + rename locally, one PUT on S3)."""
        path = self.path(rel)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        publish_local(path, lambda f: f.write(data))  # mkstemp: 0600, also on a rewrite

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


# The request file and approval files of a recovering command: positional (OUT REQ APPROVAL...)
# or flags (--request REQ --approvals APPROVAL...), not both.
def _recovery_inputs(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    if args.request_pos and args.request_opt:
        raise ValueError("give the request once: as REQUEST or as --request, not both")
    if args.approvals_pos and args.approvals_opt:
        raise ValueError("give the approvals once: after REQUEST or after --approvals, not both")
    return args.request_pos or args.request_opt, list(args.approvals_pos or args.approvals_opt)


# The requester key file: --request-key, else ./ID.key, else ID.key or REQ.key beside REQ.
def _request_key_path(args: argparse.Namespace, request: RestoreRequest, request_path: str) -> Path:
    if args.request_key:
        return Path(args.request_key)
    beside = Path(request_path)
    candidates = [
        Path(f"{request.request_id}.key"),
        beside.with_name(f"{request.request_id}.key"),
        beside.with_suffix(".key"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(
        f"no request key file ({request.request_id}.key in this folder or beside {request_path}); "
        "pass --request-key FILE"
    )


def _has_tty() -> bool:
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def _passphrase(path: str | None, prompt: str, confirm: bool = False) -> str:
    """A passphrase from ``--passphrase-file`` or the terminal; never from stdin."""
    if path is None and not _has_tty():
        raise ValueError("no terminal to ask for the passphrase on: pass --passphrase-file FILE")
    return read_passphrase(path, prompt, confirm)


# Every epoch's checked master key for ``request``: from approvals, or from KMS.
def _recover(
    args: argparse.Namespace,
    escrow: Escrow,
    request: RestoreRequest,
    request_path: str,
    approval_paths: list[str],
    purpose: str,
) -> tuple[dict[str, MasterKey], list[Approval]]:
    if escrow.scheme == "kms":
        check_request(escrow, request, purpose)
        if approval_paths:
            log.warning("KMS escrow: approvals are not used; access is KMS key policy")
        return escrow.unwrap_kms(make_kms_client(escrow.key_arn, args.kms_endpoint)), []
    approvals = [Approval.loads(Path(p).read_bytes()) for p in approval_paths]
    check_request(escrow, request, purpose)
    key_path = _request_key_path(args, request, request_path)
    passphrase = _passphrase(args.passphrase_file, "Passphrase of the request key: ")
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
                "approval_sha256": a.sha256(),
            }
            for a in approvals
        ],
    }


def _request_entry(request: RestoreRequest) -> dict:
    samples = None if request.samples is None else list(request.samples)
    digest = None if samples is None else hashlib.sha256(canonical_json(samples)).hexdigest()
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "purpose": request.purpose,
        "requester": request.requester,
        "reason": request.reason,
        "created": request.created,
        "expires": request.expires,
        "revision": request.revision,
        "epochs": list(request.epochs),
        "samples": "all" if samples is None else len(samples),
        "samples_sha256": digest,
    }


def _approval_entry(
    request: RestoreRequest, approval: Approval, custodian: CustodianPublic
) -> dict:
    """``restore.approve`` details: the approval's signed statement (no sealed shares) and the
    custodian's signature over it, which ``audit verify`` checks."""
    return {
        "request_id": request.request_id,
        "request_sha256": request.sha256(),
        "custodian": approval.custodian,
        "fingerprint": approval.fingerprint,
        "custodian_key_id": key_id(custodian.ed25519),
        "approval_sha256": approval.sha256(),
        "statement": approval.statement(),
        "custodian_signature": b64e(approval.signature),
    }


# sha256 of every request and approval the log already records (restore.request/.approve).
def _recorded(tree: OutTree) -> set[str]:
    if not tree.exists("audit.jsonl"):
        return set()
    field = {"restore.request": "request_sha256", "restore.approve": "approval_sha256"}
    seen = set()
    for line in tree.read("audit.jsonl").splitlines():
        try:
            entry = json.loads(line)
            seen.add(entry["details"][field[entry["action"]]])
        except (ValueError, KeyError, TypeError):
            continue
    return seen


def _record_request(
    tree: OutTree,
    escrow: Escrow,
    masters: Mapping[str, MasterKey],
    request: RestoreRequest,
    approvals: list[Approval],
) -> None:
    """Append ``restore.request`` and one ``restore.approve`` per approval (signed by the job
    key; each carries its custodian's signed statement), unless the log has them already."""
    seen = _recorded(tree)
    signing = escrow.audit_signing_key(masters)
    if request.sha256() not in seen:
        writer = AuditWriter(signing, f"requester:{request.requester}")
        append_audit(tree, writer, "restore.request", _request_entry(request))
    for approval in approvals:
        if approval.sha256() not in seen:
            custodian = escrow.custodian(approval.fingerprint)
            writer = AuditWriter(signing, f"custodian:{custodian.name}")
            details = _approval_entry(request, approval, custodian)
            append_audit(tree, writer, "restore.approve", details)


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
    passphrase = _passphrase(
        args.passphrase_file, f"Passphrase for {args.name}'s key: ", confirm=True
    )
    pub, key = keygen(args.name, args.out, passphrase, ScryptParams(n=2**args.kdf_work))
    print(
        f"public key:  {pub}\nprivate key: {key} (mode 0600)\n"
        f"fingerprint: {CustodianPublic.load(pub).fingerprint}"
    )
    return 0


def _requested_samples(args: argparse.Namespace) -> list[str] | None:
    samples = list(args.samples or [])
    if args.samples_file:
        lines = Path(args.samples_file).read_text(encoding="utf-8").splitlines()
        samples += [line.strip() for line in lines if line.strip()]
    if args.purpose != "restore":
        if samples:
            raise ValueError(f"a {args.purpose} request covers the whole job: use --all")
        return None
    if args.all:
        return None
    if not samples:
        raise ValueError("name samples (--key SAMPLEKEY, --samples-file FILE) or ask for --all")
    return samples


def _requester(args: argparse.Namespace) -> str:
    if args.requester:
        return args.requester
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise ValueError("cannot tell the OS user name: pass --requester NAME") from None


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _emit(data: bytes, out: str | None) -> str:
    """Write ``data`` to the file ``out``, or to stdout without one; returns where it went."""
    if out:
        Path(out).write_bytes(data)
        return out
    sys.stdout.write(data.decode("utf-8"))
    sys.stdout.flush()
    return "stdout"


@_handler
def cmd_restore_request(args: argparse.Namespace) -> int:
    """``faceveil restore request OUT --key SAMPLEKEY... | --all --reason R [--out REQ.json]``.

    The request (with a copy of escrow.json) goes to ``--out`` or stdout; its private key file
    to ``--key-out`` or ``./REQUEST_ID.key``; messages to stderr.
    """
    escrow = OutTree(args.out_tree).escrow()
    samples = _requested_samples(args)
    requester = _requester(args)
    passphrase = _passphrase(
        args.passphrase_file, "New passphrase for the request key: ", confirm=True
    )
    request, key_file = create_request(
        escrow,
        args.purpose,
        samples,
        args.reason,
        requester,
        passphrase,
        timedelta(days=args.valid_days),
        params=ScryptParams(n=2**args.kdf_work),
    )
    key_out = Path(args.key_out or f"{request.request_id}.key")
    write_private_file(key_out, key_file)
    where = _emit(request.dumps(), args.out)
    _say(
        f"request {request.request_id} ({request.purpose}) written to {where}\n"
        f"request sha256: {request.sha256()}\n"
        f"request key: {key_out} (mode 0600; keep it: 'restore apply' needs it)"
    )
    return 0


def _ask_tty(text: str) -> str:
    """Show ``text`` on the controlling terminal and read one answer line from it (never from
    stdin, which may be a pipe, nor to stdout, which may hold the approval)."""
    try:
        with open("/dev/tty", "r+", encoding="utf-8") as tty:
            tty.write(text)
            tty.flush()
            return tty.readline()
    except OSError:
        raise ValueError(
            "no terminal to confirm on: read the request, then approve it with --yes"
        ) from None


def _confirm(request: RestoreRequest) -> bool:
    escrow = request.escrow
    count = "all samples" if request.samples is None else f"{len(request.samples)} sample(s)"
    policy = (
        f"{escrow.threshold} of {len(escrow.custodians)} custodians"
        if escrow.scheme == "shamir"
        else "KMS"
    )
    text = (
        f"Request {request.request_id} (sha256 {request.sha256()[:16]}...)\n"
        f"Requester: {request.requester}\nReason: {request.reason}\n"
        f"Purpose: {request.purpose} of {count}\n"
        f"Job {escrow.job_id}, escrow revision {escrow.revision} ({policy}), "
        f"{len(escrow.epochs)} key epoch(s)\n"
        f"Created {request.created}, expires {request.expires}\n"
        f"Job signing keys: {', '.join(escrow.audit_keys())}\n"
        "Approve this request? [y/N] "
    )
    return _ask_tty(text).strip().lower() in ("y", "yes")


# (output tree or None, request path): the old form was ``approve OUT REQUEST``.
def _approve_inputs(args: argparse.Namespace) -> tuple[str | None, str]:
    if args.legacy_request:
        if args.out_tree:
            raise ValueError("give the output tree once: as --out-tree OUT")
        return args.request, args.legacy_request
    return args.out_tree, args.request


@_handler
def cmd_restore_approve(args: argparse.Namespace) -> int:
    """``faceveil restore approve REQUEST --identity NAME.key [--out FILE]``: offline.

    Everything needed is in the request (its escrow copy). With ``--out-tree OUT`` the request
    is also checked against OUT/escrow.json and the approval appended to OUT/audit.jsonl
    (without, ``restore apply`` records it).
    """
    identity = args.identity or args.legacy_identity
    if not identity:
        raise ValueError("the custodian's private key file is needed: --identity NAME.key")
    out_tree, request_path = _approve_inputs(args)
    request = _load_request(request_path)
    tree = OutTree(out_tree) if out_tree else None
    if tree is not None:
        check_request(tree.escrow(), request, request.purpose)
    check_request(request.escrow, request, request.purpose)
    if not args.yes and not _confirm(request):
        _say("not approved")
        return 1
    custodian = CustodianPrivate.load(
        identity,
        _passphrase(args.passphrase_file, f"Passphrase for {Path(identity).stem}'s key: "),
    )
    approval = approve(request.escrow, request, custodian)
    if tree is not None and not args.no_audit:
        writer = AuditWriter(custodian.ed25519, f"custodian:{custodian.name}")
        details = _approval_entry(request, approval, custodian.public())
        _say(f"audit tail: {append_audit(tree, writer, 'restore.approve', details)}")
    where = _emit(approval.dumps(), args.out)
    _say(f"approval of request {request.request_id} by {custodian.name} written to {where}")
    return 0


@_handler
def cmd_restore_apply(args: argparse.Namespace) -> int:
    """``faceveil restore apply OUT REQUEST APPROVAL... --dest DIR``.

    Records the request and each approval in the audit log (unless already there), then the
    apply. Nothing is left in ``--dest`` when anything fails.
    """
    tree = OutTree(args.out_tree)
    _refuse_pending_rekey(tree)
    request_path, approval_paths = _recovery_inputs(args)
    if not request_path:
        raise ValueError("the request file is needed: OUT REQUEST APPROVAL... or --request")
    escrow, request = tree.escrow(), _load_request(request_path)
    masters, approvals = _recover(args, escrow, request, request_path, approval_paths, "restore")
    _record_request(tree, escrow, masters, request, approvals)
    writer = _job_writer(escrow, masters, request)
    details = _approval_details(request, approvals)
    dest = Path(args.dest)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = dest / f".restore-{request.request_id}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    restored: dict[str, tuple[str, str]] = {}
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
        if created and not (dest / "restored.json").exists():
            shutil.rmtree(dest, ignore_errors=True)
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


# Check the custodian signature of every approval statement recorded in the (verified) log.
def _check_recorded_approvals(entries: list[dict], trusted: Mapping[str, bytes]) -> None:
    for n, entry in enumerate(entries, start=1):
        details = entry["details"]
        if entry["action"] != "restore.approve" or "statement" not in details:
            continue
        try:
            statement, custodian = details["statement"], details["custodian"]
            public = trusted.get(details["custodian_key_id"])
            signature = b64d(details["custodian_signature"], "custodian signature", 64)
            same = (statement["request_sha256"], statement["custodian"]) == (
                details["request_sha256"],
                custodian,
            )
        except (KeyError, TypeError, ValueError):
            raise AuditError("a malformed approval record", n) from None
        if public is None:
            raise AuditError(f"the approval by {custodian!r} is signed by an untrusted key", n)
        if not same:
            raise AuditError("the approval record does not match its signed statement", n)
        try:
            check_statement(statement, signature, public)
        except RestoreError:
            raise AuditError(f"the approval by {custodian!r}: bad custodian signature", n) from None


def _entry_line(entry: dict) -> str:
    details = entry["details"] if isinstance(entry["details"], dict) else {}
    about = f" request {details['request_id']}" if "request_id" in details else ""
    return f"{entry['seq']:>5} {entry['time']} {entry['action']:<16} {entry['actor']}{about}"


@_handler
def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``faceveil audit verify OUT``: chain, order, signatures (recorded approvals included)
    and the recorded tail; lists the entries."""
    tree = OutTree(args.out_tree)
    log_bytes = tree.read("audit.jsonl")
    trusted, job_keys, recorded = _trusted_keys(tree, log_bytes, args.job_key)
    tail_text = args.expect_tail or recorded
    expected = AuditTail.parse(tail_text) if tail_text else None
    tail = verify(log_bytes, trusted, expected)
    entries = [json.loads(line) for line in log_bytes.splitlines()]
    _check_recorded_approvals(entries, trusted)
    print(
        f"audit log OK: {tail.seq} entries, tail {tail}, job signing key(s) "
        f"{', '.join(job_keys)}"
        + ("" if expected else "\nwarning: no recorded tail, trailing lines could be missing")
    )
    if not args.quiet:
        print("\n".join(_entry_line(e) for e in entries))
    return 0


@_handler
def cmd_escrow_reshare(args: argparse.Namespace) -> int:
    """``faceveil escrow reshare OUT --request REQ --approvals A... --custodians PUB... --threshold
    M`` (or ``OUT REQ A...``): every epoch split again for the new custodians."""
    tree = OutTree(args.out_tree)
    _refuse_pending_rekey(tree)
    request_path, approval_paths = _recovery_inputs(args)
    if not request_path:
        raise ValueError("a reshare request (--request REQ) and its approvals are needed")
    escrow, request = tree.escrow(), _load_request(request_path)
    masters, approvals = _recover(args, escrow, request, request_path, approval_paths, "reshare")
    custodians = [CustodianPublic.load(p) for p in args.custodians]
    new = reshare(escrow, masters, custodians, args.threshold)
    details = _approval_details(request, approvals) | {
        "old_revision": escrow.revision,
        "new_revision": new.revision,
        "threshold": new.threshold,
        "custodians": custodian_details(custodians),
    }
    _record_request(tree, escrow, masters, request, approvals)
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
    """``faceveil escrow rekey OUT --request REQ --approvals A...``: one new master key, every
    manifest re-sealed.

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
    request_path, approval_paths = _recovery_inputs(args)
    if not request_path:
        raise ValueError("a rekey request (--request REQ) and its approvals are needed")
    escrow, request = tree.escrow(), _load_request(request_path)
    masters, approvals = _recover(args, escrow, request, request_path, approval_paths, "rekey")
    policy = _rekey_policy(args)
    if policy.get("kms") is None and escrow.scheme == "kms" and policy["custodians"] is None:
        policy["kms"] = make_kms_client(escrow.key_arn, args.kms_endpoint)
    new_master, new_escrow = rekey(escrow, masters, **policy)
    new_envelope = Envelope(new_master, escrow.job_id, new_escrow.escrow_ids[0])
    _stage_rekey(tree, escrow, _envelopes(escrow, masters), new_envelope, new_escrow)
    details = _approval_details(request, approvals) | _rekey_details(escrow, new_escrow)
    _record_request(tree, escrow, masters, request, approvals)
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
        choices=range(15, 23),
        default=17,
        metavar="LOG2N",
        help="scrypt cost as log2(N) (default 17 = 128 MiB; 15..22, 15 is the floor)",
    )


def _recovery_args(parser: argparse.ArgumentParser, positional_help: bool = True) -> None:
    """OUT, the request and its approvals (``REQUEST APPROVAL...`` or ``--request``/
    ``--approvals``), the request key and its passphrase."""
    parser.add_argument("out_tree", metavar="OUT", help="job output tree (path or s3:// URL)")
    shown = positional_help or None
    parser.add_argument(
        "request_pos",
        metavar="REQUEST",
        nargs="?",
        help="the request file (req.json)" if shown else argparse.SUPPRESS,
    )
    parser.add_argument(
        "approvals_pos",
        metavar="APPROVAL",
        nargs="*",
        help="custodian approvals" if shown else argparse.SUPPRESS,
    )
    parser.add_argument("--request", dest="request_opt", metavar="REQUEST", help="the request")
    parser.add_argument(
        "--approvals", dest="approvals_opt", nargs="+", default=[], metavar="APPROVAL"
    )
    parser.add_argument(
        "--request-key",
        metavar="FILE",
        help="the request key file (default: ./REQUEST_ID.key, or beside REQUEST)",
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


def _add_request(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("request", help="ask custodians to recover the key")
    p.add_argument("out_tree", metavar="OUT")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--key",
        "--samples",
        dest="samples",
        action="extend",
        nargs="+",
        metavar="SAMPLEKEY",
        help="a sample key (__key__) to restore; repeat or list several",
    )
    which.add_argument("--samples-file", metavar="FILE", help="one sample key per line")
    which.add_argument("--all", action="store_true", help="every sample of the job")
    p.add_argument("--purpose", choices=("restore", "reshare", "rekey"), default="restore")
    p.add_argument("--reason", required=True)
    p.add_argument("--requester", metavar="NAME", help="who asks (default: the OS user name)")
    p.add_argument("--valid-days", type=float, default=7.0)
    p.add_argument("--out", metavar="FILE", help="write the request here (default: stdout)")
    p.add_argument("--key-out", metavar="FILE", help="request key file (default: ./REQUEST_ID.key)")
    _passphrase_arg(p)
    _kdf_arg(p)
    p.set_defaults(func=cmd_restore_request, handler=cmd_restore_request)


def _add_approve(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "approve", help="approve a request as one custodian (offline: needs only the request)"
    )
    p.add_argument("request", metavar="REQUEST", help="the request file")
    p.add_argument("legacy_request", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--identity", metavar="KEYFILE", help="your custodian key file (NAME.key)")
    p.add_argument("--key", dest="legacy_identity", help=argparse.SUPPRESS)
    p.add_argument("--out", metavar="FILE", help="write the approval here (default: stdout)")
    p.add_argument(
        "--out-tree",
        metavar="OUT",
        help="also check the request against OUT/escrow.json and record the approval in "
        "OUT/audit.jsonl now (otherwise 'restore apply' records it)",
    )
    p.add_argument("--no-audit", action="store_true", help="with --out-tree: record nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _passphrase_arg(p)
    p.set_defaults(func=cmd_restore_approve, handler=cmd_restore_approve)


def _add_restore(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("restore", help="restore originals with M-of-N approval")
    actions = group.add_subparsers(dest="restore_command", required=True)
    _add_request(actions)
    _add_approve(actions)
    p = actions.add_parser("apply", help="recover the key and write the originals")
    _recovery_args(p)
    p.add_argument("--dest", required=True, metavar="DIR")
    p.set_defaults(func=cmd_restore_apply, handler=cmd_restore_apply)


def _add_audit_and_escrow(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    audit = sub.add_parser("audit", help="audit log and output audits").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit.add_parser("verify", help="verify OUT/audit.jsonl and list its entries")
    p.add_argument("out_tree", metavar="OUT")
    p.add_argument("--expect-tail", metavar="SEQ:SHA256", help="the tail recorded out of band")
    p.add_argument(
        "--job-key",
        metavar="ID",
        action="append",
        help="pin a job signing key id (ed25519:...); repeat for every key epoch: "
        "a job key of escrow.json that is not pinned fails",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not list the entries")
    p.set_defaults(func=cmd_audit_verify, handler=cmd_audit_verify)
    escrow = sub.add_parser("escrow", help="escrow maintenance").add_subparsers(
        dest="escrow_command", required=True
    )
    p = escrow.add_parser("reshare", help="same key, new custodians or threshold")
    _recovery_args(p, positional_help=False)
    p.add_argument("--custodians", nargs="+", required=True, metavar="PUB")
    p.add_argument("--threshold", type=int, required=True)
    p.set_defaults(func=cmd_escrow_reshare, handler=cmd_escrow_reshare)
    p = escrow.add_parser("rekey", help="new master key; manifests re-encrypted")
    _recovery_args(p, positional_help=False)
    p.add_argument("--custodians", nargs="+", metavar="PUB")
    p.add_argument("--threshold", type=int)
    p.add_argument("--kms", metavar="aws-kms:ARN")
    p.add_argument("--finish", action="store_true", help="publish an interrupted rekey")
    p.set_defaults(func=cmd_escrow_rekey, handler=cmd_escrow_rekey)
    return audit


def add_key_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``custodian``, ``restore``, ``audit`` and ``escrow`` to the CLI's subparsers; returns
    the ``audit`` subcommands so that other audits can join them."""
    _add_custodian(subparsers)
    _add_restore(subparsers)
    return _add_audit_and_escrow(subparsers)


def main(argv: list[str] | None = None) -> int:
    """Run the key subcommands alone (``python -m jobs.keys_cli``)."""
    parser = argparse.ArgumentParser(prog="faceveil")
    add_key_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
